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

        # 5. "more like this" cleared the form; drag and drop a photo: it searches by the photo alone
        sync_api.expect(page.get_by_role("button", name="Remove photo")).to_be_hidden()
        sync_api.expect(page.get_by_label("Search text")).to_have_value("")
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


# ------------------------------------------------------------------ page states, one screenshot each
SHOTS = ROOT / "docs" / "screenshots" if os.environ.get("MMSEARCH_UPDATE_SCREENSHOTS") else ARTIFACTS


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert (SHOTS / f"{name}.png").stat().st_size > 5_000


def test_page_algebra_filters_reset_and_keyboard(server, browser):
    page = open_page(browser, server)
    status, hits = page.locator("#status"), page.locator("#results .hit")
    try:
        sync_api.expect(page.locator("#index-info")).to_contain_text("60 items")
        # keyboard: "/" focuses the search box from anywhere
        page.locator("body").click()
        page.keyboard.press("/")
        sync_api.expect(page.get_by_label("Search text")).to_be_focused()

        # the algebra: a text, a photo, and a text marked "not"
        page.get_by_label("Search text").fill("shoe")
        page.get_by_role("button", name="+ Add photo").click()
        page.locator("#terms .term").nth(0).locator("input[type=file]").set_input_files(str(SHOE))
        page.get_by_role("button", name="+ Add text").click()
        neg = page.locator("#terms .term").nth(1)
        neg.locator("input[type=text]").fill("high heel")
        neg.get_by_label("not").check()
        sync_api.expect(neg).to_have_class("term negative")
        page.get_by_role("button", name="Search", exact=True).click()
        sync_api.expect(status).to_contain_text('results for "shoe" + photo shoe.jpg − "high heel"')
        sync_api.expect(hits).to_have_count(24)
        wait_for_thumbnails(page)
        shot(page, "page_algebra")

        # filters: every hit in the chosen category
        page.locator("#filter-category").select_option(label="food")
        page.get_by_role("button", name="Search", exact=True).click()
        sync_api.expect(hits).to_have_count(9)
        wait_for_thumbnails(page)
        shot(page, "page_filters")

        # "more like this" clears the form: the results are no longer for what it said
        first = hits.first
        title = first.locator(".title").inner_text()
        first.click()
        sync_api.expect(status).to_contain_text(f'more like "{title}"')
        sync_api.expect(page.get_by_label("Search text")).to_have_value("")
        sync_api.expect(page.locator("#terms .term")).to_have_count(0)
        sync_api.expect(page.locator("#preview")).to_be_hidden()
        wait_for_thumbnails(page)
        shot(page, "page_more_like_this")

        # arrow keys move between results; Escape resets
        hits.first.focus()
        page.keyboard.press("ArrowRight")
        sync_api.expect(hits.nth(1)).to_be_focused()
        page.get_by_label("Search text").fill("taxi")
        page.keyboard.press("Escape")
        sync_api.expect(page.get_by_label("Search text")).to_have_value("")
        assert not page.errors, page.errors
        assert not page.outside, f"the page fetched from elsewhere: {page.outside}"
    finally:
        page.close()


def test_long_untitled_captions_truncate_with_the_path_on_hover(browser, sample_catalog, tmp_path):
    from mmsearch import build_index

    cat = tmp_path / "photos" / "2024 summer holiday in the mountains with the whole family"
    cat.mkdir(parents=True)
    for n, src in enumerate(sorted((sample_catalog / "food").glob("*.webp"))[:6]):
        shutil.copy(src, cat / f"IMG_{n:04d}_a_very_long_camera_file_name_that_never_ends_{src.stem}.webp")
    out = tmp_path / "index"
    build_index(tmp_path / "photos", out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    with running(create_app(SearchEngine.open(out, device="cpu"), ServeCfg(reload_interval_s=0))) as base:
        page = open_page(browser, base)
        try:
            page.get_by_label("Search text").fill("fruit")
            page.keyboard.press("Enter")
            hits = page.locator("#results .hit")
            sync_api.expect(hits).to_have_count(6)
            wait_for_thumbnails(page)
            cap = hits.first.locator(".title")
            assert cap.inner_text().startswith("IMG_")  # the file name, not the folder path
            assert cap.evaluate("el => el.scrollWidth > el.clientWidth")  # cut with an ellipsis ...
            box, card = cap.bounding_box(), hits.first.bounding_box()
            assert box["x"] + box["width"] <= card["x"] + card["width"] + 1  # ... inside its own card
            full = hits.first.get_attribute("title")
            assert "2024 summer holiday in the mountains" in full and full.splitlines()[0].endswith(".webp")
            shot(page, "page_long_captions")
            assert not page.errors and not page.outside
        finally:
            page.close()


def test_docs_render_offline_and_the_favicon_loads(server, browser):
    pytest.importorskip("fastapi_offline", reason="fastapi-offline (the serve extra) is not installed")
    page = open_page(browser, server)
    try:
        page.goto(server + "/docs")
        sync_api.expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible(timeout=30_000)
        sync_api.expect(page.get_by_text("/search/by-item/{item_id}")).to_be_visible()
        shot(page, "page_docs")
        page.goto(server + "/redoc")
        sync_api.expect(page.get_by_text("Search by photos and texts").first).to_be_visible(timeout=30_000)
        assert not page.outside, f"/docs fetched from elsewhere: {page.outside}"
        assert page.request.get(server + "/favicon.ico").status == 200
    finally:
        page.close()


def test_numeric_range_escape_and_photo_choice(browser, small_catalog, tmp_path):
    """Issue 20 item 12: a numeric field is a min / max range (not a menu of its values sorted as text);
    Esc clears the query and its results; choosing a photo starts a search."""
    import json

    from mmsearch import build_index

    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    prices = [5, 9, 10, 100, 20, 3, 7, 1000, 40, 55, 60, 2]
    for row, price in zip(rows, prices):
        row["price"] = price
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
    titles = {r["title"] for r in rows if 9 <= r["price"] <= 60}
    with running(create_app(SearchEngine.open(tmp_path / "idx", device="cpu"), ServeCfg(reload_interval_s=0))) as base:
        page = open_page(browser, base)
        status, hits = page.locator("#status"), page.locator("#results .hit")
        try:
            sync_api.expect(page.locator("#index-info")).to_contain_text("12 items")
            sync_api.expect(page.get_by_label("price min")).to_be_visible()
            assert page.locator("#filter-price").count() == 0  # no menu for it
            assert page.get_by_label("price max").get_attribute("placeholder") == "1000"
            page.get_by_label("price min").fill("9")
            page.get_by_label("price max").fill("60")
            page.get_by_label("Search text").fill("shoe")
            page.keyboard.press("Enter")
            sync_api.expect(status).to_contain_text(f"{len(titles)} results")
            assert {h.locator(".title").inner_text() for h in hits.all()} == titles
            wait_for_thumbnails(page)
            shot(page, "page_numeric_range")

            # Esc: the query and the results go
            page.keyboard.press("Escape")
            sync_api.expect(page.get_by_label("Search text")).to_have_value("")
            sync_api.expect(hits).to_have_count(0)
            sync_api.expect(status).to_have_text("")

            # choosing a photo is enough to search
            page.get_by_label("price min").fill("")
            page.get_by_label("price max").fill("")
            page.get_by_label("Query photo").set_input_files(str(SHOE))
            sync_api.expect(status).to_contain_text("results for your photo (")
            sync_api.expect(hits).to_have_count(12)
            assert not page.errors, page.errors
            assert not page.outside, f"the page fetched from elsewhere: {page.outside}"
        finally:
            page.close()
