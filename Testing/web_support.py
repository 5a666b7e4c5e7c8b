"""Shared pieces of the browser tests of qsm web (Testing/test_web_*.py): Chromium, the server, the page.

Each test starts ``qsm web --port <free port> --data <tmp folder>`` as its own
process (the app's state is shared by all its browser tabs) and drives it in
Debian's Chromium, headless, through Playwright. A test module imports the
fixtures it uses (``browser``, ``server``, ``page``) with the helpers; a script
(the benchmark) starts the server with :func:`running_server`.
"""

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api as playwright_api

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
#: Seconds the server may take to listen (imports of VTK and MRML, the first views).
SERVER_START_S = 90


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's package; ``make test`` installs it)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium) or run make test")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(data, log_path):
    """``qsm web --data data`` on a free loopback port, output to ``log_path``; yields (url, process).

    Raises RuntimeError (with the end of the log) when the server ends or does
    not listen within :data:`SERVER_START_S`; stops it on leaving.
    """
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "qsmlib", "web", "--port", str(port), "--data", str(data)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"qsm web ended with status {process.returncode}:\n"
                                   f"{Path(log_path).read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"qsm web did not listen within {SERVER_START_S} s:\n"
                                       f"{Path(log_path).read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def server(tmp_path):
    """``qsm web`` on a free loopback port with an empty data folder; yields (url, data folder, log path)."""
    data = tmp_path / "data"
    data.mkdir()
    log_path = tmp_path / "server.log"
    with running_server(data, log_path) as (url, _process):
        yield url, data, log_path


@pytest.fixture
def page(browser, server):
    url, _data, _log = server
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    tab = context.new_page()
    tab.goto(url)
    tab.wait_for_selector("#qsm-load-sample", timeout=60_000)
    yield tab
    context.close()


def status(page):
    return page.locator("#qsm-status").inner_text()


def load_sample(page):
    page.click("#qsm-load-sample")
    page.wait_for_function("() => document.querySelector('#qsm-te') && "
                           "document.querySelector('#qsm-te').value.length > 0", timeout=60_000)


def load_files(page, magnitude, phase):
    """Type the names of a magnitude and a phase file of --data, press Load files, wait for the outcome."""
    for box, name in (("#qsm-magnitude", magnitude), ("#qsm-phase", phase)):
        page.locator(box).fill(name)
    page.locator("#qsm-phase").press("Tab")
    page.wait_for_function(f"() => window.trame.state.get('magnitude_name') === {magnitude!r} && "
                           f"window.trame.state.get('phase_name') === {phase!r}", timeout=10_000)
    page.click("#qsm-load-files")
    page.wait_for_function("() => document.querySelector('#qsm-inputs').innerText.includes('echoes') || "
                           "window.trame.state.get('status_type') === 'error'", timeout=60_000)


def image_stats(png_bytes):
    """Grey-level std, share of pixels above the black background, shares of red, of blue and of any clearly
    coloured (not grey) pixels, shape."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"), dtype=np.float64)
    grey = rgb.mean(axis=2)
    red = np.mean(rgb[..., 0] > rgb[..., 2] + 40)
    blue = np.mean(rgb[..., 2] > rgb[..., 0] + 40)
    coloured = np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 40)
    return {"std": float(grey.std()), "non_background": float(np.mean(grey > 10)), "red": float(red),
            "blue": float(blue), "coloured": float(coloured), "shape": grey.shape}


def download(page, selector, path):
    """Click ``selector``, save the file the page sends at ``path``; returns ``path``."""
    with page.expect_download() as started:
        page.click(selector)
    started.value.save_as(path)
    return path

