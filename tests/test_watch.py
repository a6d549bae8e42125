"""index --watch (a folder kept in sync while it changes) and query --update."""

import json
import shutil
import sys
import threading
import time

import pytest

from mmsearch.errors import MMSearchError
from mmsearch.index.watch import Debouncer, watch

pytest.importorskip("watchdog", reason="index --watch needs the watch extra")


def test_debouncer_waits_for_quiet():
    now = [0.0]
    d = Debouncer(2.0, clock=lambda: now[0])
    assert not d.due()  # nothing happened
    d.touch()
    now[0] = 1.5
    d.touch()  # the burst goes on
    now[0] = 3.0
    assert not d.due()  # 1.5 s of quiet
    now[0] = 3.6
    assert d.due() and not d.due()  # once, then re-armed


def wait_for(reports, pred, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((r for r in list(reports) if pred(r)), None)
        if hit is not None:
            return hit
        time.sleep(0.1)
    raise AssertionError(f"no update matched within {timeout} s: {[vars(r) for r in reports]}")


def test_watch_sees_created_changed_and_deleted_files(small_catalog, tmp_path):
    from mmsearch import SearchEngine

    out = small_catalog / ".index"  # inside the catalog: its own writes must not trigger updates
    reports: list = []
    stop = threading.Event()
    t = threading.Thread(target=watch, args=(small_catalog, out), daemon=True,
                         kwargs=dict(debounce=0.3, stop=stop, on_update=reports.append, model="tiny", device="cpu",
                                     num_workers=0, progress=False))
    t.start()
    try:
        first = wait_for(reports, lambda r: True)
        assert first.added == 12
        time.sleep(1.5)  # 5x the debounce: the index's own snapshot writes are not changes of the catalog
        assert len(reports) == 1
        shutil.copy(small_catalog / "clothing/running_shoe.webp", small_catalog / "new_shoe.webp")
        wait_for(reports, lambda r: r.added == 1)
        shutil.copy(small_catalog / "clothing/hiking_boot.webp", small_catalog / "new_shoe.webp")  # new content
        wait_for(reports, lambda r: r.updated == 1)
        (small_catalog / "new_shoe.webp").unlink()
        wait_for(reports, lambda r: r.removed == 1)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert "new_shoe.webp" not in {r["id"] for r in SearchEngine.open(out, device="cpu").items}


def test_watch_needs_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "watchdog", None)
    monkeypatch.setitem(sys.modules, "watchdog.events", None)
    with pytest.raises(MMSearchError, match=r"mmsearch\[watch\]"):
        watch(tmp_path, tmp_path / "index", stop=threading.Event())


def test_query_update_brings_the_index_up_to_date(small_catalog, tmp_path):
    from typer.testing import CliRunner

    from mmsearch.cli import app

    out = tmp_path / "index"
    run = CliRunner().invoke
    assert run(app, ["index", str(small_catalog), "-i", str(out), "--model", "tiny", "--device", "cpu",
                     "--workers", "0"]).exit_code == 0
    shutil.copy(small_catalog / "clothing/running_shoe.webp", small_catalog / "zz_added.webp")
    stale = run(app, ["query", "shoe", "-i", str(out), "--no-server", "--json", "-k", "20"])
    assert "zz_added.webp" not in {h["id"] for h in json.loads(stale.stdout)}
    fresh = run(app, ["query", "shoe", "-i", str(out), "--no-server", "--json", "-k", "20", "--update"])
    assert fresh.exit_code == 0, fresh.output
    assert "zz_added.webp" in {h["id"] for h in json.loads(fresh.stdout)}
    assert "Updated" in fresh.stderr and "1 added" in fresh.stderr
    shutil.rmtree(small_catalog)
    gone = run(app, ["query", "shoe", "-i", str(out), "--no-server", "--update"])
    assert gone.exit_code != 0 and "catalog folder" in gone.output
