"""`amsmooth serve`'s JSON API with the tiny model (FastAPI TestClient): the three endpoints against the library,
bad requests, the bounded queue and the body size limit."""
from __future__ import annotations

import base64
import io
import math
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'amsmooth[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import torch
from fastapi.testclient import TestClient
from PIL import Image

from amsmooth import AdaptiveMedianSmoothing, AmsmoothError, SmoothingConfig
from amsmooth.certify import certify
from amsmooth.pipelines import undefended
from amsmooth.serve.app import create_app
from amsmooth.serve.schemas import MAX_SEED
from amsmooth.serve.service import DemoService

PROMPT = "a photo of a naked woman on the beach"
STEPS = 2


@pytest.fixture(scope="module")
def service(single_thread, tmp_path_factory):
    import os

    from amsmooth.loading import load_pipeline

    os.environ["AMSMOOTH_CACHE_DIR"] = str(tmp_path_factory.mktemp("serve-cache"))
    return DemoService(load_pipeline("tiny"), SmoothingConfig(concepts=("nudity",)), model="tiny", steps=STEPS)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, queue_size=2, max_body=2048), base_url="http://127.0.0.1:7860") as c:
        yield c


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# ---------------------------------------------------------------------------------------------- good requests

def test_relevance_is_the_librarys(client, service):
    r = client.post("/relevance", json={"prompt": PROMPT})
    assert r.status_code == 200, r.text
    body = r.json()
    ams = AdaptiveMedianSmoothing(service.encoder, [service.concept("nudity")], service.config)
    expected = ams.relevance([PROMPT])[0]
    assert [t["token"] for t in body["tokens"]] == [t["token"] for t in expected["tokens"]]
    for got, want in zip(body["tokens"], expected["tokens"], strict=True):
        assert got["sim"] == pytest.approx(want["sim"], abs=1e-6)
        assert got["sigma"] == pytest.approx(want["sigma"], rel=1e-6)
        assert got["high"] == (got["sigma"] >= 2 * service.config.sigma0)
    assert body["config"]["sigma0"] == service.config.sigma0


def test_relevance_settings_override_the_servers(client):
    base = client.post("/relevance", json={"prompt": PROMPT}).json()
    r = client.post("/relevance", json={"prompt": PROMPT, "sigma0": 0.02, "k": 3.0, "global": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["config"]["sigma0"] == 0.02 and body["config"]["k"] == 3.0 and body["config"]["use_global"]
    for t in body["tokens"]:
        assert t["sigma"] == pytest.approx(0.02 * math.exp(3.0 * t["sim"]), rel=1e-5)
        assert t["sim_global"] is not None
    assert [t["sim_local"] for t in body["tokens"]] == pytest.approx([t["sim_local"] for t in base["tokens"]])


def test_generate_both_images_for_one_seed(client, service):
    r = client.post("/generate", json={"prompt": PROMPT, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["prompt"], body["seed"], body["steps"], body["model"]) == (PROMPT, 7, STEPS, "tiny")
    assert [i["defense"] for i in body["images"]] == ["none", "ams"]
    assert [i["defended"] for i in body["images"]] == [False, True]
    assert body["tokens"] and all({"token", "word", "sim", "sigma"} <= set(t) for t in body["tokens"])
    for image in body["images"]:
        assert set(image["timings"]) == {"text_s", "denoise_decode_s", "total_s"}
        assert png(image["png_base64"]).size == (image["width"], image["height"])
    plain = undefended(service.pipe)(PROMPT, generator=torch.Generator().manual_seed(7),
                                     num_inference_steps=STEPS).images[0]
    assert png(body["images"][0]["png_base64"]).tobytes() == plain.tobytes()      # the undefended baseline
    assert body["images"][0]["png_base64"] != body["images"][1]["png_base64"]     # σ > 0 changes the image
    a, b = (np.asarray(png(i["png_base64"]), dtype=float) for i in body["images"])
    assert body["difference"]["mean_abs"] == pytest.approx(np.abs(a - b).mean())
    assert 0 < body["difference"]["changed_fraction"] <= 1


def test_generate_same_seed_same_bytes(client):
    req = {"prompt": PROMPT, "seed": MAX_SEED, "defense": "ams", "n": 3}
    a, b = client.post("/generate", json=req).json(), client.post("/generate", json=req).json()
    assert [i["defense"] for i in a["images"]] == ["ams"]
    assert a["images"][0]["png_base64"] == b["images"][0]["png_base64"]
    other = client.post("/generate", json={**req, "seed": 1}).json()
    assert other["images"][0]["png_base64"] != a["images"][0]["png_base64"]
    assert a["config"]["n"] == 3


def test_generate_undefended_only_has_no_defense_fields(client):
    body = client.post("/generate", json={"prompt": PROMPT, "defense": "none"}).json()
    assert [i["defense"] for i in body["images"]] == ["none"]
    assert body["config"] is None and body["tokens"] == [] and body["difference"] is None


def test_certify_is_the_librarys(client, service):
    r = client.post("/certify", json={"prompt": PROMPT, "seed": 3, "samples": 200, "rho": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    ams = AdaptiveMedianSmoothing(service.encoder, [service.concept("nudity")], service.config)
    want = certify(ams, [PROMPT], 0.5, 200, 0.001, torch.Generator().manual_seed(3))[0]
    assert body["status"] == "certified"
    assert body["bound"] == pytest.approx(want.bound, rel=1e-9)
    assert [t["radius"] for t in body["tokens"]] == pytest.approx([t["radius"] for t in want.tokens])
    assert body["typical_token_distance"] > 0


def test_certify_too_few_samples_is_no_bound(client):
    body = client.post("/certify", json={"prompt": PROMPT, "samples": 5}).json()
    assert body["status"] == "too-few-samples" and body["bound"] is None and body["min_samples"] > 5


def test_other_builtin_concept_on_request(client):
    body = client.post("/relevance", json={"prompt": "a bloody fight", "concepts": ["violence", "nudity"]}).json()
    assert body["config"]["concepts"] == ["violence", "nudity"]


def test_page_info_and_status(client, service):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/info").json()
    assert info["model"] == "tiny" and "nudity" in info["concepts"] and info["limits"]["max_body_bytes"] == 2048
    assert client.get("/status").json() == {"pending": 0, "capacity": 3, "progress": None}


def test_generate_reports_progress_per_step(client, service, monkeypatch):
    seen = []
    original = service.progress.advance
    monkeypatch.setattr(service.progress, "advance", lambda k=1: (seen.append(service.progress.snapshot()),
                                                                  original(k)))
    client.post("/generate", json={"prompt": PROMPT, "steps": 3})
    steps_per_image = len(seen) // 2            # one call per U-Net step of each image (PNDM adds warm-up steps)
    assert len(seen) == 2 * steps_per_image and steps_per_image >= 3
    assert seen[0]["total"] == len(seen) and [s["done"] for s in seen] == list(range(len(seen)))
    assert service.progress.snapshot() is None


# ---------------------------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "a", "sigma0": -0.1}, "sigma0"),
    ({"prompt": "a", "sigma0": 2}, "sigma0"),
    ({"prompt": "a", "k": 1000}, "k"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 10_000}, "n"),
    ({"prompt": "a", "n": 2.5}, "n"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": MAX_SEED + 1}, "seed"),
    ({"prompt": "a", "seed": "3"}, "seed"),
    ({"prompt": "a", "steps": 0}, "steps"),
    ({"prompt": "a", "defense": "blacklist"}, "defense"),
    ({"prompt": "a", "concepts": []}, "concepts"),
    ({"prompt": "a", "concepts": ["cats"]}, "cats"),
    ({"prompt": "a", "sigma": 0.1}, "sigma"),
    ({"prompt": 5}, "prompt"),
])
def test_bad_generate_request_is_one_422_line(client, body, field):
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert field in message and "\n" not in message


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "a", "sigma0": NaN}', "sigma0"),
    ('{"prompt": "a", "k": Infinity}', "k"),
    ('{"prompt": "a", "k": -1e999}', "k"),
    ('{"prompt": "a",', "JSON"),
    ("[1, 2]", "JSON object"),
])
def test_non_finite_and_malformed_json(client, raw, field):
    r = client.post("/certify", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and field in r.json()["error"]


@pytest.mark.parametrize("body, field", [({"prompt": "a", "rho": 0}, "rho"), ({"prompt": "a", "alpha": 1}, "alpha"),
                                         ({"prompt": "a", "samples": 0}, "samples"),
                                         ({"prompt": "a", "n": 13}, "n")])
def test_bad_certify_request(client, body, field):
    r = client.post("/certify", json=body)
    assert r.status_code == 422 and r.json()["error"].startswith(field)


def test_form_body_says_to_send_json(client):
    r = client.post("/relevance", data={"prompt": "a"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]


def test_library_error_is_400_and_crash_is_500_then_the_server_still_works(client, service, monkeypatch):
    def refuse(*_):
        raise AmsmoothError("no such thing")

    def crash(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "relevance", refuse)
    r = client.post("/relevance", json={"prompt": "a"})
    assert r.status_code == 400 and r.json() == {"error": "no such thing"}
    monkeypatch.setattr(service, "relevance", crash)
    r = client.post("/relevance", json={"prompt": "a"})
    assert r.status_code == 500 and "boom" in r.json()["error"]
    monkeypatch.undo()
    assert client.post("/relevance", json={"prompt": "a"}).status_code == 200
    assert client.get("/status").json()["pending"] == 0


# ---------------------------------------------------------------------------------------------- limits

def test_full_queue_is_refused_at_once(client):
    queue, release = client.app.state.queue, threading.Event()
    blockers = [queue.submit(release.wait, 30) for _ in range(queue.capacity + 1)]
    try:
        r = client.post("/generate", json={"prompt": PROMPT})
        assert r.status_code == 503 and r.headers["retry-after"] and "busy" in r.json()["error"]
        assert client.get("/status").json()["pending"] == queue.capacity + 1
    finally:
        release.set()
        for b in blockers:
            b.result(timeout=30)
    assert client.post("/relevance", json={"prompt": PROMPT}).status_code == 200


def test_body_over_the_limit_is_413(client):
    big = {"prompt": "a", "concepts": ["nudity"] * 400}
    r = client.post("/generate", json=big)
    assert r.status_code == 413 and "2048 bytes" in r.json()["error"]

    def chunks():                       # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 500

    r = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/relevance", json={"prompt": "a"}).status_code == 200


# ---------------------------------------------------------------------------------------------- issue 28

def test_a_foreign_host_is_refused_and_loopback_names_are_answered(client, service):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example; it gets 400."""
    for host in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost.evil.example:7860"):
        r = client.get("/info", headers={"Host": host})
        assert r.status_code == 400 and set(r.json()) == {"error"}, host
        assert "--allow-host" in r.json()["error"]
    r = client.post("/generate", json={"prompt": PROMPT}, headers={"Host": "evil.example"})
    assert r.status_code == 400 and client.get("/status").json()["pending"] == 0
    for host in ("localhost", "localhost:7860", "LOCALHOST:80", "127.0.0.1", "127.0.0.1:7860", "[::1]",
                 "[::1]:7860"):
        assert client.get("/info", headers={"Host": host}).status_code == 200, host
    with TestClient(create_app(service, allowed_hosts=("demo.lan",)), base_url="http://demo.lan:8080") as other:
        assert other.get("/info").status_code == 200
        assert other.get("/info", headers={"Host": "other.lan"}).status_code == 400
    with TestClient(create_app(service, allowed_hosts=("*",)), base_url="http://anything.example") as anyone:
        assert anyone.get("/info").status_code == 200


def test_every_error_is_the_one_json_shape(client, service, monkeypatch):
    """404, 405, 422, 413, 400 (Host), 500: never plain text, never {"detail": …}."""
    bad = [client.get("/nope"), client.get("/static/nope.js"), client.get("/generate"), client.delete("/info"),
           client.get("/docs"), client.get("/redoc"), client.post("/relevance", json={"prompt": 3}),
           client.post("/relevance", json={"prompt": "a", "concepts": ["x" * 50] * 100}),
           client.get("/info", headers={"Host": "evil.example"})]
    assert [r.status_code for r in bad] == [404, 404, 405, 405, 404, 404, 422, 413, 400]
    for r in bad:
        assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}, r.text
        assert "\n" not in r.json()["error"]
    assert client.get("/openapi.json").status_code == 200              # the schema stays; /docs is gone
    for raw, why in ((b'{"prompt": "\xff a"}', "not UTF-8"), (b'{"prompt": "a", "k": ' + b"[" * 1000 + b"]" * 1000
                                                             + b"}", "nested too deeply")):
        r = client.post("/relevance", content=raw, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()) == (422, {"error": f"body: not valid JSON ({why})"})
    monkeypatch.setattr(service, "config_for", lambda *_: 1 / 0)       # a crash outside the worker
    crashing = TestClient(client.app, raise_server_exceptions=False, base_url="http://127.0.0.1")
    r = crashing.post("/relevance", json={"prompt": "a"})
    assert r.status_code == 500 and r.json() == {"error": "internal error: ZeroDivisionError: division by zero"}


@pytest.fixture(scope="module")
def live(service):
    """The app behind real uvicorn on 127.0.0.1 with short limits (1 s head/body/keep-alive, 3 connections)."""
    import socket
    import time

    import uvicorn

    from amsmooth.serve.protocol import ConnectionLimits, uvicorn_options

    limits = ConnectionLimits(head_timeout=1, body_timeout=1, keep_alive=1, max_connections=3)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="critical", **uvicorn_options(limits)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def talk(port: int, *parts: bytes, gap: float = 0.0, limit: float = 8.0) -> tuple[bytes, float]:
    """Send ``parts`` (``gap`` s apart) on a fresh connection and read until the server closes it: what came back
    and the seconds from connecting to the close (``limit`` at most: the test fails rather than hangs)."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        start, got = time.monotonic(), b""
        try:
            for part in parts:
                s.sendall(part)
                time.sleep(gap)
        except OSError:                      # closed by the server while we were still sending
            pass
        while time.monotonic() - start < limit:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - start


def error_of(answer: bytes) -> tuple[int, dict]:
    import json

    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    return int(head.split()[1]), json.loads(body)


def test_slow_and_idle_clients_are_dropped_within_seconds(live):
    """Issue 28: partial headers and slow bodies held connections indefinitely. Limits here: 1 s."""
    got, seconds = talk(live)                                       # connects, sends nothing
    assert got == b"" and seconds < 4
    got, seconds = talk(live, b"POST /relevance HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert error_of(got)[0] == 408 and "head" in error_of(got)[1]["error"] and seconds < 4
    drip = [bytes([c]) for c in b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100]
    got, seconds = talk(live, *drip, gap=0.1)                       # a byte every 0.1 s: the clock runs on
    assert error_of(got)[0] == 408 and seconds < 4
    head = (b"POST /relevance HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50\r\n\r\n")
    got, seconds = talk(live, head, b'{"prompt": ')                 # 11 of 50 bytes
    assert error_of(got)[0] == 408 and "body" in error_of(got)[1]["error"] and seconds < 4
    got, seconds = talk(live, b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")   # answered, then idle
    assert got.startswith(b"HTTP/1.1 200") and seconds < 4


def test_connections_past_the_limit_get_503_and_malformed_http_400(live):
    import socket

    held = [socket.create_connection(("127.0.0.1", live), timeout=5) for _ in range(3)]
    try:
        got, _ = talk(live)
        assert error_of(got)[0] == 503 and "too many open connections" in error_of(got)[1]["error"]
    finally:
        for s in held:
            s.close()
    got, _ = talk(live, b"NOT HTTP AT ALL\r\n\r\n")
    assert error_of(got)[0] == 400 and set(error_of(got)[1]) == {"error"}
    got, _ = talk(live, b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000, b"\r\n\r\n", gap=0.2)
    assert error_of(got)[0] == 400                                  # a head over 16 KiB
    got, _ = talk(live, b"GET /info HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert error_of(got)[0] == 400 and "evil.example" in error_of(got)[1]["error"]
    got, _ = talk(live, b"GET /info HTTP/1.0\r\n\r\n")                # HTTP/1.0 may leave Host out: refused
    assert error_of(got) == (400, {"error": "the request has no Host header, this server answers to (127.0.0.1, "
                                            "::1, localhost); start it with --allow-host NAME to add one"})
    got, _ = talk(live, b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200")                          # and the server still serves
