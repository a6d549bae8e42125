"""The CLI through Typer's runner: main paths and every failure path with its exit code and message."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, sample_catalog):
    out = tmp_path_factory.mktemp("cli") / "index"
    result = run("index", sample_catalog, "--out", out, "--model", "tiny", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "Indexed 60 items" in result.stdout
    return out


def test_index_summary_reports_skips(small_catalog, tmp_path):
    (small_catalog / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = run("index", small_catalog, "--out", tmp_path / "i", "--model", "tiny", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "Indexed 12 items" in result.stdout
    assert "Skipped 1 file" in result.stdout and "broken.jpg" in result.stdout


def test_query_table_and_json(cli_index, sample_catalog):
    photo = sample_catalog / "vehicle" / "taxi.webp"
    table = run("query", photo, "--index", cli_index, "-k", "3")
    assert table.exit_code == 0, table.output
    assert "vehicle/taxi.webp" in table.stdout and "rank" in table.stdout
    res = run("query", "taxi", photo, "--index", cli_index, "-k", "4", "--json", "--image-weight", "0.9")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["id"] == "vehicle/taxi.webp"
    assert set(hits[0]) >= {"rank", "id", "path", "score", "metadata"}
    assert hits[0]["metadata"]["category"] == "vehicle"


def test_explicit_text_option_and_text_only(cli_index):
    res = run("query", "--text", "lemon", "--index", cli_index, "--json", "-k", "2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["id"] == "food/lemon.webp"


def test_batch_queries_one_line_each_in_order(cli_index, sample_catalog, tmp_path, monkeypatch):
    monkeypatch.chdir(sample_catalog)  # image paths are relative to the current directory
    lines = [{"image": "food/lemon.webp", "text": None}, {"image": None, "text": "taxi"},
             {"image": "vehicle/bus.webp", "text": "bus"}]
    batch = tmp_path / "q.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    res = run("query", "--batch", batch, "--index", cli_index, "-k", "5", "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["ids"]) == 5 == len(r["scores"]) for r in rows)
    assert rows[0]["ids"][0] == "food/lemon.webp"
    assert rows[1]["ids"][0] == "vehicle/taxi.webp"
    assert rows[2]["ids"][0] == "vehicle/bus.webp"


def test_batch_with_an_unreadable_image_answers_the_rest(cli_index, sample_catalog, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    batch = tmp_path / "q.jsonl"
    batch.write_text(json.dumps({"image": str(tmp_path / "bad.jpg"), "text": None}) + "\n"
                     + json.dumps({"image": None, "text": "lemon"}) + "\n")
    res = run("query", "--batch", batch, "--index", cli_index, "--json")
    assert res.exit_code == 2
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["ids"] == [] and "cannot read query image" in rows[0]["error"]
    assert rows[1]["ids"][0] == "food/lemon.webp"


def test_malformed_batch_line_is_named(cli_index, tmp_path):
    batch = tmp_path / "q.jsonl"
    batch.write_text('{"text": "ok"}\n{"text": \n')
    res = run("query", "--batch", batch, "--index", cli_index)
    assert res.exit_code == 2 and "q.jsonl:2" in res.stderr
    batch.write_text('{"image": null, "text": null}\n')
    res = run("query", "--batch", batch, "--index", cli_index)
    assert res.exit_code == 2 and "neither" in res.stderr


def test_info(cli_index):
    res = run("info", "--index", cli_index)
    assert res.exit_code == 0 and "60" in res.stdout and "tiny" in res.stdout
    data = json.loads(run("info", "--index", cli_index, "--json").stdout)
    assert data["count"] == 60 and data["model"]["name"] == "tiny"


@pytest.mark.parametrize("args, code, message", [
    (["index", "{tmp}/missing"], 1, "does not exist"),
    (["index", "{tmp}/empty"], 1, "no images"),
    (["query", "--index", "{index}"], 2, "give a query image, a query text, or both"),
    (["query", "{tmp}/nothere.jpg", "--index", "{index}"], 2, "does not exist"),
    (["query", "{tmp}/corrupt.png", "--index", "{index}"], 2, "cannot read query image"),
    (["query", "shoes", "--index", "{tmp}/noindex"], 1, "no index at"),
    (["query", "shoes", "--index", "{index}", "--device", "cuda:7"], 1, None),
    (["info", "--index", "{tmp}/noindex"], 1, "no index at"),
    (["query", "--not", "b", "--index", "{index}"], 2, "at least one photo or text"),  # two texts are a query now
])
def test_failure_paths(args, code, message, cli_index, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = [a.format(tmp=tmp_path, index=cli_index) for a in args]
    res = run(*argv)
    assert res.exit_code == code, res.output
    assert "Error:" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    if message:
        assert message in res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "missing").exists() and not (tmp_path / "index").exists()


def test_incompatible_index_names_the_fix(cli_index, tmp_path):
    import shutil

    from mmsearch.index.snapshot import current_snapshot

    copy = tmp_path / "index"
    shutil.copytree(cli_index, copy)
    manifest = current_snapshot(copy) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model"]["fingerprint"] = "f" * 16
    manifest.write_text(json.dumps(data))
    res = run("query", "shoes", "--index", copy)
    assert res.exit_code == 1 and "rebuild" in res.stderr


def test_filter_that_matches_nothing_says_so(cli_index):
    res = run("query", "lemon", "--index", cli_index, "--where", "category=spaceships")
    assert res.exit_code == 0 and "No results" in res.stdout
    res = run("query", "lemon", "--index", cli_index, "--where", "category=food", "--json", "-k", "50")
    hits = json.loads(res.stdout)
    assert hits and all(h["metadata"]["category"] == "food" for h in hits)
