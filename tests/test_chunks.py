"""Embedding chunks written by a background thread (issue 5): round trip, errors reach the caller, an
index build encodes through them with the in-memory result, and a killed build leaves the old index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsearch import SearchEngine, build_index
from mmsearch.config import EncodeCfg
from mmsearch.encode.chunks import ChunkWriter, ChunkWriterError, assemble, chunk_paths, read_chunk
from mmsearch.encode.pipeline import encode_image_files
from mmsearch.index.build import ENCODE_DIR
from mmsearch.index.snapshot import read_manifest
from mmsearch.models.factory import create_model

ROOT = Path(__file__).resolve().parents[1]


def batches(rng, n_batches=7, dims=(("image", 8), ("visual", 5))):
    """Batches of random rows whose positions, all together, are a shuffled 0..N-1."""
    sizes = rng.integers(1, 6, n_batches)
    perm = rng.permutation(int(sizes.sum()))
    out, start = [], 0
    for s in sizes:
        pos = perm[start:start + s]
        out.append((pos.tolist(), {name: rng.normal(size=(s, d)).astype(np.float32) for name, d in dims}))
        start += s
    return out


def test_chunk_writer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = batches(rng)
    with ChunkWriter(tmp_path / "w", chunk_rows=6, queue_size=2) as writer:
        for pos, arrays in data:
            writer.put(pos, arrays)
    chunks = writer.chunks
    assert len(chunks) > 1 and writer.rows == sum(len(p) for p, _ in data)
    for chunk in chunks:  # every chunk is complete: arrays and a marker listing its rows
        arrays, meta = read_chunk(*chunk_paths(tmp_path / "w", chunk))
        assert arrays["image"].dtype == np.float16 and len(arrays["image"]) == len(meta["positions"])
    positions, channels = assemble(tmp_path / "w", chunks, {"image": 8, "visual": 5})
    n = writer.rows
    np.testing.assert_array_equal(positions, np.arange(n))
    for name in ("image", "visual"):
        expect = np.zeros((n, channels[name].shape[1]), np.float32)
        for pos, arrays in data:
            expect[pos] = arrays[name]
        assert channels[name].dtype == np.float16
        np.testing.assert_array_equal(channels[name], expect.astype(np.float16))


def test_writer_exception_reaches_the_caller(tmp_path, monkeypatch):
    import mmsearch.encode.chunks as chunks_mod

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunks_mod, "write_chunk", disk_full)
    rng = np.random.default_rng(1)
    writer = ChunkWriter(tmp_path / "w", chunk_rows=2, queue_size=1)
    with pytest.raises(ChunkWriterError, match="No space left on device") as info:
        for _ in range(50):  # the thread fails on the first chunk; a later put (or close) must say so
            writer.put([0, 1], {"image": rng.normal(size=(2, 4)).astype(np.float32)})
        writer.close()
    assert isinstance(info.value.__cause__, OSError)
    writer._thread.join(timeout=10)  # the thread ends after handing the error over
    assert not writer._thread.is_alive()


def test_writer_exception_surfaces_from_encode(tmp_path, monkeypatch, sample_catalog):
    import mmsearch.encode.chunks as chunks_mod

    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(chunks_mod, "write_chunk", fail)
    model, preprocess, _ = create_model("tiny", device="cpu")
    paths = sorted(str(p) for p in sample_catalog.rglob("*.webp"))[:10]
    with pytest.raises(ChunkWriterError, match="Permission denied"):
        encode_image_files(model, preprocess, paths, progress=False, shards=tmp_path / "s",
                           cfg=EncodeCfg(batch_size=4, num_workers=0, shard_rows=4))


def test_chunked_encode_equals_in_memory(tmp_path, sample_catalog):
    model, preprocess, _ = create_model("tiny", device="cpu")
    paths = sorted(str(p) for p in sample_catalog.rglob("*.webp"))[:14]
    paths.insert(5, str(tmp_path / "missing.jpg"))  # a failure in the middle keeps positions right
    (tmp_path / "bad.jpg").write_text("not an image")
    paths.append(str(tmp_path / "bad.jpg"))
    cfg = EncodeCfg(batch_size=4, num_workers=0, shard_rows=5)
    mem = encode_image_files(model, preprocess, paths, progress=False, cfg=cfg)
    sh = encode_image_files(model, preprocess, paths, progress=False, cfg=cfg, shards=tmp_path / "s")
    assert sh.ok == mem.ok and sh.failed == mem.failed and 5 not in sh.ok and len(sh.ok) == 14
    for name, arr in mem.channels.items():
        assert sh.channels[name].dtype == np.float16
        np.testing.assert_array_equal(sh.channels[name], arr.astype(np.float16))
    # batches of 4, 3, 4, 3 good images; a chunk is written once >= 5 rows wait: two chunks of 7
    assert len(list((tmp_path / "s").glob("shard-*.json"))) == 2


BUILD = ("import sys; from mmsearch import build_index; from mmsearch.config import EncodeCfg; "
         "build_index(sys.argv[1], out=sys.argv[2], model='tiny', device='cpu', progress=False, "
         "encode=EncodeCfg(batch_size=4, num_workers=0, shard_rows=4))")


@pytest.mark.slow
def test_killed_build_leaves_the_previous_index(small_catalog, sample_catalog, tmp_path):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    before = read_manifest(out)
    assert not (out / ENCODE_DIR).exists()  # a finished build removes its chunks
    engine = SearchEngine.open(out, device="cpu")
    expect = [h.id for h in engine.search(text="shoe", k=5)]
    # a bigger catalog, built again from scratch (--rebuild), killed after its first chunk is on disk
    for p in sorted(sample_catalog.glob("vehicle/*.webp"))[:8]:
        (small_catalog / "vehicle").mkdir(exist_ok=True)
        (small_catalog / "vehicle" / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMSEARCH_CRASH_AT": "chunk-written"}
    proc = subprocess.run([sys.executable, "-c", BUILD.replace("progress=False", "progress=False, rebuild=True"),
                           str(small_catalog), str(out)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert list((out / ENCODE_DIR).glob("shard-*.json"))  # it died mid-encode, chunks written
    # the previous index is live and answers as before
    after = read_manifest(out)
    assert after["_snapshot"] == before["_snapshot"] and after["count"] == before["count"] == 12
    engine = SearchEngine.open(out, device="cpu", verify=True)
    assert [h.id for h in engine.search(text="shoe", k=5)] == expect
    # the next build completes, with every item, and clears the dead build's chunks
    proc = subprocess.run([sys.executable, "-c", BUILD, str(small_catalog), str(out)],
                          env={**env, "MMSEARCH_CRASH_AT": ""}, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert read_manifest(out)["count"] == 20 and not (out / ENCODE_DIR).exists()


def test_failed_build_keeps_the_previous_index(small_catalog, sample_catalog, tmp_path, monkeypatch):
    import mmsearch.encode.chunks as chunks_mod

    out = tmp_path / "index"
    build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    before = read_manifest(out)
    (small_catalog / "extra.webp").write_bytes(next(sample_catalog.glob("food/*.webp")).read_bytes())
    monkeypatch.setattr(chunks_mod, "write_chunk", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(ChunkWriterError, match="disk full"):
        build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    assert read_manifest(out)["_snapshot"] == before["_snapshot"]
    assert not (out / ENCODE_DIR).exists()
    assert len(SearchEngine.open(out, device="cpu", verify=True)) == 12


def test_cli_disk_full_while_writing_chunks(small_catalog, tmp_path, monkeypatch):
    """A chunk that cannot be written is one line and exit code 1, not a traceback."""
    from typer.testing import CliRunner

    import mmsearch.encode.chunks as chunks_mod
    from mmsearch.cli import app

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunks_mod, "write_chunk", disk_full)
    result = CliRunner().invoke(app, ["index", str(small_catalog), "--out", str(tmp_path / "i"), "--model", "tiny",
                                      "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "i" / "CURRENT").exists()
