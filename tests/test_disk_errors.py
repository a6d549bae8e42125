"""A full or read-only disk during remove / index / reindex / export, and a text bound on a number field:
one red line and exit 1 or 2, never a traceback; the index stays as it was."""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.index import writer

runner = CliRunner()


@pytest.fixture()
def own_index(tiny_index, tmp_path):
    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst)
    return dst


def one_red_line(res, code: int, *words: str) -> None:
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output


def current(index):
    return (index / "CURRENT").read_text()


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device", "items.sqlite"),
                                     OSError(errno.EROFS, "Read-only file system"),
                                     sqlite3.OperationalError("database or disk is full")])
def test_remove_on_a_full_or_read_only_disk(own_index, monkeypatch, failure):
    before = current(own_index)

    def refuse(*a, **kw):
        raise failure

    monkeypatch.setattr(writer.ItemStore, "create", refuse)
    some_id = json.loads(runner.invoke(app, ["list", "--index", str(own_index), "--json"]).output)[0]["id"]
    res = runner.invoke(app, ["remove", some_id, "--index", str(own_index)])
    one_red_line(res, 1, "cannot write index", "the index is unchanged")
    assert current(own_index) == before
    assert not list((own_index / "snapshots").glob(".tmp-*"))


def test_index_and_reindex_on_a_full_disk(own_index, sample_catalog, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ItemStore, "create", full)
    res = runner.invoke(app, ["reindex", "--index", str(own_index), "--index-type", "flat"])
    one_red_line(res, 1, "the disk is full")
    res = runner.invoke(app, ["index", str(sample_catalog), "--out", str(own_index), "--rebuild", "--device", "cpu",
                              "--workers", "0"])
    one_red_line(res, 1, "the disk is full")


def test_export_on_a_read_only_disk(own_index, tmp_path, monkeypatch):
    import numpy as np

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(np, "save", refuse)
    res = runner.invoke(app, ["export", "--out", str(tmp_path / "out"), "--index", str(own_index)])
    one_red_line(res, 1, "cannot write the export", "read-only")


def test_text_bound_on_a_number_field_names_its_type(tiny_index, tmp_path):
    from mmsearch import SearchEngine

    index = tmp_path / "index"
    shutil.copytree(tiny_index, index)
    engine = SearchEngine.open(index, device="cpu")
    first = engine.items[0]
    engine.add([{"id": first["id"], "metadata": {**first["metadata"], "megapixels": 12.3}}])
    res = runner.invoke(app, ["query", "shoe", "--index", str(index), "--no-server", "--where", "megapixels<abc"])
    one_red_line(res, 2, "megapixels", "holds numbers", "12.3")
    res = runner.invoke(app, ["list", "--index", str(index), "--where", "megapixels>=abc"])
    one_red_line(res, 2, "holds numbers")
    ok = runner.invoke(app, ["list", "--index", str(index), "--where", "megapixels<20", "--json"])
    assert ok.exit_code == 0 and [r["id"] for r in json.loads(ok.output)] == [first["id"]]
    ok = runner.invoke(app, ["list", "--index", str(index), "--where", "category<m", "--json"])  # text field
    assert ok.exit_code == 0, ok.output
