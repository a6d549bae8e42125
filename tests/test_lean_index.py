"""Indexing without torch: the built-in models' shipped ONNX graphs encode images and texts (encode/lean.py),
opening only the towers the plan needs, and give the index the torch model would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmsearch.models import graphs, known

PROBE = """
import sys
from mmsearch import build_index
import mmsearch.encode.lean as lean
opened = []
real = lean.open_towers
def spy(fp, device, towers, runtime=None):
    opened.append(towers)
    return real(fp, device, towers, runtime)
lean.open_towers = spy
r = build_index(sys.argv[1], out=sys.argv[2], progress=False)
print("REPORT", r.added, r.encoded, "OPENED", opened, "TORCH", "torch" in sys.modules)
"""


def shipped_default() -> bool:
    rec = known.lookup("default")
    return rec is not None and graphs.entry_for(rec.fingerprint) is not None


pytestmark = pytest.mark.skipif(not shipped_default(), reason="no shipped graphs for default "
                                "(python -m mmsearch.models.shipped --write)")


def build(catalog, out, runtime=None):
    env = dict(os.environ)
    env.pop("MMSEARCH_RUNTIME", None)
    if runtime:
        env["MMSEARCH_RUNTIME"] = runtime
    res = subprocess.run([sys.executable, "-c", PROBE, str(catalog), str(out)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.split("REPORT", 1)[1].strip()


@pytest.mark.slow
def test_build_and_add_a_photo_without_torch(small_catalog, tmp_path):
    out = tmp_path / "index"
    printed = build(small_catalog, out)
    assert printed.startswith("12 12 OPENED [('image', 'text')]") and printed.endswith("TORCH False"), printed
    shutil.copy(small_catalog / "clothing/running_shoe.webp", small_catalog / "clothing/shoe_copy.webp")
    printed = build(small_catalog, out)  # no text for the new photo: the image tower alone
    assert printed == "1 1 OPENED [('image',)] TORCH False", printed


@pytest.mark.slow
def test_lean_index_equals_the_torch_index(small_catalog, tmp_path):
    from mmsearch.index.snapshot import read_manifest

    build(small_catalog, tmp_path / "lean")
    build(small_catalog, tmp_path / "torch", runtime="torch")
    a, b = read_manifest(tmp_path / "lean"), read_manifest(tmp_path / "torch")
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"]
    for ch, tol in (("image", 1e-3), ("visual", 1e-3), ("text", 1e-3)):  # float16 storage of the rows
        va = np.load(a["_snapshot"] + "/" + a["channels"][ch]["embeddings"]).astype(np.float32)
        vb = np.load(b["_snapshot"] + "/" + b["channels"][ch]["embeddings"]).astype(np.float32)
        cos = (va * vb).sum(1)
        assert cos.min() > 1 - tol, (ch, cos.min())


@pytest.mark.slow
def test_api_add_uses_the_shipped_graphs_too(small_catalog, sample_catalog, tmp_path):
    """engine.add / upsert_items on an index of a built-in model: no torch either."""
    out = tmp_path / "index"
    build(small_catalog, out)
    code = ("import sys; from mmsearch import upsert_items\n"
            "r = upsert_items(sys.argv[1], [{'id': 'new', 'image': sys.argv[2], 'title': 'a taxi'}])\n"
            "print('ADDED', r.added, r.encoded, 'TORCH', 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(out), str(sample_catalog / "vehicle/taxi.webp")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ADDED 1 1 TORCH False" in res.stdout, res.stdout
