"""The search page in a real headless Chromium (Debian `chromium`, driven by Playwright's Python package).

Skipped, with the reason, only when Chromium or Playwright is not installed (`.ci/run` installs both).
The screenshot is saved in test-artifacts/ (or $MMSEARCH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install -e '.[test]')")

from mmsearch import SearchEngine  # noqa: E402
from mmsearch.server import ServeCfg, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
ARTIFACTS = Path(os.environ.get("MMSEARCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"Chromium not found at {CHROMIUM}: install the Debian package "
                                       "`chromium` (.ci/run does when apt-get is allowed)")


@contextlib.contextmanager
def running(app):
    """The real server (uvicorn) for ``app`` on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def engine(tiny_index):
    return SearchEngine.open(tiny_index, device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(engine, ServeCfg(reload_interval_s=0))) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def wait_for_thumbnails(page, timeout_s: float = 30.0) -> None:
    """Until every result image has loaded and decoded (polled from outside: the page's CSP forbids eval)."""
    imgs = page.locator("#results img")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if imgs.count() and imgs.evaluate_all("els => els.every(i => i.complete && i.naturalWidth > 0)"):
            return
        page.wait_for_timeout(50)
    raise AssertionError("result thumbnails did not load")


SHOE = ROOT / "mmsearch" / "sample" / "queries" / "shoe.jpg"


def open_page(browser, base: str):
    """A fresh page on ``base`` that records script errors and any request leaving the server."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.errors, page.outside = [], []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("request", lambda req: None if req.url.startswith((base, "blob:", "data:"))
            else page.outside.append(req.url))
    page.goto(base + "/")
    return page


def test_search_page_end_to_end(server, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server)
    status, hits = page.locator("#status"), page.locator("#results .hit")
    try:
        sync_api.expect(page.locator("#index-info")).to_contain_text("60 items")
        sync_api.expect(page.get_by_label("API key")).to_be_hidden()  # this server needs none

        # 1. a text query: result thumbnails appear, each with alt text, title and score
        page.get_by_label("Search text").fill("running shoe")
        page.keyboard.press("Enter")
        sync_api.expect(status).to_contain_text('results for "running shoe"')
        sync_api.expect(hits).to_have_count(24)
        sync_api.expect(hits.first.locator(".title")).to_have_text("running shoe")
        wait_for_thumbnails(page)
        assert hits.first.locator("img").get_attribute("alt") == "running shoe"
        assert "score" in hits.first.inner_text()

        # 2. an uploaded photo plus the text, with the weight slider moved
        page.get_by_label("Query photo").set_input_files(str(SHOE))
        sync_api.expect(page.locator("#preview")).to_be_visible()
        page.get_by_label("Photo weight").fill("0.8")
        sync_api.expect(page.locator("#weight-out")).to_have_text("0.80")
        page.get_by_role("button", name="Search", exact=True).click()
        sync_api.expect(status).to_contain_text('results for your photo + "running shoe"')
        wait_for_thumbnails(page)

        # 3. click a result: "more like this", which leaves the clicked item out
        clicked = hits.nth(1)
        clicked_id, clicked_title = clicked.get_attribute("data-id"), clicked.locator(".title").inner_text()
        clicked.click()
        sync_api.expect(status).to_contain_text(f'more like "{clicked_title}"')
        sync_api.expect(hits).to_have_count(24)
        assert clicked_id not in [h.get_attribute("data-id") for h in hits.all()]

        # 4. keyboard only: focus a result and press Enter
        hits.first.focus()
        focused_title = hits.first.locator(".title").inner_text()
        page.keyboard.press("Enter")
        sync_api.expect(status).to_contain_text(f'more like "{focused_title}"')
        wait_for_thumbnails(page)
        page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)

        # 5. drag and drop a photo (with the text box cleared): it searches by the photo alone
        page.get_by_role("button", name="Remove photo").click()
        page.get_by_label("Search text").fill("")
        data = page.evaluate_handle(
            "([b64, name]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
            " const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));"
            " return dt; }", [base64.b64encode(SHOE.read_bytes()).decode(), "dropped.jpg"])
        page.dispatch_event("#drop", "drop", {"dataTransfer": data})
        sync_api.expect(status).to_contain_text("results for your photo (")
        sync_api.expect(page.locator("#preview")).to_be_visible()

        # 6. a bad upload gets a readable error, not a broken page
        bad = ARTIFACTS / "not_an_image.png"
        bad.write_bytes(b"this is text, not a PNG")
        page.get_by_label("Query photo").set_input_files(str(bad))
        page.get_by_role("button", name="Search", exact=True).click()
        sync_api.expect(status).to_contain_text("not an image")
        assert not page.errors, page.errors
        assert not page.outside, f"the page fetched from elsewhere: {page.outside}"
    finally:
        page.close()
    assert (ARTIFACTS / "search_page.png").stat().st_size > 10_000


def test_search_page_with_an_api_key(engine, browser):
    with running(create_app(engine, ServeCfg(api_key="page-key", reload_interval_s=0))) as base:
        page = open_page(browser, base)
        try:
            key = page.get_by_label("API key")
            sync_api.expect(key).to_be_visible()  # the server answered 401: the page asks for the key
            sync_api.expect(page.locator("#status")).to_contain_text("needs an API key")
            key.fill("page-key")
            page.get_by_role("button", name="Use key").click()
            sync_api.expect(page.locator("#index-info")).to_contain_text("60 items")
            page.get_by_label("Search text").fill("banana")
            page.keyboard.press("Enter")
            sync_api.expect(page.locator("#status")).to_contain_text('results for "banana"')
            wait_for_thumbnails(page)  # fetched with the key header, shown from blob: URLs
            assert page.locator("#results img").first.get_attribute("src").startswith("blob:")
            assert not page.errors and not page.outside
        finally:
            page.close()
