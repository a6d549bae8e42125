"""Issue 20 item 1: no route reaches an engine without its lease, so reloads never close a store in use."""

from __future__ import annotations

import ast
import base64
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from mmsearch import SearchEngine  # noqa: E402
from mmsearch.index.build import reindex  # noqa: E402
from mmsearch.index.options import IndexCfg  # noqa: E402
from mmsearch.server import ServeCfg, create_app  # noqa: E402
from mmsearch.server.lease import Hold, Lease  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOE = (ROOT / "mmsearch" / "sample" / "queries" / "shoe.jpg").read_bytes()


@pytest.fixture()
def own_index(tmp_path, tiny_index) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.slow
def test_every_route_survives_reloads_under_load(own_index):
    """/cli/query used to call the engine without the lease: 500 "Cannot operate on a closed database",
    then a segfault in the store. Every engine route is hammered here while the index is swapped."""
    engine = SearchEngine.open(own_index, device="cpu")
    ids = [row["id"] for row in engine.items[:5]]
    shoe = base64.b64encode(SHOE).decode()
    calls = [
        ("post", "/cli/query", {"json": {"terms": [{"kind": "text", "text": "red shoes"}], "k": 5, "where": ["category=clothing"]}}),
        ("post", "/cli/query", {"json": {"terms": [{"kind": "image", "image_b64": shoe}], "k": 5}}),
        ("post", "/search", {"data": {"text": "a banana", "k": "5", "filters": '{"category": "food"}'}}),
        ("post", f"/search/by-item/{ids[0]}", {"data": {"k": "5"}}),
        ("get", "/items", {"params": {"filters": '{"category": ["food", "clothing"]}'}}),
        ("get", f"/items/{ids[1]}", {}),
        ("get", f"/items/{ids[2]}/thumbnail", {}),
        ("get", "/filters", {}),
        ("get", "/health", {}),
        ("get", "/stats", {}),
    ]
    statuses: Counter = Counter()
    bodies: list[str] = []
    stop = threading.Event()
    with TestClient(create_app(engine, ServeCfg(reload_interval_s=0, max_pending=256, model_workers=2)),
                    raise_server_exceptions=False) as c:
        def hammer(n: int) -> None:
            i = n
            while not stop.is_set():
                method, url, kw = calls[i % len(calls)]
                i += 1
                r = getattr(c, method)(url, **kw)
                statuses[(url.split("/")[1], r.status_code)] += 1
                if r.status_code != 200:
                    bodies.append(f"{url}: {r.text[:200]}")

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        try:
            for i in range(12):
                reindex(own_index, IndexCfg(index_type="flat" if i % 2 else "hnsw"))
                r = c.post("/reload")
                assert r.status_code == 200 and r.json()["reloaded"], r.text
        finally:
            stop.set()
            for t in threads:
                t.join()
        state = c.app.state.mm
    assert {s for _, s in statuses} == {200}, (statuses, bodies[:5])
    assert {route for route, _ in statuses} >= {"cli", "search", "items", "filters", "health", "stats"}
    assert state.current.lease.active == 0


def test_hold_counts_the_request_and_each_started_job():
    closed = []
    lease = Lease(lambda: closed.append(1))
    lease.acquire()
    hold = Hold(lease)
    first, second = hold.wrap(lambda: "a"), hold.wrap(lambda: "b")
    lease.retire()
    assert first() == "a" and second() == "b"  # jobs run while the request holds the lease
    assert not closed and hold.held
    hold.drop()
    assert closed == [1] and not hold.held
    with pytest.raises(RuntimeError, match="dropped"):
        hold.wrap(lambda: 0)()  # a job queued by a request that is gone never starts
    hold.drop()  # idempotent
    assert closed == [1] and lease.active == 0


def test_running_job_keeps_the_store_open_after_the_request_is_gone():
    closed = []
    lease = Lease(lambda: closed.append(1))
    lease.acquire()
    hold = Hold(lease)
    started, finish = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        finish.wait(10)

    t = threading.Thread(target=hold.wrap(slow))
    t.start()
    started.wait(10)
    hold.drop()  # the client went away
    lease.retire()  # and a reload happened
    assert not closed  # the job still reads the store
    finish.set()
    t.join()
    assert closed == [1]


def test_routes_reach_the_engine_only_through_the_lease():
    """A structural check: outside state.py, no server module reads ``state.current`` or a Loaded's engine;
    they use ``state.use()`` (whose ``engine`` refuses once the block has ended)."""
    server = ROOT / "mmsearch" / "server"
    offenders = []
    for path in sorted(server.glob("*.py")):
        if path.name in ("state.py", "lease.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("current", "_engine", "acquire"):
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not offenders, offenders


def test_use_refuses_the_engine_after_its_block(engine):
    from mmsearch.server.state import ServerState

    state = ServerState(engine, ServeCfg(reload_interval_s=0))
    with state.use() as use:
        assert len(use.engine) == len(engine)
        assert state.current.lease.active == 1
    assert state.current.lease.active == 0
    with pytest.raises(RuntimeError, match="lease"):
        use.engine  # noqa: B018
    state.gate.close()


# ------------------------------------------------------------------- item 6: /cli/query probes off the loop
def test_cli_query_reads_the_photo_header_off_the_event_loop(engine, monkeypatch):
    """A photo whose header takes long to read (1.8 M empty APP1 markers: 4.1 s) froze /health."""
    from mmsearch.server import cli_route

    events: list[str] = []
    entered, release = threading.Event(), threading.Event()
    real = cli_route.probe_upload

    def slow_probe(data: bytes, max_pixels: int):
        events.append("probe started")
        entered.set()
        release.wait(20)  # the loop is free meanwhile only if this runs in a thread
        events.append("probe ended")
        return real(data, max_pixels)

    monkeypatch.setattr(cli_route, "probe_upload", slow_probe)
    with TestClient(create_app(engine, ServeCfg(reload_interval_s=0)), raise_server_exceptions=False) as c:
        answer: list = []
        t = threading.Thread(target=lambda: answer.append(
            c.post("/cli/query", json={"terms": [{"kind": "image", "image_b64": base64.b64encode(SHOE).decode()}], "k": 3})))
        t.start()
        assert entered.wait(20)
        assert c.get("/health").status_code == 200
        events.append("health answered")
        release.set()
        t.join(30)
    assert events == ["probe started", "health answered", "probe ended"]
    assert answer[0].status_code == 200 and len(answer[0].json()["hits"]) == 3
