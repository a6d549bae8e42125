"""Evaluation metrics against hand-made rankings, the queries file, and `mmsearch eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.errors import QueryError
from mmsearch.evaluate import bootstrap_ci, first_rank, metrics_from_ranks, read_queries, recall_at_k

runner = CliRunner()


def test_metrics_from_a_hand_made_ranking():
    # four queries: first relevant hit at rank 1, 3, not retrieved, 12
    m = metrics_from_ranks([1, 3, None, 12])
    assert m["R@1"] == 0.25
    assert m["R@5"] == 0.5
    assert m["R@10"] == 0.5
    assert m["R@50"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 12) / 4)


def test_first_rank_takes_the_best_of_several_targets():
    assert first_rank(["a", "b", "c", "d"], ["d", "b"]) == 2
    assert first_rank(["a", "b"], ["z"]) is None


def test_recall_at_k_from_scores_counts_ties_against_the_target():
    scores = np.array([[0.9, 0.1, 0.5],   # target 0: rank 1
                       [0.2, 0.2, 0.2],   # target 1: all tied -> rank 3
                       [0.3, 0.8, 0.4]])  # target 2: rank 2
    targets = np.array([0, 1, 2])
    assert recall_at_k(scores, targets, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, targets, 2) == pytest.approx(2 / 3)
    assert recall_at_k(scores, targets, 3) == 1.0


def test_bootstrap_interval_brackets_the_estimate_and_is_deterministic():
    ranks = [1] * 30 + [20] * 30 + [None] * 40
    ci = bootstrap_ci(ranks, n=500, seed=3)
    point = metrics_from_ranks(ranks)
    for name in ("R@1", "R@50", "MRR"):
        lo, hi = ci[name]
        assert lo <= point[name] <= hi and hi - lo > 0
    assert ci == bootstrap_ci(ranks, n=500, seed=3)
    same = bootstrap_ci([2] * 10, n=200)
    assert same["R@1"] == (0.0, 0.0) and same["R@5"] == (1.0, 1.0)


def test_queries_file_errors_name_the_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"text": "red shoe", "target": ["a.webp"]}\n{"text": "x", "target": []}\n')
    with pytest.raises(QueryError, match=r"q\.jsonl:2: \"target\" must be"):
        read_queries(p)
    p.write_text('{"text": "red shoe", "target": "a.webp"}\n\n{"image": null, "text": " ", "target": ["a"]}\n')
    with pytest.raises(QueryError, match=r"q\.jsonl:3: the query has neither"):
        read_queries(p)
    p.write_text('{"text": "red shoe", "target": "a.webp"}\n{"image": "photos/x.jpg", "target": ["b"]}\n')
    qs = read_queries(p)
    assert qs[0].targets == ["a.webp"] and qs[0].type == "text"
    assert qs[1].image == str(tmp_path / "photos" / "x.jpg") and qs[1].type == "image"


def test_eval_cli_on_an_index(tiny_index, sample_catalog, tmp_path):
    rows = [json.loads(x) for x in (sample_catalog / "catalog.jsonl").read_text().splitlines()]
    q = tmp_path / "queries.jsonl"
    lines = [{"image": str(sample_catalog / r["image"]), "text": None, "target": [r["image"]]} for r in rows[:6]]
    lines += [{"image": None, "text": r["title"], "target": [r["image"]]} for r in rows[:4]]
    lines += [{"image": str(sample_catalog / rows[0]["image"]), "text": "in red", "target": [rows[1]["image"]]}]
    q.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = runner.invoke(app, ["eval", str(q), "--index", str(tiny_index), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["n"] == 11
    assert set(data["by_type"]) == {"image", "text", "image+text"}
    assert data["by_type"]["image"]["n"] == 6
    # An indexed image as the query finds itself first, whatever the (random) model.
    assert data["by_type"]["image"]["R@1"] == 1.0 and data["by_type"]["image"]["MRR"] == 1.0
    assert 0.0 <= data["overall"]["R@10"] <= 1.0
    table = runner.invoke(app, ["eval", str(q), "--index", str(tiny_index), "--device", "cpu"])
    assert table.exit_code == 0 and "R@10" in table.output and "image+text" in table.output
    # unknown target id: one red line naming the query's line, exit 1
    q.write_text(json.dumps({"image": None, "text": "shoe", "target": ["nope.webp"]}) + "\n")
    bad = runner.invoke(app, ["eval", str(q), "--index", str(tiny_index), "--device", "cpu"])
    assert bad.exit_code == 2 and "line 1" in bad.output and "nope.webp" in bad.output
