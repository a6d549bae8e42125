"""kill -9 a real update at several points: the index must open, consistent, as the old or the new state."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsearch import SearchEngine, build_index
from mmsearch.index.snapshot import read_manifest
from mmsearch.index.store import ItemStore

UPDATE = ("import sys; from mmsearch import build_index; "
          "build_index(sys.argv[1], out=sys.argv[2], model='tiny', device='cpu', num_workers=0, progress=False)")
# crash points (mmsearch.fsutil.crash_point): after the FAISS files are written, before the snapshot
# folder is renamed into place, before CURRENT is swapped, and before old snapshots are deleted
POINTS = [("after-faiss", "old"), ("before-rename", "old"), ("before-current", "old"), ("before-gc", "new")]


def check_consistent(out: Path) -> set[str]:
    """Open the live index with checksums verified; every part must agree. Returns its item ids."""
    engine = SearchEngine.open(out, device="cpu", verify=True)
    m = read_manifest(out)
    with contextlib.closing(ItemStore.open(Path(m["_snapshot"]) / "items.sqlite")) as st:
        rows = st.all_rows()
    fids = np.array(sorted(r["fid"] for r in rows.values()))
    assert m["count"] == len(rows) == len(engine)
    img = engine.backend.channels["image"]
    assert img.index.ntotal == len(img.ids) == len(img.vectors) == len(rows)
    np.testing.assert_array_equal(img.ids, fids)
    hits = engine.search(text="shoe", k=len(rows))
    assert {h.id for h in hits} == set(rows)
    return set(rows)


@pytest.mark.slow
def test_sigkill_during_update_leaves_old_or_new_index(small_catalog: Path, tmp_path: Path, sample_catalog: Path):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    state_a = check_consistent(out)
    # state B of the catalog: two files removed, one added
    gone = sorted(small_catalog.rglob("*.webp"))[:2]
    stash = tmp_path / "stash"
    stash.mkdir()
    extra = small_catalog / "other" / "added.webp"
    extra_src = sorted(sample_catalog.glob("vehicle/*.webp"))[-1]
    state_b = (state_a - {p.relative_to(small_catalog).as_posix() for p in gone}) | {"other/added.webp"}

    def set_catalog(target: set[str]) -> None:
        for p in gone:
            if target is state_b and p.exists():
                shutil.move(p, stash / p.name)
            elif target is state_a and not p.exists():
                shutil.move(stash / p.name, p)
        if target is state_b:
            extra.parent.mkdir(exist_ok=True)
            shutil.copy(extra_src, extra)
        elif extra.exists():
            extra.unlink()

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    live = state_a
    for point, expect in POINTS:
        old, new = live, (state_b if live == state_a else state_a)
        set_catalog(new)
        proc = subprocess.run([sys.executable, "-c", UPDATE, str(small_catalog), str(out)],
                              env={**env, "MMSEARCH_CRASH_AT": point}, capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr.decode()[-2000:])
        live = check_consistent(out)
        assert live == (old if expect == "old" else new), point
    # a normal update after all these crashes completes and cleans up the half-written snapshots
    set_catalog(state_a if live == state_b else state_b)
    report = build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    assert check_consistent(out) == (state_a if live == state_b else state_b)
    assert report.encoded <= 2  # only the files that came back are encoded; kept embeddings are reused
    leftovers = [p.name for p in (out / "snapshots").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [] and len(list((out / "snapshots").iterdir())) == 2
