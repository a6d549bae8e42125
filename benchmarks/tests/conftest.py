"""Tests of the benchmark scripts' own logic (metrics, corpus builders), kept apart from tests/: they import
the scripts in benchmarks/, which tests of the package never do. Run with the rest by `python -m pytest`."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other by file name, as when run from there

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# ONNX exports of a model these tests index with go to a scratch cache, never ~/.cache
os.environ.setdefault("MMSEARCH_ONNX_CACHE", tempfile.mkdtemp(prefix="mmsearch-bench-test-cache-"))
