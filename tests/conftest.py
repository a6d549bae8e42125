"""Shared fixtures: the sample catalog, a temp cache, and session-scoped models/indexes (built once)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = ROOT / "mmsearch" / "sample" / "catalog"
SAMPLE_QUERIES = ROOT / "mmsearch" / "sample" / "queries"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads that sleep instead of spinning while they wait: on a CPU other jobs share, torch's spinning
# threads took cores from each other (the default model's torch-path index build of the sample catalog:
# 19-23 s with spinning, 14 s passive, at load 5 on 2 cores). Results are the same; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the ONNX exports of the query towers (models/onnx.py) go to one cache per test session, never ~/.cache
os.environ.setdefault("MMSEARCH_ONNX_CACHE", __import__("tempfile").mkdtemp(prefix="mmsearch-test-cache-"))


@pytest.fixture(scope="session")
def sample_catalog() -> Path:
    return SAMPLE_CATALOG


@pytest.fixture(scope="session")
def sample_queries() -> Path:
    return SAMPLE_QUERIES


@pytest.fixture()
def small_catalog(tmp_path: Path) -> Path:
    """A writable copy of 12 sample images (with their catalog.jsonl rows) for tests that change files."""
    import json

    dst = tmp_path / "catalog"
    rows = [json.loads(line) for line in (SAMPLE_CATALOG / "catalog.jsonl").read_text().splitlines()][:12]
    for row in rows:
        (dst / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CATALOG / row["image"], dst / row["image"])
    (dst / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> Path:
    """The sample catalog indexed with the tiny model (seconds)."""
    from mmsearch import build_index

    out = tmp_path_factory.mktemp("tiny_index") / "index"
    build_index(SAMPLE_CATALOG, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def engine(tiny_index):
    """A SearchEngine on the tiny index, one per test module (a module may change its settings)."""
    from mmsearch import SearchEngine

    return SearchEngine.open(tiny_index, device="cpu")


@pytest.fixture(scope="session")
def default_index(tmp_path_factory) -> Path:
    """The sample catalog (69 images) indexed with the default pretrained model: the shipped ONNX graphs, no
    torch (measured 5.3-5.7 s at load 5 on 2 cores; it took minutes when the build went through torch on a
    busy machine). Only slow tests use it, so `pytest -m "not slow"` never builds it."""
    from mmsearch import build_index

    out = tmp_path_factory.mktemp("default_index") / "index"
    build_index(SAMPLE_CATALOG, out=out, model="default", device="cpu", num_workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def default_engine(default_index):
    from mmsearch import SearchEngine

    return SearchEngine.open(default_index, device="cpu")
