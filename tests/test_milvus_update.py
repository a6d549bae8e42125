"""Updating a Milvus index (mmsearch/index/milvus/writer.py) on Milvus Lite: changes, removals, the manifest
and its generation, an interrupted update and its repair, locations."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


from mmsearch.errors import IndexIncompatibleError, MMSearchError  # noqa: E402
from mmsearch.index.filters import parse_where  # noqa: E402
from mmsearch.index.milvus import MilvusReader, MilvusWriter, parse_location  # noqa: E402
from mmsearch.index.milvus.location import TOKEN_ENV, forget_client  # noqa: E402
from mmsearch.index.options import IndexCfg  # noqa: E402
from mmsearch.index.writer import Change  # noqa: E402

D = 8
DIMS = {"image": D, "text": D}
MANIFEST = {"model": {"name": "tiny", "ref": "tiny", "fingerprint": "abc"}, "dim": D, "catalog": "/cat", "skipped": []}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("milvus") / "u.db"
    names = iter(range(1000))
    yield lambda: f"milvus-lite:{path}#c{next(names)}"
    forget_client(f"milvus-lite:{path}")


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


def item(fid: int, title: str = "", **meta) -> dict:
    return {"fid": fid, "id": f"i{fid}.jpg", "path": f"/cat/i{fid}.jpg", "title": title, "text": "",
            "metadata": meta, "image_sha256": f"h{fid}", "text_sha256": f"t{fid}" if title else None}


def new(fid: int, title: str = "", **meta) -> Change:
    vectors = {"image": vec(fid)}
    if title:
        vectors["text"] = vec(1000 + fid)
    return Change(row=item(fid, title, **meta), vectors=vectors)


@pytest.fixture()
def index(db):
    loc = db()
    w = MilvusWriter(loc, dims=DIMS)
    w.apply([new(0, "red shoe", price=10, tags=["a"]), new(1, price=20), new(2, "blue bag", price=30, old=1)], [],
            dict(MANIFEST), next_fid=3)
    return loc, w


def test_metadata_only_change_keeps_the_vectors(index):
    loc, w = index
    reader = MilvusReader(loc)
    before = {ch: reader.vectors(ch, np.array([0, 1, 2]))[1] for ch in ("image", "text")}
    # 0: new metadata only; 2: its text and the field "old" are gone; 1: gains a text vector
    w.apply([Change(row=item(0, "red shoe", price=99, tags=["b"])), Change(row=item(2, price=30), drop_text=True),
             Change(row=item(1, "green hat", price=20), vectors={"text": vec(77)})], [], dict(MANIFEST))
    after = MilvusReader(loc)
    present, image = after.vectors("image", np.array([0, 1, 2]))
    assert present.all() and np.array_equal(image, before["image"])
    present, text = after.vectors("text", np.array([0, 1, 2]))
    assert present.tolist() == [True, True, False]
    assert np.array_equal(text[0], before["text"][0]) and np.array_equal(text[1], vec(77))
    assert after.channel_count("text") == 2 and after.count() == 3
    assert after.select(parse_where("price>50")).tolist() == [0]
    assert after.select(parse_where("tags=a")).tolist() == []
    assert after.select(parse_where("old=1")).tolist() == []  # a removed field no longer matches
    assert after.select(parse_where("old<5")).tolist() == []
    assert after.fields() == ["price", "tags", "title"]
    assert after.all_rows()["i2.jpg"]["text_sha256"] is None
    assert after.search("text", vec(77)[None], 5).tolist() == [[1, 0]]


def test_remove_and_add(index):
    loc, w = index
    m = w.apply([new(3, "new one", price=5)], [1, 2], dict(MANIFEST), next_fid=4)
    reader = MilvusReader(loc)
    assert sorted(reader.all_rows()) == ["i0.jpg", "i3.jpg"]
    assert m["count"] == reader.count() == 2 and m["channels"]["text"]["count"] == 2
    assert reader.search("image", vec(2)[None], 10)[0].tolist() in ([0, 3], [3, 0])
    assert reader.vectors("image", np.array([1, 2]))[0].tolist() == [False, False]
    assert reader.fields() == ["price", "tags", "title"]
    assert m["next_fid"] == 4 and w.next_fid(w.previous()) == 4


def test_manifest_round_trip_and_generation(index):
    loc, w = index
    reader = MilvusReader(loc)
    assert reader.version == "1" and not reader.changed()
    skipped = [{"id": f"bad/{i:05d}.jpg", "reason": "cannot identify image file " + "x" * 40} for i in range(2000)]
    m = w.apply([], [], {**MANIFEST, "skipped": skipped, "exclude": ["*.tmp"]})
    assert reader.changed() and m["generation"] == 2
    again = MilvusReader(loc)
    assert again.version == "2" and not again.changed()
    for key in ("model", "catalog", "skipped", "exclude", "count", "channels", "next_fid", "index_cfg", "dim"):
        assert again.manifest[key] == m[key], key
    assert len(again.manifest["skipped"]) == 2000  # ~140 KB of JSON: kept in several rows
    w.apply([], [], dict(MANIFEST))
    assert MilvusReader(loc).manifest["skipped"] == [] and again.changed()
    for name in (w.collection, w.meta.name):  # as a new process finds them under Milvus Lite
        w.client.release_collection(name)
    assert MilvusWriter(loc).manifest["generation"] == 3  # a stateless process reads it back
    assert MilvusReader(loc).count() == 3


def test_an_interrupted_update_leaves_whole_items_and_is_repaired(index, monkeypatch):
    loc, w = index
    reader = MilvusReader(loc)
    monkeypatch.setattr(w.meta, "write", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        w.apply([new(5, "late", price=1, color="red"), Change(row=item(0, "red shoe", price=11, tags=["a"]))], [1],
                dict(MANIFEST), next_fid=6)
    monkeypatch.undo()
    # the rows landed whole; the manifest, its counts and the generation are the previous ones
    assert not reader.changed() and reader.count() == 3
    rows = MilvusReader(loc).all_rows()  # committed fids only (below next_fid = 3)
    assert rows["i0.jpg"]["metadata"] == {"price": 11, "tags": ["a"]} and "i1.jpg" not in rows
    # the next run plans from the stored rows: nothing left to write, it recounts and commits
    w2 = MilvusWriter(loc, dims=DIMS)
    prev = w2.previous()
    assert set(prev) == {"i0.jpg", "i2.jpg", "i5.jpg"}  # every stored row, past the old manifest's next_fid
    assert w2.next_fid(prev) == 6
    m = w2.apply([], [], dict(MANIFEST), next_fid=6)
    after = MilvusReader(loc)
    assert m["count"] == after.count() == 3 and after.channel_count("text") == 3
    assert after.fields() == ["color", "old", "price", "tags", "title"]
    assert after.select(parse_where("color=red")).tolist() == [5]
    assert w2.meta.dirty() is None


def test_check_dims_and_index_changes(index):
    loc, w = index
    with pytest.raises(IndexIncompatibleError, match="rebuild"):
        MilvusWriter(loc, dims={"image": 4, "text": 4})
    with pytest.raises(MMSearchError, match="needs a rebuild"):
        MilvusWriter(loc, cfg=IndexCfg(index_type="hnsw")).apply([], [], dict(MANIFEST))
    w.drop()
    assert not MilvusWriter(loc).exists
    w3 = MilvusWriter(loc, dims=DIMS, cfg=IndexCfg(index_type="hnsw"))
    m = w3.apply([new(i, price=i) for i in range(40)], [], dict(MANIFEST), next_fid=40)
    assert m["channels"]["image"]["milvus_index"]["index_type"] == "HNSW"
    reader = MilvusReader(loc)
    assert reader.search("image", vec(7)[None], 1).tolist() == [[7]]
    assert reader.channel_names() == ["image"]  # no item has text
    assert reader.search("text", vec(7)[None], 3).shape == (1, 0)


def test_rows_milvus_cannot_hold_fail_before_anything_is_written(index):
    loc, w = index
    with pytest.raises(MMSearchError, match="'i9.jpg' cannot be stored in Milvus: its title is"):
        w.apply([new(8, "fine"), new(9, "x" * 70_000)], [], dict(MANIFEST))
    assert sorted(MilvusReader(loc).all_rows()) == ["i0.jpg", "i1.jpg", "i2.jpg"]
    with pytest.raises(MMSearchError, match="new but has no image vector"):
        w.apply([Change(row=item(8))], [], dict(MANIFEST))


def test_locations(monkeypatch, tmp_path):
    loc = parse_location(f"milvus-lite:{tmp_path}/shop.db")
    assert loc.lite and loc.collection == "mmsearch" and loc.uri == str(tmp_path / "shop.db")
    assert parse_location("milvus-lite:x.db#shop_v2").collection == "shop_v2"
    monkeypatch.setenv(TOKEN_ENV, "root:secret")
    srv = parse_location("milvus://db.example.com:19531/shop")
    assert (srv.uri, srv.collection, srv.lite, srv.token) == ("http://db.example.com:19531", "shop", False, "root:secret")
    assert "secret" not in repr(srv) and "secret" not in str(srv)
    assert parse_location("milvus+https://h/c").uri == "https://h:19530"
    assert parse_location("milvus://h").collection == "mmsearch"
    for bad in ["milvus-lite:shop", "milvus://h:99999/c", "milvus://h/bad-name", "milvus://h/x__meta", "milvus:/h"]:
        with pytest.raises(MMSearchError):
            parse_location(bad)


def test_readers_see_whole_items_while_a_writer_updates(db):
    """Two readers search and read rows while updates rewrite every item: each row they see is whole (its
    metadata and its vector from the same update), and a commit shows as a new generation."""
    import json
    import threading

    loc = db()
    w = MilvusWriter(loc, dims=DIMS)

    def update(gen: int) -> list[Change]:
        return [Change(row=item(f, g=gen), vectors={"image": vec(100 * gen + f)}) for f in range(30)]

    w.apply(update(0), [], dict(MANIFEST), next_fid=30)
    readers = [MilvusReader(loc), MilvusReader(loc)]
    errors: list[str] = []
    done = threading.Event()

    reads = [0, 0]

    def read(n: int) -> None:
        reader = readers[n]
        while not done.is_set():
            fids = reader.search("image", vec(5)[None], 10)[0]
            # one query for the metadata and the vector of each hit: both come from the same write
            for r in reader.client.query(reader.collection, ids=[int(f) for f in fids],
                                         output_fields=["fid", "metadata", "v_image"]):
                gen = json.loads(r["metadata"])["g"]
                if not np.allclose(r["v_image"], vec(100 * gen + int(r["fid"]))):
                    errors.append(f"fid {r['fid']}: metadata of update {gen}, vector of another")
            reads[n] += 1
    threads = [threading.Thread(target=read, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    try:
        for gen in (1, 2, 3):
            w.apply(update(gen), [], dict(MANIFEST))
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert min(reads) > 0
    assert all(r.changed() for r in readers) and MilvusReader(loc).version == "4"


def test_a_lite_file_held_by_another_process_is_one_clear_line(db):
    import subprocess
    import sys

    loc = db()
    MilvusWriter(loc, dims=DIMS)  # this process holds the file
    code = ("import sys\nfrom mmsearch.errors import MMSearchError\nfrom mmsearch.index.milvus import connect\n"
            "try:\n    connect(sys.argv[1])\nexcept MMSearchError as exc:\n    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code, loc], capture_output=True, text=True, timeout=120)
    assert "another process has it open" in run.stdout and "milvus-lite server" in run.stdout
    assert len(run.stdout.strip().splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.slow
def test_processes_share_an_index_through_a_milvus_lite_server(tmp_path):
    """The multi-process shape (several `serve` replicas, a writer beside them): `milvus-lite server` holds
    the file, every process reaches it as milvus://; a write in one shows in another after its commit."""
    import subprocess
    import sys

    from helpers.milvus_server import milvus_lite_server

    with milvus_lite_server(tmp_path / "shared.db") as server:
        loc = f"{server}/shop"
        w = MilvusWriter(loc, dims=DIMS)
        assert w.lite  # a Lite server is told apart by its version, and gets Lite-shaped work
        w.apply([new(0, "red shoe", price=1), new(1, price=2)], [], dict(MANIFEST), next_fid=2)
        code = ("import sys\nfrom mmsearch.index.filters import parse_where\nfrom mmsearch.index.milvus import "
                "MilvusReader\nr = MilvusReader(sys.argv[1])\nprint(r.count(), r.select(parse_where('price>1')).tolist(),"
                " r.version)\n")
        read = subprocess.run([sys.executable, "-c", code, loc], capture_output=True, text=True, timeout=120)
        assert read.stdout.split("\n")[0] == "2 [1] 1", read.stderr[-2000:]
        reader = MilvusReader(loc)
        w.apply([new(2, price=3)], [0], dict(MANIFEST), next_fid=3)
        assert reader.changed()
        read = subprocess.run([sys.executable, "-c", code, loc], capture_output=True, text=True, timeout=120)
        assert read.stdout.split("\n")[0] == "2 [1, 2] 2", read.stderr[-2000:]

