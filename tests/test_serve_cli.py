"""`amsmooth serve` start-up: defaults, the missing extra, failures at start (not at request time), the queue."""
from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from amsmooth.cli.main import build_parser, main
from amsmooth.errors import AmsmoothError
from amsmooth.serve.worker import QueueFull, WorkQueue


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("amsmooth")]
    assert len(err) == 1, err
    return err[0]


def test_defaults_bind_localhost_with_the_lab_model():
    args = build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port, args.unet) == ("lab", "127.0.0.1", 7860, None)


def test_without_the_extra_one_line_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)          # import fastapi → ImportError
    assert main(["serve", "--model", "tiny"]) == 2
    assert "pip install 'amsmooth[serve]'" in one_error_line(capsys)


def test_unavailable_model_fails_at_start(monkeypatch, capsys):
    pytest.importorskip("fastapi")
    import amsmooth.models.load

    def unavailable(model, **_):
        raise AmsmoothError(f"model {model!r} is not available")

    monkeypatch.setattr(amsmooth.models.load, "load_pipeline", unavailable)     # where the CLI looks it up
    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a))
    assert main(["serve"]) == 2                                   # the default: --model lab
    line = one_error_line(capsys)
    assert "cannot start the server" in line and "'lab'" in line and "--model tiny" in line
    assert not started


@pytest.mark.parametrize("flags, match", [(["--port", "0"], "--port"), (["--port", "70000"], "--port"),
                                          (["--steps", "0"], "--steps"), (["--queue-size", "-1"], "--queue-size"),
                                          (["--max-body", "10"], "--max-body"), (["--sigma0", "-1"], "sigma0"),
                                          (["--head-timeout", "0"], "--head-timeout"),
                                          (["--body-timeout", "-1"], "--body-timeout"),
                                          (["--keep-alive", "1e9"], "--keep-alive"),
                                          (["--max-connections", "0"], "--max-connections"),
                                          (["--max-body", str(2**30)], "--max-body"),
                                          (["--allow-host", ""], "--allow-host"),
                                          (["--allow-host", "http://demo.lan:8080/"], "--allow-host")])
def test_bad_flags_fail_before_loading(monkeypatch, capsys, flags, match):
    pytest.importorskip("fastapi")
    import amsmooth.models.load

    monkeypatch.setattr(amsmooth.models.load, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["serve", "--model", "tiny", *flags]) == 2
    assert match in one_error_line(capsys)


def test_port_in_use_fails_before_loading(monkeypatch, capsys):
    pytest.importorskip("fastapi")
    import amsmooth.models.load

    monkeypatch.setattr(amsmooth.models.load, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "tiny", "--port", str(port)]) == 2
    assert f"127.0.0.1:{port}" in one_error_line(capsys)


def test_unknown_concept_fails_at_start(monkeypatch, capsys, single_thread):
    pytest.importorskip("fastapi")
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("server started"))
    assert main(["serve", "--model", "tiny", "--concept", "nosuch"]) == 2
    assert "unknown concept 'nosuch'" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------- the queue

def test_queue_runs_one_job_at_a_time_in_order():
    queue, running, order, peak = WorkQueue(capacity=10), [], [], []

    def job(i):
        running.append(i)
        peak.append(len(running))
        time.sleep(0.01)
        order.append(i)
        running.remove(i)
        return i * i

    futures = [queue.submit(job, i) for i in range(6)]
    assert [f.result(timeout=10) for f in futures] == [i * i for i in range(6)]
    assert order == list(range(6)) and max(peak) == 1
    queue.shutdown()


def test_queue_refuses_at_once_when_full_and_frees_slots():
    queue, release = WorkQueue(capacity=1), threading.Event()
    running = queue.submit(release.wait, 10)
    waiting = queue.submit(lambda: "second")
    started = time.perf_counter()
    with pytest.raises(QueueFull, match="busy"):
        queue.submit(lambda: "third")
    assert time.perf_counter() - started < 1 and queue.pending == 2
    release.set()
    assert running.result(timeout=10) and waiting.result(timeout=10) == "second"
    assert queue.pending == 0                             # a slot is free before its job's result is
    assert queue.submit(lambda: "again").result(timeout=10) == "again"
    queue.shutdown()


def test_queue_passes_exceptions_to_the_caller():
    queue = WorkQueue(capacity=0)
    with pytest.raises(ZeroDivisionError):
        queue.submit(lambda: 1 / 0).result(timeout=10)
    assert queue.submit(lambda: "next").result(timeout=10) == "next"
    queue.shutdown()


def test_serve_runs_uvicorn_with_the_connection_limits_and_the_host_check(monkeypatch, capsys, single_thread):
    """Issue 28: the head/body deadlines and the connection cap reach uvicorn; the Host check knows --host and
    --allow-host; binding elsewhere warns and names --allow-host."""
    pytest.importorskip("fastapi")
    from amsmooth.serve.protocol import GuardedH11Protocol

    monkeypatch.setattr("amsmooth.cli.serve.check_port_free", lambda *a: None)
    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append((app, kw)))
    assert main(["serve", "--model", "tiny", "--host", "192.0.2.7", "--allow-host", "demo.lan",
                 "--head-timeout", "2", "--body-timeout", "3", "--max-connections", "7", "--keep-alive", "4"]) == 0
    app, kw = started[0]
    limits = kw["http"].limits
    assert issubclass(kw["http"], GuardedH11Protocol) and kw["timeout_keep_alive"] == 4
    assert (limits.head_timeout, limits.body_timeout, limits.max_connections) == (2, 3, 7)
    assert app.state.hosts == ("localhost", "127.0.0.1", "::1", "192.0.2.7", "demo.lan")
    err = capsys.readouterr().err
    assert "warning: binding 192.0.2.7" in err and "--allow-host" in err


def test_the_printed_url_brackets_an_ipv6_host():
    from amsmooth.cli.serve import url_host

    assert [url_host(h) for h in ("127.0.0.1", "::1", "localhost", "[::1]")] == ["127.0.0.1", "[::1]", "localhost",
                                                                                  "[::1]"]
