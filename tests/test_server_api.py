"""HTTP API of `mmsearch serve`, through the ASGI test client: every endpoint and every bad input."""

from __future__ import annotations

import asyncio
import hmac
import io
import json
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from helpers.files import png_header_only  # noqa: E402  (a PNG whose header claims a huge size)
from PIL import Image  # noqa: E402

from mmsearch import SearchEngine, build_index  # noqa: E402
from mmsearch.server import ServeCfg, create_app  # noqa: E402
from mmsearch.server.limits import Busy, ModelGate  # noqa: E402
from mmsearch.server.state import filter_fields  # noqa: E402

QUERIES = Path(__file__).resolve().parents[1] / "mmsearch" / "sample" / "queries"
SHOE = (QUERIES / "shoe.jpg").read_bytes()


def make_client(engine, **cfg) -> TestClient:
    cfg.setdefault("reload_interval_s", 0)
    return TestClient(create_app(engine, ServeCfg(**cfg)))


@pytest.fixture(scope="module")
def client(engine):
    with make_client(engine) as c:
        yield c


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ search
def test_text_search_returns_hits_with_thumbnail_urls(client, engine):
    r = client.post("/search", data={"text": "running shoe", "k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    expected = engine.search(text="running shoe", k=5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    first = body["hits"][0]
    assert set(first) >= {"id", "score", "title", "metadata", "thumbnail_url", "item_url"}
    assert "path" not in first  # the server's file layout is not part of the API
    assert client.get(first["thumbnail_url"]).headers["content-type"] == "image/webp"


def test_image_and_fused_search_match_the_engine(client, engine):
    r = client.post("/search", files={"image": ("q.jpg", SHOE, "image/jpeg")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in engine.search(image=SHOE, k=4)]
    r = client.post("/search", files={"image": ("q.jpg", SHOE, "image/jpeg")},
                    data={"text": "boot", "k": "4", "image_weight": "0.3"})
    assert r.status_code == 200, r.text
    fused = engine.search(image=SHOE, text="boot", k=4, image_weight=0.3)
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in fused]


def test_empty_file_field_counts_as_no_image(client):
    # A form with an empty file input, as a browser sends it, plus a text: a text query.
    r = client.post("/search", files={"image": ("", b"", "application/octet-stream")}, data={"text": "banana"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("data, fragment", [
    ({}, "needs an image, a text, or both"),
    ({"text": "   "}, "needs an image, a text, or both"),
    ({"text": "x" * 1001}, "text too long"),
    ({"text": "shoe", "k": "0"}, "k:"),
    ({"text": "shoe", "k": "101"}, "at most 100"),
    ({"text": "shoe", "k": "many"}, "k:"),
    ({"text": "shoe", "image_weight": "1.5"}, "image_weight"),
    ({"text": "shoe", "filters": "{not json"}, "filters must be a JSON object"),
    ({"text": "shoe", "filters": "[1, 2]"}, "cannot read filter 1"),  # a list: of [field, op, value] triples
    ({"text": "shoe", "filters": '"food"'}, "filters must be a JSON object"),
])
def test_bad_query_fields_get_one_line_errors(client, data, fragment):
    r = client.post("/search", data=data)
    assert r.status_code in (400, 422), r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and fragment in detail


def test_filters_pass_through(client, engine):
    r = client.post("/search", data={"text": "fruit", "k": "5", "filters": json.dumps({"category": "food"})})
    assert r.status_code == 200, r.text
    assert r.json()["hits"] and all(h["metadata"]["category"] == "food" for h in r.json()["hits"])
    assert client.get("/filters").json()["supported"] is True


def test_filter_fields_offer_low_cardinality_scalars_only():
    items = [{"metadata": {"category": c, "tags": ["a"], "sku": f"s{i}", "n": 1}}
             for i, c in enumerate(["food", "car", "food"] * 30)]
    fields = filter_fields(items)
    assert fields == {"category": ["car", "food"]}  # lists, unique ids and constants are not menus


# ------------------------------------------------------------------------------------ bad uploads
def test_non_image_upload_is_415(client):
    r = client.post("/search", files={"image": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415
    assert "not an image" in r.json()["detail"]


def test_truncated_image_is_400(client):
    data = png_bytes(Image.new("RGB", (64, 64), "red"))
    r = client.post("/search", files={"image": ("cut.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 400, r.text
    assert "image" in r.json()["detail"]


def test_empty_named_upload_is_400(client):
    r = client.post("/search", files={"image": ("photo.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]


def test_decompression_bombs_are_400(engine):
    # Pillow's own guard: the header claims 900 million pixels in a file of under 100 bytes.
    huge = png_header_only(30000, 30000)
    assert len(huge) < 200
    # Our stricter cap: a real, fully decodable 2000 x 2000 PNG that compresses to a few kB.
    real = png_bytes(Image.new("1", (2000, 2000), 0))
    assert len(real) < 20_000
    with make_client(engine, max_image_pixels=1_000_000) as c:
        for name, data in (("huge.png", huge), ("real.png", real)):
            r = c.post("/search", files={"image": (name, data, "image/png")})
            assert r.status_code == 400, (name, r.text)
            assert "decompression-bomb" in r.json()["detail"]
        ok = c.post("/search", files={"image": ("small.png", png_bytes(Image.new("RGB", (500, 500))), "image/png")})
        assert ok.status_code == 200


def test_extremely_elongated_images_are_400(client):
    r = client.post("/search", files={"image": ("strip.png", png_bytes(Image.new("RGB", (4000, 1))), "image/png")})
    assert r.status_code == 400 and "elongated" in r.json()["detail"]
    ok = client.post("/search", files={"image": ("pano.png", png_bytes(Image.new("RGB", (800, 200))), "image/png")})
    assert ok.status_code == 200


def test_upload_over_the_limit_is_413(engine):
    with make_client(engine, max_upload_bytes=50_000) as c:
        r = c.post("/search", files={"image": ("big.jpg", SHOE + b"\0" * 60_000, "image/jpeg")})
        assert r.status_code == 413 and "too large" in r.text.lower()
        assert c.post("/search", files={"image": ("q.jpg", SHOE, "image/jpeg")}).status_code == 200


def run_asgi(app, method: str, raw_path: bytes, headers=(), chunks=()) -> tuple[int, dict, bytes, int]:
    """Call the app as a server would; returns (status, headers, body, number of body chunks it read)."""
    reads = 0
    pending = list(chunks)

    async def receive():
        nonlocal reads
        if not pending:
            await asyncio.sleep(0)
            return {"type": "http.request", "body": b"", "more_body": False}
        reads += 1
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    messages = []

    async def send(msg):
        messages.append(msg)

    path, _, query = raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": unquote(path.decode("latin-1")), "raw_path": path, "query_string": query,
             "root_path": "", "headers": [(k.lower(), v) for k, v in headers], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, reads


def test_413_is_answered_before_the_body_is_read(engine):
    app = create_app(engine, ServeCfg(max_upload_bytes=64 * 1024, reload_interval_s=0))
    head = (b'--abc\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunks = [head] + [b"x" * 16384] * 64  # a well-formed start of a 1 MiB file part
    ctype = (b"content-type", b"multipart/form-data; boundary=abc")
    status, _, body, reads = run_asgi(app, "POST", b"/search", [ctype, (b"content-length", b"1048576")], chunks)
    assert status == 413 and reads == 0  # a declared size over the limit: not one byte read
    status, _, body, reads = run_asgi(app, "POST", b"/search", [ctype], chunks)  # chunked, size unknown
    assert status == 413 and reads <= 64 * 1024 // 16384 + 2  # stops right after passing the limit


@pytest.mark.parametrize("kwargs", [
    {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
    {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
    {"content": b'{"text": "shoe"}', "headers": {"content-type": "application/json"}},
    {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    {"data": {"image": "not a file"}},
    {"files": {"text": ("t.txt", b"shoe", "text/plain")}},
])
def test_malformed_requests_never_500(client, kwargs):
    r = client.post("/search", **kwargs)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["detail"], str)


# ---------------------------------------------------------------------------------- items & files
def test_item_metadata_and_404(client, engine):
    row = engine.items[3]
    r = client.get(f"/items/{row['id']}")
    assert r.status_code == 200
    assert r.json()["id"] == row["id"] and r.json()["title"] == row["title"]
    assert r.json()["metadata"] == row["metadata"]
    assert client.get("/items/no/such.webp").status_code == 404


def test_thumbnail_is_small_cached_and_etagged(client, engine):
    item_id = engine.items[0]["id"]
    stats0 = client.get("/stats").json()["thumbnails"]
    r = client.get(f"/items/{item_id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "WEBP" and max(im.size) <= 256
    r2 = client.get(f"/items/{item_id}/thumbnail")
    assert r2.content == r.content
    stats1 = client.get("/stats").json()["thumbnails"]
    assert stats1["hits"] >= stats0["hits"] + 1  # the second one came from the cache
    r3 = client.get(f"/items/{item_id}/thumbnail", headers={"If-None-Match": r.headers["etag"]})
    assert r3.status_code == 304 and not r3.content


TRAVERSALS = [
    b"../catalog.jsonl", b"..%2fcatalog.jsonl", b"%2e%2e/%2e%2e/%2e%2e/etc/passwd", b"%252e%252e%252fcatalog.jsonl",
    b"/etc/passwd", b"%2fetc%2fpasswd", b"clothing/../catalog.jsonl", b"clothing/%2e%2e/catalog.jsonl",
    b"catalog.jsonl", b"clothing/running_shoe.webp%00", b"clothing%5c..%5ccatalog.jsonl",
    b"./clothing/running_shoe.webp",
    b"clothing//running_shoe.webp", b"CLOTHING/RUNNING_SHOE.WEBP",
]


@pytest.mark.parametrize("variant", TRAVERSALS)
def test_path_traversal_variants_are_404(client, engine, variant):
    for suffix in (b"", b"/thumbnail"):
        status, _, body, _ = run_asgi(client.app, "GET", b"/items/" + variant + suffix)
        assert status == 404, (variant, suffix, body[:80])
        assert b"root:" not in body and b'"image"' not in body


def test_absolute_path_of_a_real_item_is_404(client, engine):
    real = engine.items[0]["path"].encode()
    status, _, _, _ = run_asgi(client.app, "GET", b"/items/" + real + b"/thumbnail")
    assert status == 404


def test_symlinks_out_of_the_catalog_are_not_served(tmp_path, small_catalog):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.webp"
    victim = sorted(small_catalog.rglob("*.webp"))
    secret.write_bytes(victim[0].read_bytes())
    (small_catalog / "planted.webp").symlink_to(secret)  # indexed, but leads out of the catalog
    (small_catalog / "inside.webp").symlink_to(victim[1])  # a link within the catalog is fine
    build_index(small_catalog, out=tmp_path / "index", model="tiny", device="cpu", num_workers=0, progress=False)
    engine = SearchEngine.open(tmp_path / "index", device="cpu")
    with make_client(engine) as c:
        assert c.get("/items/planted.webp/thumbnail").status_code == 404
        assert c.get("/items/inside.webp/thumbnail").status_code == 200
        swapped = victim[2].relative_to(small_catalog).as_posix()
        assert c.get(f"/items/{swapped}/thumbnail").status_code == 200
        victim[2].unlink()  # replaced by a link to outside after indexing
        victim[2].symlink_to(secret)
        c.app.state.mm.thumbs = type(c.app.state.mm.thumbs)(256)  # an empty cache: check the file again
        assert c.get(f"/items/{swapped}/thumbnail").status_code == 404


# ---------------------------------------------------------------------------------- more like this
def test_more_like_this_leaves_the_item_out(client, engine):
    item = engine.items[5]
    r = client.post(f"/search/by-item/{item['id']}", data={"k": "5"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 5 and item["id"] not in [h["id"] for h in hits]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    by_file = [h.id for h in engine.search(image=item["path"], k=6) if h.id != item["id"]]
    assert hits[0]["id"] == by_file[0]
    steered = client.post(f"/search/by-item/{item['id']}", data={"k": "5", "text": "car", "image_weight": "0.2"})
    assert steered.status_code == 200
    assert [h["id"] for h in steered.json()["hits"]] != [h["id"] for h in hits]
    assert client.post("/search/by-item/no/such.webp").status_code == 404
    assert client.post(f"/search/by-item/{item['id']}", data={"k": "0"}).status_code == 422


# ------------------------------------------------------------------------------------ service routes
def test_health_stats_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    client.post("/search", data={"text": "car"})
    stats = client.get("/stats").json()
    assert stats["items"] == 60 and stats["model"]["name"] == "tiny"
    assert stats["index"]["channels"]["image"]["type"] == "flat"  # exact search for a 60-item catalog
    assert "Flat" in stats["index"]["channels"]["image"]["factory"]
    assert stats["latency"]["queries"] >= 1 and stats["latency"]["p50_ms"] > 0
    assert stats["latency"]["p99_ms"] >= stats["latency"]["p50_ms"]
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {"/search", "/search/by-item/{item_id}", "/items/{item_id}",
                                    "/items/{item_id}/thumbnail", "/health", "/stats", "/reload"}
    form = schema["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = form["$ref"].split("/")[-1]
    assert set(schema["components"]["schemas"][ref]["properties"]) >= {"image", "text", "k", "image_weight", "filters"}


def test_page_is_served_offline_ready(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "http://" not in html and "https://" not in html  # no CDN, no external fonts
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html and client.get(asset).status_code == 200
        assert "https://" not in client.get(asset).text
    for control in ('for="q"', 'for="photo"', 'for="weight"'):
        assert control in html  # every control has a label


# --------------------------------------------------------------------------------------- API key
PROTECTED = [("POST", "/search"), ("POST", "/search/by-item/food/banana.webp"), ("GET", "/items/food/banana.webp"),
             ("GET", "/items/food/banana.webp/thumbnail"), ("GET", "/health"), ("GET", "/stats"),
             ("GET", "/filters"), ("POST", "/reload")]


def test_api_key_is_checked_in_constant_time_on_every_route(engine, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with make_client(engine, api_key="s3cret-key") as c:
        for method, path in PROTECTED:
            data = {"text": "banana"} if path == "/search" else None
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-ke"}):
                calls.clear()
                r = c.request(method, path, data=data, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert calls and all(a == b == 32 for a, b in calls)  # digests: no length leak either
            calls.clear()
            r = c.request(method, path, data=data, headers={"X-API-Key": "s3cret-key"})
            assert r.status_code == 200 and calls, (method, path, r.text)
        assert c.get("/").status_code == 200  # the page itself holds no data; it asks for the key


# ------------------------------------------------------------------------------------ concurrency
def test_full_queue_answers_503_with_retry_after(engine):
    import httpx

    app = create_app(engine, ServeCfg(max_pending=1, model_workers=1, retry_after_s=3, reload_interval_s=0))
    gate = app.state.mm.gate

    async def scenario():
        import threading

        release = threading.Event()
        blocker = asyncio.ensure_future(gate.run(release.wait, 30))
        await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            busy = await c.post("/search", data={"text": "shoe"})
            release.set()
            await blocker
            ok = await c.post("/search", data={"text": "shoe"})
        return busy, ok

    busy, ok = asyncio.run(scenario())
    assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
    assert "busy" in busy.json()["detail"]
    assert ok.status_code == 200
    assert app.state.mm.gate.rejected == 1
    gate.close()


def test_gate_counts_jobs_until_their_thread_ends():
    import threading

    gate = ModelGate(workers=1, max_pending=2)
    release = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(gate.run(release.wait, 30))
        second = asyncio.ensure_future(gate.run(lambda: "done"))
        await asyncio.sleep(0.05)
        assert gate.pending == 2
        with pytest.raises(Busy):
            await gate.run(lambda: None)
        second.cancel()  # its client went away before it started: the slot is freed
        await asyncio.sleep(0.05)
        assert gate.pending == 1
        first.cancel()  # already running: it keeps its slot until the thread finishes
        await asyncio.sleep(0.05)
        assert gate.pending == 1
        release.set()
        for _ in range(100):
            if gate.pending == 0:
                break
            await asyncio.sleep(0.02)
        assert gate.pending == 0
        assert await gate.run(lambda: 42) == 42

    asyncio.run(scenario())
    gate.close()


# ------------------------------------------------------------------------------------------ reload
def drop_images(catalog: Path, n: int) -> None:
    for p in sorted(catalog.rglob("*.webp"))[:n]:
        p.unlink()


def test_post_reload_and_watcher_pick_up_a_rebuilt_index(tmp_path, small_catalog):
    out = tmp_path / "index"
    build = dict(out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    build_index(small_catalog, **build)
    engine = SearchEngine.open(out, device="cpu")
    with make_client(engine) as c:  # no watcher: only POST /reload
        assert c.get("/health").json()["items"] == 12
        assert c.post("/reload").json()["reloaded"] is False
        drop_images(small_catalog, 2)
        build_index(small_catalog, **build)
        assert c.get("/health").json()["items"] == 12  # still the old snapshot until asked
        r = c.post("/reload").json()
        assert r["reloaded"] is True and r["items"] == 10
        assert c.post("/search", data={"text": "shoe", "k": "20"}).json()["hits"].__len__() == 10
    engine = SearchEngine.open(out, device="cpu")
    with make_client(engine, reload_interval_s=0.1) as c:  # the watcher notices on its own
        before = c.get("/health").json()
        drop_images(small_catalog, 1)
        build_index(small_catalog, **build)
        for _ in range(300):
            now = c.get("/health").json()
            if now["snapshot"] != before["snapshot"]:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert now["snapshot"] != before["snapshot"] and now["items"] == 9


def test_search_modes_paging_and_similar_to_several(client, engine):
    """HTTP: --mode, --min-score, --sort-by/--offset pages and "more like these" answer as the engine does."""
    r = client.post("/search", data={"text": "taxi", "k": 5, "mode": "keyword"})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "vehicle/taxi.webp"
    assert client.post("/search", data={"text": "taxi", "mode": "fuzzy"}).status_code == 400
    window = [h.id for h in engine.search(text="fruit", k=30, sort_by="title", descending=True, offset=0, window=30)]
    pages = [client.post("/search", data={"text": "fruit", "k": 10, "sort_by": "title", "descending": "true",
                                          "offset": o, "window": 30}).json()["hits"] for o in (0, 10, 20)]
    assert [h["id"] for p in pages for h in p] == window
    assert [h["rank"] for p in pages for h in p] == list(range(1, 31))
    top = client.post("/search", data={"text": "fruit", "k": 10}).json()["hits"]
    bar = top[2]["score"] - 1e-6  # scores come rounded to 6 decimals
    cut = client.post("/search", data={"text": "fruit", "k": 10, "min_score": bar}).json()["hits"]
    assert [h["id"] for h in cut] == [h["id"] for h in top if h["score"] >= bar]
    r = client.post("/search/similar", data={"id": ["food/lemon.webp", "food/banana.webp"],
                                             "not_id": ["vehicle/taxi.webp"], "k": 5})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]] == \
        [h.id for h in engine.search_similar(["food/lemon.webp", "food/banana.webp"], not_ids=["vehicle/taxi.webp"], k=5)]
    missing = client.post("/search/similar", data={"id": ["food/lemon.webp", "nope.webp"]})
    assert missing.status_code == 404 and "nope.webp" in missing.json()["detail"]
    both = client.post("/search/similar", data={"id": ["food/lemon.webp"], "not_id": ["food/lemon.webp"]})
    assert both.status_code == 400 and "both liked and disliked" in both.json()["detail"]


def test_a_query_that_cannot_be_built_is_a_400_on_both_routes(client):
    """A term weight out of range is the same one-line 400 from /search and from /cli/query (it was a 500 there)."""
    bad = [client.post("/search", data={"text": "red", "text_weights": "1000"}),
           client.post("/cli/query", json={"terms": [{"kind": "text", "text": "red", "weight": 1000}]}),
           client.post("/cli/query", json={"terms": [{"kind": "text", "text": "red"}], "window": 0})]
    for r in bad:
        assert r.status_code == 400, r.text
    assert "out of range" in bad[0].json()["detail"] and bad[0].json() == bad[1].json()
    assert "window" in bad[2].json()["detail"]
