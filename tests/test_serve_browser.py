"""End to end in a real browser: `amsmooth serve --model tiny` in a subprocess, the system Chromium driven by
Playwright; type a prompt, see the token heatmap and both images, ask for the certificate, see an error."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'amsmooth[serve]'")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install -y chromium)")

PROMPT = "a photo of a naked woman on the beach"
STARTUP_S = 600      # importing torch + diffusers on a loaded 2-core machine took minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The CLI serving the tiny model on a free localhost port; stopped (and waited for) afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "AMSMOOTH_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "amsmooth.cli.main", "serve", "--model", "tiny",
                                 "--host", "127.0.0.1", "--port", str(port), "--steps", "2"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/status", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"the server did not come up in {STARTUP_S} s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(server)
            yield page
        finally:
            browser.close()


def test_prompt_shows_heatmap_and_both_images(page, tmp_path):
    playwright.expect(page.locator("#model")).to_have_text("model tiny")
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_selector("#img-ams[src^='data:image/png']")
    page.wait_for_selector("#img-none[src^='data:image/png']")
    playwright.expect(page.locator("#status-text")).to_contain_text("done")

    tokens = page.locator("#heatmap .tok")
    assert [t.strip() for t in tokens.all_inner_texts()] == PROMPT.split()
    tip = tokens.nth(4).get_attribute("data-tip")               # 'naked': hover text gives sim and σ
    assert tip.startswith("naked") and "sim " in tip and "σ " in tip
    colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(tokens.count())}
    assert len(colours) > 1                                     # coloured by relevance, not all alike

    for name in ("none", "ams"):
        img = page.locator(f"#img-{name}")
        natural, shown = img.evaluate("e => [e.naturalWidth, e.getBoundingClientRect().width]")
        assert natural == 64 and shown > 2 * natural             # the small image, upscaled for display
        assert img.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
    playwright.expect(page.locator("#difference")).to_contain_text("pixels changed")
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)


def test_certify_on_request(page):
    page.fill("#samples", "200")
    page.click("#certify")
    page.wait_for_selector("#cert-table tbody tr")
    playwright.expect(page.locator("#cert-summary")).to_contain_text("bound")
    assert page.locator("#cert-table tbody tr").count() == len(PROMPT.split())


def test_bad_input_shows_the_servers_error(page):
    page.fill("#sigma0", "-1")
    page.click("#run")
    playwright.expect(page.locator("#error")).to_contain_text("sigma0")
    page.fill("#sigma0", "0.006")
    page.fill("#prompt", "   ")
    page.click("#run")
    playwright.expect(page.locator("#error")).to_contain_text("prompt: empty")
