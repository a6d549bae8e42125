"""IVF indexes built the FAISS way at scale (mmsearch/index/ondisk.py): train once, add in parts, merge the
inverted lists on disk; under `torchrun -m mmsearch index` with 2 gloo ranks, killed mid-add, resumed,
moved, updated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from faiss.contrib.inspect_tools import get_invlist
from test_distributed import ranks_index, torchrun_index

from mmsearch.index import ann, annbuild, ondisk
from mmsearch.index.ann import IndexSpec
from mmsearch.index.options import IndexCfg


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def ivf_lists(index: faiss.Index) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, codes) of every inverted list, in list order."""
    ivf = faiss.extract_index_ivf(index)
    return [get_invlist(ivf.invlists, i) for i in range(ivf.nlist)]


def assert_same_ivf(a: faiss.Index, b: faiss.Index) -> None:
    qa, qb = faiss.extract_index_ivf(a).quantizer, faiss.extract_index_ivf(b).quantizer
    np.testing.assert_array_equal(qa.reconstruct_n(0, qa.ntotal), qb.reconstruct_n(0, qb.ntotal))
    assert a.ntotal == b.ntotal > 0
    for (ids_a, codes_a), (ids_b, codes_b) in zip(ivf_lists(a), ivf_lists(b)):
        np.testing.assert_array_equal(ids_a, ids_b)  # same ids in the same list, in the same order
        np.testing.assert_array_equal(codes_a, codes_b)


# ------------------------------------------------------------------------------------ in one process
@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF8,PQ8x4np"])
def test_parts_merged_on_disk_equal_the_in_ram_build_and_open_from_a_moved_folder(tmp_path, factory, capfd):
    rng = np.random.default_rng(0)
    vecs, ids = unit(rng, 1000, 32), np.arange(5, 2005, 2, dtype=np.int64)  # fids need not be dense
    folder = tmp_path / "snap"
    folder.mkdir()
    np.save(folder / "image.f16.npy", vecs)
    np.save(folder / "image.ids.npy", ids)
    spec = IndexSpec("factory", factory, {"nprobe": 4})
    adder = ondisk.LocalAdder(tmp_path / "work", part_size=300)  # 4 parts, the last one short
    index, got = ondisk.build("image", spec, folder, vecs, adder)
    assert got.ondisk == "image.ivfdata" and len(list((tmp_path / "work" / "image").glob("shard-*.ivf"))) == 4
    assert_same_ivf(index, annbuild.build(spec, vecs, ids))  # lists and codes equal to the in-RAM build
    ondisk.write(index, folder / "image.faiss")
    assert str(tmp_path).encode() not in (folder / "image.faiss").read_bytes()  # the lists file by name only

    moved = shutil.move(str(folder), str(tmp_path / "elsewhere"))
    opened = ann.read(str(Path(moved) / "image.faiss"), got)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(opened).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.filename == f"{moved}/image.ivfdata"
    q = vecs[:20].astype(np.float32)
    np.testing.assert_array_equal(opened.search(q, 5)[1], index.search(q, 5)[1])
    assert "ondisk" not in capfd.readouterr().out.lower()  # FAISS's printf()s do not reach stdout

    # a second run with the same trained index and vectors redoes nothing
    status = ondisk.run_parts(ondisk.AddTask(channel="image", work=str(tmp_path / "work" / "image"),
                                             vectors=f"{moved}/image.f16.npy", ids=f"{moved}/image.ids.npy",
                                             parts=[[0, 250], [250, 500], [500, 750], [750, 1000]],
                                             trained_key=ondisk.train_once(spec, vecs, tmp_path / "work" / "image")))
    assert (status.parts, status.resumed, status.added, status.error) == (4, 4, 0, None)


def test_missing_lists_file_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 400, 16)
    np.save(tmp_path / "image.f16.npy", vecs)
    np.save(tmp_path / "image.ids.npy", np.arange(400, dtype=np.int64))
    index, spec = ondisk.build("image", IndexSpec("ivf", "IVF4,Flat", {"nprobe": 2}), tmp_path, vecs,
                               ondisk.LocalAdder(tmp_path / "work"))
    ondisk.write(index, tmp_path / "image.faiss")
    del index
    (tmp_path / "image.ivfdata").unlink()
    with pytest.raises(Exception, match="inverted lists file .*image.ivfdata is missing"):
        ann.read(str(tmp_path / "image.faiss"), spec)


# ------------------------------------------------------------------------------- torchrun, 2 ranks
@pytest.fixture(scope="module")
def ivf_catalog(tmp_path_factory) -> Path:
    """200 small generated images with titles: enough for 5 IVF cells (the named `ivf` type)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ivf") / "catalog"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        base = rng.random(3) * 255
        pixels = np.clip(base + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        rows.append({"image": f"img{i:03d}.png", "title": f"item {i} tone {int(base[0])}"})
    (root / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def single_ivf(ivf_catalog, tmp_path_factory) -> Path:
    from mmsearch import build_index

    out = tmp_path_factory.mktemp("ivf-single") / "index"
    build_index(ivf_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False,
                index=IndexCfg("ivf"))
    return out


def channel_index(index_dir: Path, name: str) -> tuple[dict, faiss.Index]:
    from mmsearch.index.snapshot import read_manifest

    manifest = read_manifest(index_dir)
    meta = manifest["channels"][name]
    spec = IndexSpec.from_dict(meta["spec"])
    return manifest, ann.read(str(Path(manifest["_snapshot"]) / meta["faiss"]), spec)


def assert_same_as_single(dist: Path, single: Path) -> None:
    for name in ("image", "text"):
        manifest, got = channel_index(dist, name)
        single_manifest, want = channel_index(single, name)
        spec, want_spec = manifest["channels"][name]["spec"], single_manifest["channels"][name]["spec"]
        assert spec["ondisk"] == manifest["channels"][name]["ivfdata"] == f"{name}.ivfdata"
        assert want_spec["ondisk"] is None  # one process keeps the lists in RAM
        assert spec["factory"] == want_spec["factory"] == "IVF5,Flat" and spec["params"] == want_spec["params"]
        snap, single_snap = Path(manifest["_snapshot"]), Path(single_manifest["_snapshot"])
        np.testing.assert_array_equal(np.load(snap / f"{name}.ids.npy"), np.load(single_snap / f"{name}.ids.npy"))
        assert_same_ivf(got, want)


def hits(index_dir: Path) -> list[list[tuple[str, float]]]:
    from mmsearch import SearchEngine

    engine = SearchEngine.open(index_dir, device="cpu")
    queries = [engine.search(text="item 17 tone", k=8), engine.search(text="tone 200", k=8)]
    return [[(h.id, round(h.score, 4)) for h in q] for q in queries]


@pytest.mark.slow
def test_killed_rank_while_adding_ivf_parts_then_resume_equals_one_process_moves_and_updates(ivf_catalog, single_ivf,
                                                                                              tmp_path):
    """2 ranks under torchrun build an IVF index the on-disk way; one dies mid-add, the re-run resumes
    and gives the single-process index (ids, cells, lists, search results); the folder is then moved,
    opened and updated."""
    from mmsearch import SearchEngine, build_index
    from mmsearch.index.snapshot import current_snapshot, read_manifest, verify_snapshot

    out = tmp_path / "dist"
    # 4 parts per channel: rank 0 adds parts 0 and 2, rank 1 parts 1 and 3 and dies after part 1
    rank0, rank1 = ranks_index(ivf_catalog, out, "--index-type", "ivf", "--shard-size", "50",
                               env={"MMSEARCH_CRASH_AT": "ivf-part-done", "MMSEARCH_CRASH_RANK": "1"})
    assert rank1.returncode == -9
    assert rank0.returncode == 1, rank0.stdout + rank0.stderr
    error = rank0.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: rank 1 stopped before adding its image vectors to the IVF index "
                            "(3 of 4 parts done)"), error
    assert "re-run the same command to resume" in error
    assert current_snapshot(out) is None and not any((out / "snapshots").iterdir())  # nothing half-written
    assert len(list((out / ".distributed").glob("*/ivf/image/shard-*.json"))) == 3

    resumed = torchrun_index(ivf_catalog, out, "--index-type", "ivf", "--shard-size", "50")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    build = read_manifest(out)["build"]["distributed"]
    assert build["resumed_shards"] == 4
    assert build["ivf_ondisk"]["image"]["resumed_parts"] == 3 and build["ivf_ondisk"]["text"]["resumed_parts"] == 0
    assert [r["added"] for r in build["ivf_ondisk"]["image"]["ranks"]] == [0, 50]  # only part 3 is added now
    assert [r["added"] for r in build["ivf_ondisk"]["text"]["ranks"]] == [100, 100]  # 2 parts each
    assert not (out / ".distributed").exists()
    assert "ondisk" not in resumed.stdout.lower()  # FAISS's printf()s stay out of the CLI's output
    assert_same_as_single(out, single_ivf)
    expected = hits(single_ivf)
    assert hits(out) == expected and len(expected[0]) == 8

    moved = tmp_path / "moved" / "index"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))  # nothing is left where it was built
    assert hits(moved) == expected
    _, index = channel_index(moved, "image")
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename.startswith(str(moved))

    # An update (one file gone, one new) keeps the lists on disk: copied into the new snapshot and
    # changed there in place (same trained cells); the previous snapshot stays intact.
    catalog = tmp_path / "catalog"
    shutil.copytree(ivf_catalog, catalog)
    before = read_manifest(moved)
    (catalog / "img005.png").unlink()
    shutil.copy(catalog / "img017.png", catalog / "new.png")
    report = build_index(catalog, out=moved, model="tiny", device="cpu", num_workers=0, progress=False)
    assert (report.added, report.removed, report.encoded, report.indexed) == (1, 1, 1, 200)
    after = read_manifest(moved)
    assert after["_snapshot"] != before["_snapshot"]
    for name in ("image", "text"):
        spec = after["channels"][name]["spec"]
        assert spec["ondisk"] == f"{name}.ivfdata" and spec["trained_on"] == 200
    verify_snapshot(Path(before["_snapshot"]), before)  # checksums of the old .ivfdata files still hold
    found = [h.id for h in SearchEngine.open(moved, device="cpu").search(image=str(catalog / "new.png"), k=3)]
    assert {"new.png", "img017.png"} <= set(found) and "img005.png" not in found


def test_an_on_disk_index_that_must_be_retrained_is_rebuilt_on_disk_by_one_process(tmp_path):
    """An update outside torchrun that cannot re-use the trained cells (here: another index type asked
    for) builds the new IVF index on disk too, in parts added by this process, and cleans up its parts."""
    from mmsearch.index.snapshot import ChannelData
    from mmsearch.index.writer import _channel_index

    rng = np.random.default_rng(2)
    vecs, ids = unit(rng, 600, 16), np.arange(600, dtype=np.int64)
    old_snap, new_snap = tmp_path / "old", tmp_path / "new"
    for folder in (old_snap, new_snap):
        folder.mkdir()
        np.save(folder / "image.f16.npy", vecs)
        np.save(folder / "image.ids.npy", ids)
    index, spec = ondisk.build("image", IndexSpec("ivf", "IVF4,Flat", {"nprobe": 2}, trained_on=600), old_snap, vecs,
                               ondisk.LocalAdder(tmp_path / "work"))
    ondisk.write(index, old_snap / "image.faiss")
    old = ChannelData(ids=ids, vectors=vecs, spec=spec)
    cfg = IndexCfg("IVF8,Flat")
    got, got_spec = _channel_index("image", cfg, old, IndexCfg("ivf").to_dict(), ids, vecs, np.zeros(0, np.int64),
                                   np.zeros(0, np.int64), old_snap, new_snap)
    assert got_spec.factory == "IVF8,Flat" and got_spec.ondisk == "image.ivfdata"
    assert (new_snap / "image.ivfdata").is_file() and not (new_snap / ".parts").exists()
    assert_same_ivf(got, annbuild.build(IndexSpec("factory", "IVF8,Flat"), vecs, ids))
