"""The FastAPI app: the page (static/), ``GET /info`` and ``/status``, and the three JSON endpoints.

Every error is one JSON object ``{"error": "<one line>"}``: 422 for a body that fails validation, 400 for input
the library refuses or a ``Host`` header the server does not answer to, 404/405 for an unknown path or method,
413 for a body over the size limit, 503 (with Retry-After) when the queue is full, 500 for anything unexpected
(logged; the server keeps running). Connection-level answers (408, 503, malformed HTTP) come from
``protocol.GuardedH11Protocol`` in the same shape.

No ``/docs`` page: FastAPI's loads Swagger UI from a CDN (broken offline) and no installed package ships its
assets; the schema is at ``/openapi.json``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..errors import AmsmoothError
from . import schemas
from .service import DemoService
from .worker import QueueFull, WorkQueue

log = logging.getLogger("amsmooth.serve")
DEFAULT_MAX_BODY = 16 * 1024
DEFAULT_QUEUE = 4
RETRY_AFTER_S = 5
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def static_dir() -> Path:
    """Folder of the page (index.html, app.js, style.css)."""
    return Path(str(resources.files("amsmooth") / "serve" / "static"))


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The API's one error shape."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodySizeLimit:
    """ASGI middleware: answer 413 for a request body over ``max_bytes`` (by Content-Length, or while reading a
    chunked body) before the app sees it; smaller bodies are buffered and replayed to the app."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error(413, f"request body too large: the limit is {self.max_bytes} bytes")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port or IPv6 brackets, lowercased: ``[::1]:7860`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware against DNS rebinding: answer 400 unless the request's ``Host`` is one the server was
    told to answer to (the loopback names, plus ``allowed``; ``*`` allows any)."""

    def __init__(self, app: Any, allowed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in (*LOOPBACK_HOSTS, *allowed)} - {""}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            raw = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if host_name(raw) not in self.allowed:
                said = f"Host header {raw[:100]!r} is not one" if raw.strip() else "the request has no Host header,"
                await error(400, f"{said} this server answers to ({', '.join(sorted(self.allowed))}); start it "
                                 "with --allow-host NAME to add one")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def describe_validation(errors: Any, content_type: str = "application/json") -> str:
    """Pydantic's error list as one line: ``field: message; field: message``."""
    example = 'a JSON object such as {"prompt": "a photo of a cat", "seed": 0}'
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        kind = e.get("type")
        if kind == "json_invalid":
            parts.append(f"body: not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})")
        elif not loc and "json" not in content_type:
            parts.append(f"body: send {example} with Content-Type: application/json")
        elif not loc and kind in ("missing", "model_attributes_type", "dict_type"):
            parts.append(f"body: expected {example}")
        else:
            parts.append(f"{'.'.join(loc) or 'body'}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts) or "invalid request"


def create_app(service: DemoService, *, queue_size: int = DEFAULT_QUEUE, max_body: int = DEFAULT_MAX_BODY,
               allowed_hosts: tuple[str, ...] = ()) -> FastAPI:
    """The app around a loaded ``DemoService``: its work runs on one worker behind a queue of ``queue_size``;
    it answers requests whose ``Host`` is a loopback name or in ``allowed_hosts`` (``*``: any)."""
    queue = WorkQueue(queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(title="amsmooth", summary="Adaptive Median Smoothing: see the defense work", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service, app.state.queue = service, queue
    app.state.hosts = (*LOOPBACK_HOSTS, *allowed_hosts)
    app.add_middleware(BodySizeLimit, max_bytes=max_body)
    app.add_middleware(HostCheck, allowed=allowed_hosts)        # the outermost: before the body is read
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, describe_validation(exc.errors(), request.headers.get("content-type", "")))

    async def _http(_: Request, exc: Any) -> JSONResponse:           # Starlette's HTTPException (404, 405 …)
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            why = "not UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "nested too deeply"
            return error(422, f"body: not valid JSON ({why})")       # FastAPI's "error parsing the body"
        message = {404: "no such page or endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, f"{message} (the API: POST /relevance, /generate, /certify; GET /info, "
                                      "/status, /openapi.json)" if exc.status_code in (404, 405) else message,
                     exc.headers)

    for status in HTTPStatus:        # by status code: every HTTPException the framework raises (500: _crash)
        if status >= 400 and status != 500:
            app.add_exception_handler(int(status), _http)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:       # Starlette logs it and re-raises
        return error(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the worker; the result, or the API's error for what went wrong."""
        try:
            future: Future = queue.submit(fn, *args)
        except QueueFull as e:
            return error(503, str(e), {"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await asyncio.wrap_future(future)
        except AmsmoothError as e:
            return error(400, str(e))
        except Exception as e:
            log.exception("request failed")
            return error(500, f"internal error: {type(e).__name__}: {e}".splitlines()[0])

    def config_for(body: schemas.SmoothingRequest) -> Any:
        return service.config_for(body.overrides())

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The model, the default settings, the concepts a request may name, and the request limits."""
        limits = {"max_prompt_chars": schemas.MAX_PROMPT_CHARS, "max_seed": schemas.MAX_SEED,
                  "max_n": schemas.MAX_SMOOTHING_N, "max_steps": schemas.MAX_STEPS,
                  "max_certify_samples": schemas.MAX_CERTIFY_SAMPLES, "max_body_bytes": max_body,
                  "queue_size": queue_size}
        return {**service.info(), "limits": limits}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """Jobs in progress or waiting, and the running job's progress (null when idle)."""
        return {"pending": queue.pending, "capacity": queue.capacity + 1, "progress": service.progress.snapshot()}

    @app.post("/relevance")
    async def relevance(body: schemas.RelevanceRequest) -> Any:
        """Per-token relevance (sim, local, global) and σ of the prompt (Algorithm 1)."""
        try:
            config = config_for(body)
        except AmsmoothError as e:
            return error(422, str(e))
        return await run(service.relevance, body.prompt, config)

    @app.post("/generate")
    async def generate(body: schemas.GenerateRequest) -> Any:
        """Undefended and defended images (base64 PNG) for one seed, with per-token σ/sim and timings."""
        try:
            config = config_for(body)
        except AmsmoothError as e:
            return error(422, str(e))
        return await run(service.generate, body.prompt, config, body.seed, body.steps, body.guidance,
                         body.defense)

    @app.post("/certify")
    async def certify(body: schemas.CertifyRequest) -> Any:
        """The certified bound (Theorem 3.2) and each token's radius ρ'·σ_j."""
        try:
            config = config_for(body)
        except AmsmoothError as e:
            return error(422, str(e))
        return await run(service.certify, body.prompt, config, body.seed, body.rho, body.samples, body.alpha)

    return app
