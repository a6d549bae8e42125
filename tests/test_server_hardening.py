"""Server defects of issue 12: reload under load, filter payloads, thumbnails of tar items, 409 bodies,
the watcher's log, Host checks and read timeouts."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from mmsearch import SearchEngine  # noqa: E402
from mmsearch.index.build import reindex  # noqa: E402
from mmsearch.index.options import IndexCfg  # noqa: E402
from mmsearch.server import ServeCfg, create_app  # noqa: E402


@pytest.fixture()
def own_index(tmp_path, tiny_index) -> Path:
    """A private copy of the tiny index, free to be rewritten."""
    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def client_for(index: Path, **cfg) -> TestClient:
    cfg.setdefault("reload_interval_s", 0)
    cfg.setdefault("max_pending", 256)
    return TestClient(create_app(SearchEngine.open(index, device="cpu"), ServeCfg(**cfg)),
                      raise_server_exceptions=False)


# ------------------------------------------------------------------- 1: reload under load
def test_1_searches_across_many_reloads_never_fail(own_index):
    statuses: list[int] = []
    stop = threading.Event()

    with client_for(own_index, model_workers=2) as c:
        def searcher(n: int) -> None:
            while not stop.is_set():
                r = c.post("/search", data={"text": f"red shoes {n}", "k": "5",
                                            "filters": '{"category": ["clothing", "food"]}'})
                statuses.append(r.status_code)

        threads = [threading.Thread(target=searcher, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        snapshots = set()
        loaded = []
        try:
            for i in range(12):
                reindex(own_index, IndexCfg(index_type="flat" if i % 2 else "hnsw"))
                r = c.post("/reload")
                assert r.status_code == 200 and r.json()["reloaded"], r.text
                snapshots.add(r.json()["snapshot"])
                loaded.append(c.app.state.mm.current)
        finally:
            stop.set()
            for t in threads:
                t.join()
        old = c.app.state.mm
    assert len(snapshots) == 12
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert old.current.lease.active == 0 and not old.current.lease.retired
    assert all(x.lease.closed and x.lease.active == 0 for x in loaded[:-1])  # each old store closed once idle


# ------------------------------------------------------------------- 6 and 11: filter payloads
@pytest.fixture(scope="module")
def client(tiny_index):
    with client_for(tiny_index) as c:
        yield c


@pytest.mark.parametrize("filters, fragment", [
    ("[" * 50_000 + "]" * 50_000, "too"),                                     # RecursionError was a 500
    ('{"category": [' + ",".join(f'"v{i}"' for i in range(40_000)) + "]}", "too long"),  # too many SQL variables
    ('{"category": [' + ",".join(f'"{i}"' for i in range(1500)) + "]}", "at most 1000"),
    ('{"a": {"b": {"c": 1}}}', "string or a number"),
    ("{" + ",".join(f'"f{i}": 1' for i in range(100)) + "}", "at most 64"),
])
def test_6_filter_payloads_are_bounded_with_400s(client, filters, fragment):
    r = client.post("/search", data={"text": "shoe", "filters": filters})
    assert r.status_code == 400, r.text[:200]
    assert fragment in r.json()["detail"]


def test_11_json_range_filters_mean_ranges(tmp_path, small_catalog):
    import json

    from mmsearch import build_index

    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    for n, row in enumerate(rows):
        row["price"] = 10 * n
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
    cheap = {r["image"] for r in rows if r["price"] < 50}
    with client_for(tmp_path / "idx") as c:
        r = c.post("/search", data={"text": "shoe", "k": "100", "filters": '{"price": ["<", 50]}'})
        assert r.status_code == 200, r.text
        assert {h["id"] for h in r.json()["hits"]} == cheap
        r = c.post("/search", data={"text": "shoe", "k": "100", "filters": '{"price": [">=", 100]}'})
        assert {h["id"] for h in r.json()["hits"]} == {r["image"] for r in rows if r["price"] >= 100}
        r = c.post("/search", data={"text": "shoe", "k": "100", "filters": '{"price": ["in", [0, 20]]}'})
        assert {h["id"] for h in r.json()["hits"]} == {rows[0]["image"], rows[2]["image"]}


def test_11_where_typo_operators_are_refused():
    from mmsearch.errors import QueryError
    from mmsearch.index.filters import parse_where

    for bad in ("price<==5", "price=>5", "price>=<5", "price!==5"):
        with pytest.raises(QueryError, match="not an operator"):
            parse_where(bad)
    assert parse_where("price<=5")[0].op == "<="


# ------------------------------------------------------------------- 8: thumbnails of tar items
def test_8_tar_shard_items_get_thumbnails(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from mmsearch import build_index

    cat = tmp_path / "cat"
    cat.mkdir()
    with tarfile.open(cat / "000.tar", "w") as tf:
        for key, color in (("a", "red"), ("b", "blue")):
            buf = io.BytesIO()
            Image.new("RGB", (300, 200), color).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    build_index(cat, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
    with client_for(tmp_path / "idx") as c:
        hit = c.post("/search", data={"text": "red"}).json()["hits"][0]
        assert hit["id"].startswith("000.tar/")
        r = c.get(hit["thumbnail_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        again = c.get(hit["thumbnail_url"], headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
        assert c.get("/items/000.tar/zzz.png/thumbnail").status_code == 404


# ------------------------------------------------------------------- 10: 409 without paths, one log line
def test_10_reload_409_has_no_server_paths_and_the_watcher_logs_once(own_index, caplog):
    import logging

    with client_for(own_index, reload_interval_s=0.05) as c:
        before = c.get("/health").json()["snapshot"]
        # the damaged snapshot is made beside the served index and then published, so the watcher never
        # sees it intact
        side = own_index.parent / "side"
        shutil.copytree(own_index, side, ignore=shutil.ignore_patterns(".lock"))
        made = reindex(side, IndexCfg(index_type="flat"))
        good = (made / "items.sqlite").read_bytes()
        (made / "items.sqlite").write_bytes(b"damaged" * 100)
        snap = own_index / "snapshots" / made.name
        shutil.copytree(made, snap)
        (own_index / "CURRENT.tmp").write_text(made.name + "\n")
        (own_index / "CURRENT.tmp").replace(own_index / "CURRENT")
        with caplog.at_level(logging.ERROR, logger="mmsearch.server.app"):
            time.sleep(1.0)  # about 20 watcher rounds
            watcher_errors = [r for r in caplog.records if "cannot be loaded" in r.getMessage()]
            r = c.post("/reload")
        assert r.status_code == 409
        detail = r.json()["detail"]
        assert "items.sqlite" in detail and before in detail
        assert str(own_index.parent) not in detail and "/" not in detail.replace("--rebuild", "")
        assert len(watcher_errors) == 1, [r.getMessage() for r in watcher_errors]
        assert c.get("/health").json()["snapshot"] == before
        (snap / "items.sqlite").write_bytes(good)  # repaired in place: the watcher leaves it, /reload retries
        r = c.post("/reload")
        assert r.status_code == 200 and r.json()["reloaded"] and r.json()["snapshot"] == snap.name


# ------------------------------------------------------------------- low: read timeouts, Host check
@pytest.fixture()
def live_server(tiny_index):
    """The app as `mmsearch serve` runs it (Host check, timed protocol), on a free loopback port."""
    import socket

    import uvicorn

    from mmsearch.server.run import guarded_app, uvicorn_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeCfg(port=port, reload_interval_s=0, read_timeout_s=0.5)
    app = guarded_app(create_app(SearchEngine.open(tiny_index, device="cpu"), cfg), cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **uvicorn_options(cfg)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def raw_request(port: int, data: bytes, wait: float = 3.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
    return b"".join(chunks)


def test_low_stalled_connections_are_closed(live_server):
    # raw_request gives up after 3 s and marks the connection "<still open>": b"" means the server closed it
    assert raw_request(live_server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""  # headers never end
    assert raw_request(live_server, b"") == b""  # nothing sent at all
    body = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1000\r\n\r\ntext=shoe")  # a body that stops short
    assert b"<still open>" not in raw_request(live_server, body)
    ok = raw_request(live_server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


def test_low_host_header_is_checked_without_an_api_key(live_server):
    for host, status in ((b"127.0.0.1", b"200"), (b"localhost:%d" % live_server, b"200"),
                         (b"evil.example", b"400"), (b"evil.example:%d" % live_server, b"400"), (b"", b"400")):
        r = raw_request(live_server, b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert r.startswith(b"HTTP/1.1 " + status), (host, r[:100])
