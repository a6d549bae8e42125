"""ONNX cache failures (models/onnx.py, search/runtime.py): a read-only or full cache, a truncated or
damaged exported file, an old marker. No traceback; torch serves meanwhile; the export is retried."""

from __future__ import annotations

import errno
import logging

import pytest
from typer.testing import CliRunner

from mmsearch.models import onnx

pytestmark = pytest.mark.skipif(not onnx.available(), reason="onnxruntime is not installed")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "onnx"
    monkeypatch.setenv("MMSEARCH_ONNX_CACHE", str(root))
    monkeypatch.setattr(onnx, "_WARNED", set(), raising=False)
    return root


def open_engine(index):
    from mmsearch import SearchEngine

    return SearchEngine.open(index, device="cpu", runtime="onnx")


def image_folder(cache):
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def test_unwritable_cache_serves_with_torch_without_a_traceback(tiny_index, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MMSEARCH_ONNX_CACHE", str(blocker / "onnx"))  # cannot be created, even by root
    with caplog.at_level(logging.WARNING):
        engine = open_engine(tiny_index)
    assert engine.encoder.open().ort is None and len(engine.search(text="red shoes", k=3)) == 3
    assert "cannot write the ONNX cache" in caplog.text
    from mmsearch.cli import app

    res = CliRunner().invoke(app, ["query", "red shoes", "--index", str(tiny_index), "--no-server", "--json"])
    assert res.exit_code == 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_full_cache_leaves_no_permanent_marker(tiny_index, cache, monkeypatch):
    import torch

    real = torch.onnx.export

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    engine = open_engine(tiny_index)
    assert engine.encoder.open().ort is None
    assert not (image_folder(cache) / "image.failed").exists()
    monkeypatch.setattr(torch.onnx, "export", real)  # space again: the next open exports
    assert "image" in open_engine(tiny_index).encoder.open().ort.sessions


def test_truncated_export_is_detected_and_exported_again(tiny_index, cache):
    assert "image" in open_engine(tiny_index).encoder.open().ort.sessions
    path = image_folder(cache) / "image.onnx"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    assert not onnx.intact(path.parent, "image")
    assert "image" in open_engine(tiny_index).encoder.open().ort.sessions
    assert path.stat().st_size == size


def test_damaged_export_of_the_right_size_is_exported_again(tiny_index, cache):
    assert "image" in open_engine(tiny_index).encoder.open().ort.sessions
    path = image_folder(cache) / "image.onnx"
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)
    engine = open_engine(tiny_index)
    assert "image" in engine.encoder.open().ort.sessions and path.read_bytes() != b"\0" * size
    assert len(engine.search(text="red shoes", k=3)) == 3


def test_marker_of_an_older_version_is_retried(tiny_index, cache):
    open_engine(tiny_index)
    folder = image_folder(cache)
    (folder / "image.onnx").unlink()
    (folder / "image.failed").write_text("[Errno 28] No space left on device")  # what older versions wrote
    assert "image" in open_engine(tiny_index).encoder.open().ort.sessions
    assert not (folder / "image.failed").exists()
