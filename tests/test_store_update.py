"""The index as a living store: incremental updates, ids, remove/add by id, index switching, locks, damage."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsearch import SearchEngine, build_index
from mmsearch.cli import app
from mmsearch.errors import IndexIncompatibleError, MMSearchError
from mmsearch.index.build import remove_items
from mmsearch.index.options import IndexCfg
from mmsearch.index.snapshot import IndexLockedError, read_manifest, writer_lock
from mmsearch.index.store import ItemStore

runner = CliRunner()


def build(catalog: Path, out: Path, **kw):
    return build_index(catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False, **kw)


def fids(out: Path) -> dict[str, int]:
    snap = Path(read_manifest(out)["_snapshot"])
    with contextlib.closing(ItemStore.open(snap / "items.sqlite")) as st:
        return {iid: row["fid"] for iid, row in st.all_rows().items()}


def rows(catalog: Path) -> list[dict]:
    return [json.loads(line) for line in (catalog / "catalog.jsonl").read_text().splitlines() if line.strip()]


def write_rows(catalog: Path, rs: list[dict]) -> None:
    (catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def test_update_counts_ids_and_reencoding(small_catalog: Path, tmp_path: Path, sample_catalog: Path):
    out = tmp_path / "index"
    first = build(small_catalog, out)
    assert (first.added, first.encoded, first.indexed) == (12, 12, 12)
    before = fids(out)

    rs = rows(small_catalog)
    removed, changed, retitled = rs[0]["image"], rs[1]["image"], rs[2]["image"]
    (small_catalog / removed).unlink()
    # "changed": same file name, other picture (an image not in the small catalog)
    other = sorted(sample_catalog.glob("food/*.webp"))[-1]
    shutil.copy(other, small_catalog / changed)
    rs[2]["title"] = "a brand new title"
    new_id = "clothing/new_item.webp"
    shutil.copy(sorted(sample_catalog.glob("vehicle/*.webp"))[0], small_catalog / new_id)
    rs = [r for r in rs if r["image"] != removed] + [{"image": new_id, "title": "new item", "category": "vehicle"}]
    write_rows(small_catalog, rs)

    second = build(small_catalog, out)
    assert (second.added, second.updated, second.metadata_updated, second.removed, second.unchanged) == (1, 1, 1, 1, 9)
    assert second.encoded == 2  # the new and the changed image only
    assert second.indexed == 12
    after = fids(out)
    assert removed not in after
    for iid, fid in before.items():
        if iid != removed:
            assert after[iid] == fid  # ids stay stable, the changed file included
    assert after[new_id] == max(before.values()) + 1  # a removed id is never reused

    engine = SearchEngine.open(out, device="cpu")
    top = engine.search(image=small_catalog / changed, k=1)[0]
    assert top.id == changed and top.score > 0.99  # its stored vector is the new picture's
    assert engine.search(text="a brand new title", k=12, where={"title": "a brand new title"})[0].id == retitled

    third = build(small_catalog, out)
    assert (third.unchanged, third.encoded) == (12, 0)
    assert third.snapshot == second.snapshot  # nothing changed: nothing written


def test_switching_index_type_never_reencodes(small_catalog: Path, tmp_path: Path):
    out = tmp_path / "index"
    build(small_catalog, out)
    report = build(small_catalog, out, index=IndexCfg(index_type="hnsw"))
    assert report.encoded == 0
    m = read_manifest(out)
    assert m["channels"]["image"]["spec"]["kind"] == "hnsw"
    assert m["channels"]["image"]["spec"]["recall_at_10"] >= 0.95
    res = runner.invoke(app, ["reindex", "--index", str(out), "--index-type", "IVF2,Flat"])
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["channels"]["image"]["spec"]["factory"].startswith("IVF")
    hits = SearchEngine.open(out, device="cpu").search(image=next(small_catalog.rglob("*.webp")), k=3)
    assert len(hits) == 3
    res = runner.invoke(app, ["reindex", "--index", str(out), "--index-type", "IVF4,Nonsense"])
    assert res.exit_code == 1 and "unknown index type" in res.output


def test_remove_by_id_cli_and_api(small_catalog: Path, tmp_path: Path):
    out = tmp_path / "index"
    build(small_catalog, out)
    ids = sorted(fids(out))
    res = runner.invoke(app, ["remove", "--index", str(out), ids[0], "no/such.webp"])
    assert res.exit_code == 1 and "no/such.webp" in res.output and "nothing was removed" in res.output
    assert read_manifest(out)["count"] == 12
    res = runner.invoke(app, ["remove", "--index", str(out), ids[0], ids[1]])
    assert res.exit_code == 0, res.output
    engine = SearchEngine.open(out, device="cpu")
    assert len(engine) == 10
    hits = engine.search(image=small_catalog / ids[0], k=12)
    assert ids[0] not in {h.id for h in hits} and len(hits) == 10
    engine.remove([ids[2]])
    assert len(engine) == 9 and ids[2] not in {h.id for h in engine.search(text="shoe", k=12)}


def test_add_and_update_by_id(small_catalog: Path, tmp_path: Path, sample_catalog: Path):
    out = tmp_path / "index"
    build(small_catalog, out)
    engine = SearchEngine.open(out, device="cpu")
    photo = sorted(sample_catalog.glob("electronics/*.webp"))[0]
    report = engine.add([{"id": "api/gadget", "image": str(photo), "title": "gadget", "metadata": {"price": 12}}])
    assert (report.added, report.encoded) == (1, 1) and len(engine) == 13
    assert engine.search(image=photo, k=1, where="price<20")[0].id == "api/gadget"
    report = engine.update([{"id": "api/gadget", "metadata": {"price": 99}}])
    assert (report.metadata_updated, report.encoded) == (1, 0)
    assert engine.search(image=photo, k=5, where="price<20") == []
    assert engine.search(image=photo, k=1, where={"price": (">=", 99)})[0].id == "api/gadget"
    with pytest.raises(MMSearchError, match="needs an \"image\""):
        engine.add([{"id": "api/other", "title": "no image"}])
    assert len(engine) == 13


def test_second_writer_fails_clearly_or_waits(small_catalog: Path, tmp_path: Path):
    out = tmp_path / "index"
    build(small_catalog, out)
    with writer_lock(out):
        with pytest.raises(IndexLockedError, match="being written"):
            build(small_catalog, out)
        res = runner.invoke(app, ["remove", "--index", str(out), sorted(fids(out))[0]])
        assert res.exit_code == 1 and "being written" in res.output
    assert read_manifest(out)["count"] == 12

    held = threading.Event()

    def hold():
        with writer_lock(out):
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    remove_items(out, [sorted(fids(out))[0]], lock_timeout=30)  # waits for the other writer
    t.join()
    assert read_manifest(out)["count"] == 11


def test_open_engine_keeps_its_snapshot_until_reload(small_catalog: Path, tmp_path: Path):
    out = tmp_path / "index"
    build(small_catalog, out)
    engine = SearchEngine.open(out, device="cpu")
    ids = sorted(fids(out))
    remove_items(out, ids[:3])
    remove_items(out, ids[3:6])  # the engine's snapshot is now garbage-collected from disk
    hits = engine.search(text="shoe", k=12)
    assert len(hits) == 12 and {h.id for h in hits} == set(ids)
    assert engine.reload() is True
    assert len(engine) == 6 and {h.id for h in engine.search(text="shoe", k=12)} == set(ids[6:])
    assert engine.reload() is False


@pytest.mark.parametrize("victim", ["image.faiss", "items.sqlite", "image.f16.npy"])
def test_damaged_file_is_a_clear_error(small_catalog: Path, tmp_path: Path, victim: str):
    out = tmp_path / "index"
    build(small_catalog, out)
    snap = Path(read_manifest(out)["_snapshot"])
    path = snap / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIncompatibleError, match="damaged"):
        SearchEngine.open(out, device="cpu")
    res = runner.invoke(app, ["query", "--index", str(out), "shoe"])
    assert res.exit_code == 1 and "damaged" in res.output
    # an update does not build on a damaged snapshot: it re-encodes from the catalog
    report = build(small_catalog, out)
    assert report.encoded == 12
    assert len(SearchEngine.open(out, device="cpu")) == 12
