"""`chronotope serve` in a real browser: Debian's chromium, headless, driven by Playwright's Python package.

Starts the server on a debug model (sampling takes a second or two), submits a t2v request from the page, sees
one progress bar move, waits for the video element, decodes the file it serves with PyAV, makes a second one and
finds both as thumbnails inside the gallery's box (a click shows that result again), makes an error and an upload
that is not a video with the page scrolled to Generate and finds the command line's error text in view (a toast
and the line beside Generate), and checks nothing was written outside the output folder, nor left in uploads/.
CI installs chromium (.ci/run); elsewhere the test is skipped, saying why, until it is installed.

Also the README's screenshot, on the shipped model:
    .venv/bin/python tests/test_serve_browser.py --model chronotope/assets/world-model --png docs/img/serve.png
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# the network is closed: no sandbox (root), no GPU, nothing that phones home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def _needs(ok: bool, what: str) -> None:
    """Skip with the reason where `what` is missing, except in CI, where .ci/run installs it: fail there."""
    if not ok:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{what} (bash .ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: str, out: Path, cwd: Path, *options: str, timeout: float = 120.0) -> Iterator[str]:
    """`chronotope serve --model MODEL --out OUT [options]` run from `cwd` on a free port -> its URL, until the block
    ends. Its output goes to cwd/../serve.log."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd.parent / "serve.log", "w+")
    argv = ["serve", "--model", str(Path(model).resolve()), "--port", str(port), "--out", str(out), *options]
    proc = subprocess.Popen([sys.executable, "-m", "chronotope.cli", *argv], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"chronotope serve exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


# what the user sees of an element: laid out, not hidden, and inside the viewport
IN_VIEW = ("e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e); return r.width > 0 && r.height > 0 "
           "&& s.visibility != 'hidden' && s.display != 'none' && r.top >= 0 && r.bottom <= window.innerHeight; }")


def generate_in_page(page, url: str | None, prompt: str, steps: int, guidance: float, seed: int,
                     timeout_ms: int = 120_000, see_progress: bool = False) -> tuple[str, int | None]:
    """Open the app (url None: the page as it is), fill the form, press Generate and wait for the result's <video>
    -> (its src, the progress bars in view while it ran or None). see_progress: wait to see the sampler's progress
    ("12/400 steps") in the page, and count the progress bars drawn."""
    if url is not None:
        page.goto(url)
        page.wait_for_selector("#prompt textarea", timeout=60_000)
    status = page.inner_text("#status")
    page.fill("#prompt textarea", prompt)
    page.fill("#steps input", str(steps))
    page.fill("#guidance input", str(guidance))
    page.fill("#seed textarea, #seed input", str(seed))
    page.click("#generate")
    bars = None
    if see_progress:
        page.wait_for_function(f"/\\d+\\/{steps} steps/.test(document.body.innerText)", timeout=timeout_ms)
        bars = page.evaluate(f"() => Array.from(document.querySelectorAll('.progress-text')).filter({IN_VIEW}).length")
    page.wait_for_function("s => document.querySelector('#status').innerText != s", arg=status, timeout=timeout_ms)
    page.wait_for_selector("#result-video video", timeout=timeout_ms)
    return page.get_attribute("#result-video video", "src"), bars


def test_the_web_app_generates_and_reports_a_bad_upload_in_a_real_browser(tmp_path):
    _needs(os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _needs(False, "Playwright's Python package is not installed (pip install -e '.[dev]')")
    import torch

    from chronotope.pipeline import VideoPipeline
    from chronotope.video import read_video

    torch.set_num_threads(1)
    pipe = VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5))
    pipe.save_pretrained(tmp_path / "model")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    with server(str(tmp_path / "model"), out, cwd) as url, browser_page() as page:
        # 400 debug-model steps take about 2 s: long enough to see the progress bar move, drawn once (not on
        # every output)
        src, bars = generate_in_page(page, url, "a red circle moves left", steps=400, guidance=1, seed=0,
                                     see_progress=True)
        assert bars == 1
        assert page.inner_text("#status").startswith("Done: 0001-t2v.mp4")
        assert "red circle" in page.input_value("#expanded textarea")
        served = page.request.get(src)
        assert served.ok
        (tmp_path / "served.mp4").write_bytes(served.body())
        frames, fps = read_video(str(tmp_path / "served.mp4"))
        assert frames.shape == (5, 32, 32, 3) and fps == 8

        # the gallery: a row of thumbnails (posters) inside its box, newest first; a click shows that result
        src, _ = generate_in_page(page, None, "a blue square", steps=1, guidance=1, seed=1)
        assert src.endswith("0002-t2v.mp4")
        box = page.locator("#gallery").bounding_box()
        thumbs = page.locator("#gallery img")
        assert page.locator("#gallery video").count() == 0 and thumbs.count() == 2
        for i in range(2):
            t = thumbs.nth(i).bounding_box()
            assert box["y"] <= t["y"] and t["y"] + t["height"] <= box["y"] + box["height"], (t, box)
            assert t["width"] <= box["width"] / 4, (t, box)
        assert page.locator("#gallery").get_by_text("0001-t2v.mp4").count() >= 1
        thumbs.nth(1).click()
        page.wait_for_function("document.querySelector('#status').innerText.startsWith('0001-t2v.mp4')")
        assert page.get_attribute("#result-video video", "src").endswith("0001-t2v.mp4")

        # errors show where the user is: scrolled down to Generate, a toast and the line beside the button
        toast = "(t) => Array.from(document.querySelectorAll('.toast-body')).some(e => e.innerText.includes(t))"
        page.locator("#generate").scroll_into_view_if_needed()
        page.fill("#seed textarea, #seed input", "4.5")
        page.click("#generate")
        page.wait_for_function(toast, arg="Seed 4.5: must be a whole number", timeout=60_000)
        assert page.locator("#status").evaluate(IN_VIEW), page.inner_text("#status")
        assert page.inner_text("#status").startswith("Error: Seed 4.5: must be a whole number")
        page.fill("#seed textarea, #seed input", "0")

        page.get_by_text("Image and videos").click()  # the accordion with the uploads
        page.locator("#generate").scroll_into_view_if_needed()
        page.set_input_files("#video input[type=file]", str(bad))
        page.wait_for_function(toast, arg="Video: bad.mp4: not a readable video or image", timeout=60_000)
        assert page.locator(".toast-body").last.evaluate(IN_VIEW)
        status = page.inner_text("#status")
        assert "Video: bad.mp4: not a readable video or image" in status and page.locator("#status").evaluate(IN_VIEW)
        assert "Traceback" not in page.content() and str(tmp_path) not in status
        # the refused file is deleted and cleared from its field; no temporary file is left behind
        assert [p for p in (out / "uploads").rglob("*") if p.is_file()] == []
        assert page.locator("#video").get_by_text("bad.mp4").count() == 0

    assert os.listdir(cwd) == []  # nothing written where the server ran: results and uploads are in out/
    results = ["0001-t2v.json", "0001-t2v.mp4", "0002-t2v.json", "0002-t2v.mp4"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == results
    assert sorted(p.name for p in (out / "posters").iterdir()) == ["0001-t2v.png", "0002-t2v.png"]
    assert [p for p in (out / "uploads").rglob("*") if p.is_file()] == []  # results are served, not copied there


def screenshot(model: str, png: str) -> None:
    """The README's picture (docs/img/serve.png, then quantised to 64 colours): the page after one t2v request
    on `model` (the debug model shows noise)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, server(model, Path(tmp) / "out", Path(tmp) / "cwd") as url, \
            browser_page(1280, 1000) as page:
        generate_in_page(page, url, "a red circle moves left", steps=30, guidance=5, seed=0, timeout_ms=600_000)
        page.evaluate("v => { v.pause(); v.currentTime = v.duration / 2; }",
                      page.query_selector("#result-video video"))  # a frame from the middle of the clip
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(1000)
        page.screenshot(path=png)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="screenshot the web app after one t2v request")
    p.add_argument("--model", required=True)
    p.add_argument("--png", required=True)
    a = p.parse_args()
    screenshot(a.model, a.png)
