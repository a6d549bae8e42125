"""Index choice, tuning against exact search, memory-mapped opening, filtered search."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from mmsearch.errors import MMSearchError
from mmsearch.index import ann, annbuild
from mmsearch.index.options import IndexCfg, parse_memory
from mmsearch.index.quiet import quiet_stdout


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) * 0.6
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    both = clustered(4200, 32, 0)
    x, q = both[:4000], both[4000:]  # q: fresh queries from the same distribution, not in the index
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3  # ids are not positions
    truth = ids[faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    return x, q, ids, truth


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq", "IVF32,SQ8"])
def test_tuned_index_reaches_recall_floor(data, kind):
    x, q, ids, truth = data
    index, spec = annbuild.build_tuned(IndexCfg(index_type=kind), x, ids)
    assert spec.recall_at_10 is not None and spec.recall_at_10 >= 0.95  # recorded tuning result
    if spec.rerank:
        found = annbuild.rerank(index.search(q, spec.rerank)[1], q, x, ids, 10)
    else:
        found = index.search(q, 10)[1]
    assert np.isin(found[found >= 0], ids).all()  # explicit ids come back, never row positions
    assert annbuild.recall_at_k(found, truth) >= 0.9  # held-out queries, with a small margin


def test_choice_follows_count_and_budget():
    assert annbuild.choose(5_000, 384, IndexCfg()).kind == "flat"
    assert annbuild.choose(500_000, 384, IndexCfg()).kind == "ivf"
    tight = annbuild.choose(500_000, 384, IndexCfg(max_memory=parse_memory("100MB")))
    assert tight.kind == "ivfpq" and tight.rerank > 0
    m = int(tight.factory.split("PQ")[1].split("x")[0])
    assert 500_000 * (m + 8) <= parse_memory("100MB")
    assert annbuild.choose(5_000, 384, IndexCfg(max_memory=1 << 20)).kind == "ivfpq"  # flat would not fit
    assert annbuild.choose(100, 16, IndexCfg(index_type="HNSW16")).factory == "IDMap2,HNSW16"
    with pytest.raises(MMSearchError, match="unknown index type"):
        annbuild.choose(100, 16, IndexCfg(index_type="NotAnIndex"))
    assert parse_memory("1.5GB") == int(1.5 * (1 << 30)) and parse_memory("512mb") == 512 << 20
    with pytest.raises(MMSearchError):
        parse_memory("lots")



def test_choice_falls_back_when_too_few_items_to_train():
    assert annbuild.choose(200, 64, IndexCfg(index_type="ivfpq")).kind == "ivf"  # < 256: no product quantizer
    assert annbuild.choose(30, 64, IndexCfg(index_type="ivfpq")).kind == "flat"  # < 39: no IVF cells either
    assert annbuild.choose(30, 64, IndexCfg(index_type="IVF")).kind == "flat"  # named types ignore case
    hnsw = annbuild.choose(30, 64, IndexCfg(index_type="hnsw", hnsw_m=8))
    assert (hnsw.kind, hnsw.factory, hnsw.params) == ("hnsw", "IDMap2,HNSW8,Flat", {"efSearch": 64})
    raw = annbuild.choose(1000, 64, IndexCfg(index_type=" IVF16,PQ8 "))  # raw factory: ids native, lossy
    assert (raw.kind, raw.factory, raw.params, raw.rerank) == ("factory", "IVF16,PQ8", {"nprobe": 8}, annbuild.RERANK)


def test_quiet_stdout_drops_what_c_code_prints(capfd):
    print("before", flush=True)
    with quiet_stdout():
        os.write(1, b"printf noise\n")  # what OnDiskInvertedLists' printf() amounts to: fd 1, below Python
    print("after", flush=True)
    out = capfd.readouterr().out
    assert "printf noise" not in out and "before" in out and "after" in out

def test_incremental_remove_and_add_keep_ids(data):
    x, q, ids, truth = data
    index, spec = annbuild.build_tuned(IndexCfg(index_type="ivf"), x[:3000], ids[:3000])
    assert annbuild.remove(index, ids[:100]) == 100
    annbuild.add(index, x[3000:], ids[3000:])
    found = index.search(x[:100], 1)[1]
    assert not np.isin(found, ids[:100]).any()  # removed ids are gone
    found = index.search(x[3000:3100], 1)[1][:, 0]
    assert (found == ids[3000:3100]).mean() > 0.95  # added items are their own nearest neighbour


def test_mmap_open_gives_identical_results(data, tmp_path):
    x, q, ids, truth = data
    index, spec = annbuild.build_tuned(IndexCfg(index_type="ivf"), x, ids)
    path = str(tmp_path / "i.faiss")
    faiss.write_index(index, path)
    mapped = ann.read(path, spec, mmap=True)
    loaded = ann.read(path, spec, mmap=False)
    assert "OnDisk" in type(faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped).invlists)).__name__
    np.testing.assert_array_equal(mapped.search(q, 10)[1], loaded.search(q, 10)[1])
    broken = tmp_path / "broken.faiss"  # (truncating the mapped file itself would SIGBUS its reader)
    broken.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(MMSearchError, match="cannot read index file"):
        ann.read(str(broken), spec)


def test_filtered_search_returns_only_allowed(data):
    x, q, ids, truth = data
    for kind in ("ivf", "hnsw", "flat"):
        index, spec = annbuild.build_tuned(IndexCfg(index_type=kind), x, ids)
        allowed = np.sort(np.random.default_rng(0).choice(ids, 40, replace=False))
        for strategy in ("selector", "overfetch"):
            found = ann.filtered_search(index, q[:20], 10, allowed, spec.params, strategy)
            assert np.isin(found[found >= 0], allowed).all()


def test_filter_boost_widens_search_for_selective_filters():
    assert [ann.filter_boost(s) for s in (1.0, 0.5, 0.3, 0.1, 0.05, 0.02, 1e-6)] == [1, 2, 2, 4, 8, 8, 32]
    assert [ann.filter_boost(s, graph=True) for s in (1.0, 0.5, 0.3, 0.1, 0.05, 0.02)] == [1, 2, 2, 8, 16, 32]
    index = faiss.index_factory(8, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    assert ann.boosted_params(index, {"nprobe": 4}, 0.1) == {"nprobe": 16}
    assert ann.boosted_params(index, {"nprobe": 4}, 0.02) == {"nprobe": 16}  # never more lists than exist
    assert ann.boosted_params(index, {"efSearch": 16}, 0.3) == {"efSearch": 32}
    assert ann.boosted_params(index, {"efSearch": 16}, 0.05) == {"efSearch": 256}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_selective_filters_keep_recall(data, kind):
    """The k best *allowed* items lie deeper than the unfiltered tuning searches; the boost finds them."""
    x, q, ids, _ = data
    index, spec = annbuild.build_tuned(IndexCfg(index_type=kind), x, ids)
    allowed = np.sort(np.random.default_rng(1).choice(ids, len(ids) // 20, replace=False))  # 5%
    xa = x[np.searchsorted(ids, allowed)]
    truth = allowed[faiss.knn(q, xa, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    for strategy in ("selector", "overfetch"):
        found = ann.filtered_search(index, q, 10, allowed, spec.params, strategy)
        assert np.isin(found[found >= 0], allowed).all()
        assert annbuild.recall_at_k(found, truth) >= 0.95, strategy
