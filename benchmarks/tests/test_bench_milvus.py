"""benchmarks/bench_milvus.py's quick-mode steps on a tiny collection (no timings asserted): the exact answers
respect the filters, both backends reach the matched Recall@10 and return only matching items, and the report
renders. Runs Milvus Lite in-process (a local folder), so it needs pymilvus + milvus-lite."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("milvus_lite")
pytest.importorskip("pymilvus")
import bench_milvus as bm  # noqa: E402

N = 2000
TARGET = 0.9


def _matches(ids: np.ndarray, category: np.ndarray, price: np.ndarray, scenario: str) -> bool:
    allowed = bm.allowed_ids(category, price, scenario)
    return allowed is None or bool(np.isin(ids[ids >= 0], allowed).all())


def test_both_backends_match_recall_and_respect_filters(tmp_path):
    cfg = bm.Cfg(dim=32, queries=20, tune_queries=20, target=TARGET, time_budget=0.0, min_timed=2)
    bm.make_data(tmp_path, N, cfg)
    category, price = bm.load(tmp_path, "category"), bm.load(tmp_path, "price")
    for scen in bm.SCENARIOS:
        truth = bm.load(tmp_path, f"truth_{scen}_eval")
        assert truth.shape == (cfg.queries, bm.K) and (truth >= 0).all() and _matches(truth, category, price, scen)

    built = bm.folder_build(tmp_path, "ivf", cfg)
    assert built["factory"].startswith("IVF") and built["disk_mib"] > 0
    folder = bm.FolderSearcher(tmp_path, "ivf")
    folder.ranking.exact_filter_max = 50  # 200 category matches take the IDSelector path, 20 price matches the scan
    assert folder.how("category") == "selector" and folder.how("price").startswith("exact scan")
    q, t = bm.load(tmp_path, "q_tune"), bm.load(tmp_path, "truth_category_tune")
    value, recall = bm.match_recall(folder, q, t, "category", TARGET)
    assert recall >= TARGET and _matches(folder.search(q, "category", value), category, price, "category")

    assert bm.lite_insert(tmp_path)["segments"] >= 1
    assert bm.lite_index(tmp_path, "ivf", N, cfg)["disk_mib"] > 0
    rows = []
    for backend in ("folder", "lite"):
        served = bm.serve(backend, tmp_path, "ivf", cfg)
        assert [c["scenario"] for c in served["cells"]] == list(bm.SCENARIOS)
        assert all(c["recall_tune"] >= TARGET and c["timed"] >= 2 for c in served["cells"])
        rows.append({"n": N, "backend": backend, "kind": "ivf", "factory": "x", "index_s": 1.0,
                     "build_peak_mib": 1.0, "disk_mib": 1.0, **served})
    lite = bm.LiteSearcher(tmp_path, "ivf")
    try:
        for scen in bm.SCENARIOS:
            assert _matches(lite.search(q, scen, 8), category, price, scen)
    finally:
        lite.close()

    md = bm.to_markdown({"command": "python benchmarks/bench_milvus.py --quick", "cfg": {}, "total_s": 1.0,
                         "rows": rows, "skipped": [], "machine": dict.fromkeys(
                             ["cpus", "machine", "load_before", "load_after", "faiss", "pymilvus", "milvus_lite"], "?")})
    assert md.count("| 2,000 |") == 2 + 2 * len(bm.SCENARIOS)
