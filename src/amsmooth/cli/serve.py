"""``amsmooth serve``: a local web page and JSON API showing the defense at work (needs ``amsmooth[serve]``)."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ..errors import AmsmoothError
from .common import add_concept_args, add_smoothing_args, smoothing_config
from .model_options import add_model_args

DEFAULT_MODEL = "lab"
MAX_BODY_LIMIT = 1 << 20        # requests are a prompt (<= 1000 characters) and a few numbers: 1 MiB is plenty


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="local web page + JSON API: token heatmap, undefended vs defended images, "
                                     "certificate")
    add_model_args(p, default_model=DEFAULT_MODEL)
    add_concept_args(p)
    add_smoothing_args(p)
    p.add_argument("--steps", type=int, default=25, help="default denoising steps per image (default 25)")
    p.add_argument("--guidance", type=float, default=7.5, help="default guidance scale (default 7.5)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the API has no authentication)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--queue-size", type=int, default=4,
                   help="requests that may wait behind the running one; more get 503 at once (default 4)")
    p.add_argument("--max-body", type=int, default=16 * 1024,
                   help="largest request body in bytes; larger ones get 413 (default 16384)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="answer requests whose Host header is NAME too (repeatable; '*' for any); without it only "
                        "localhost, 127.0.0.1, [::1] and the --host address are answered (against DNS rebinding)")
    p.add_argument("--head-timeout", type=float, default=5.0, metavar="S",
                   help="seconds a client may take to send a request's headers (default 5)")
    p.add_argument("--body-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a client may take to send a request's body (default 10)")
    p.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                   help="seconds an idle connection stays open after a response (default 5)")
    p.add_argument("--max-connections", type=int, default=32, metavar="N",
                   help="open connections at once; one more is answered 503 and closed (default 32)")
    p.set_defaults(func=run)


def require_extra() -> None:
    """One line naming the extra when FastAPI/uvicorn are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise AmsmoothError(f"amsmooth serve needs the web extra ({e.name} is missing): "
                            "pip install 'amsmooth[serve]'") from None


def validate(args: argparse.Namespace) -> None:
    """Reject bad flags before the model is loaded."""
    if not 1 <= args.port <= 65535:
        raise AmsmoothError(f"--port must be in 1..65535, got {args.port}")
    if args.steps < 1:
        raise AmsmoothError(f"--steps must be >= 1, got {args.steps}")
    if args.queue_size < 0:
        raise AmsmoothError(f"--queue-size must be >= 0, got {args.queue_size}")
    if not 256 <= args.max_body <= MAX_BODY_LIMIT:
        raise AmsmoothError(f"--max-body must be in 256..{MAX_BODY_LIMIT} bytes, got {args.max_body}")
    for name in args.allow_host:
        if name != "*" and (not name or any(c in name for c in "/ \t@,") or name != name.strip()):
            raise AmsmoothError(f"--allow-host {name!r}: give a host name or address as clients type it in the "
                                "URL (demo.lan, 192.168.1.20, [fe80::1]), or '*' for any")
    for problem in connection_limits(args).problems():
        raise AmsmoothError(problem)


def connection_limits(args: argparse.Namespace):  # noqa: ANN201 - serve.protocol.ConnectionLimits
    from ..serve.protocol import ConnectionLimits

    return ConnectionLimits(head_timeout=args.head_timeout, body_timeout=args.body_timeout,
                            keep_alive=args.keep_alive, max_connections=args.max_connections)


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """--allow-host, plus the --host address itself unless it is a wildcard (0.0.0.0, ::)."""
    bound = () if args.host in ("0.0.0.0", "::", "") else (args.host,)
    return (*bound, *args.allow_host)


def check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AmsmoothError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise AmsmoothError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: IPv6 addresses in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def build_app(args: argparse.Namespace):  # noqa: ANN201 - a FastAPI app
    """Load the model and concepts (so a bad --model or --concept fails here, at start) and build the app."""
    from ..serve.app import create_app
    from ..serve.service import DemoService
    from .model_options import load_model

    config = smoothing_config(args)
    try:
        pipe = load_model(args)
    except AmsmoothError as e:
        hint = "; try --model tiny (random weights) or a diffusers folder" if args.model == DEFAULT_MODEL else ""
        raise AmsmoothError(f"cannot start the server: {e}{hint}") from None
    service = DemoService(pipe, config, model=args.model, unet=args.unet, steps=args.steps,
                          guidance=args.guidance)
    return create_app(service, queue_size=args.queue_size, max_body=args.max_body, allowed_hosts=allowed_hosts(args))


def run(args: argparse.Namespace) -> int:
    require_extra()
    validate(args)
    check_port_free(args.host, args.port)
    import uvicorn

    from ..serve.protocol import uvicorn_options

    app = build_app(args)
    if not is_loopback(args.host):
        print(f"amsmooth: warning: binding {args.host}: anyone who can reach it can use the model (no "
              f"authentication); it answers only requests addressed to {', '.join(app.state.hosts)} (add the "
              "name clients use with --allow-host NAME)", file=sys.stderr)
    print(f"amsmooth serve: model {args.model}, concepts {', '.join(app.state.service.config.concepts)}: "
          f"http://{url_host(args.host)}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **uvicorn_options(connection_limits(args)))
    return 0
