"""An update that finds nothing to do is instant: files re-checked by size + mtime (hashed only when those
changed), no model loaded, no torch imported (index/statcache.py, index/modelref.py, models/known.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import mmsearch.index.build as build_mod
import mmsearch.index.plan as plan_mod
from mmsearch import build_index

TINY = {"model": "tiny", "device": "cpu", "num_workers": 0, "progress": False}

PROBE = """
import sys
from mmsearch.cli import main
sys.argv = ["mmsearch"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
print("TORCH", "torch" in sys.modules, "TRANSFORMERS", "transformers" in sys.modules)
"""


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MMSEARCH_CACHE", str(folder))
    return folder


def run_cli(*args: str) -> str:
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.slow
def test_noop_update_imports_no_torch_and_loads_no_model(small_catalog, tmp_path, cache, monkeypatch):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)  # loads tiny once: its fingerprint is recorded
    assert (cache / "fingerprints.json").is_file()
    for cmd in (["index", str(small_catalog), "-i", str(out)], ["info", "-i", str(out)], ["list", "-i", str(out)],
                ["export", "-i", str(out), "-o", str(tmp_path / "exported")], ["remove", "-i", str(out), "clothing/coat.webp"]):
        printed = run_cli(*cmd)
        assert "TORCH False TRANSFORMERS False" in printed, (cmd, printed)
    printed = run_cli("index", str(small_catalog), "-i", str(out))  # the removed file comes back: encoded
    assert "1 added" in printed and "TORCH True" in printed

    # in-process: the model is never created on a no-op
    import mmsearch.models.factory as factory

    def no_model(*a, **kw):
        raise AssertionError("a no-op update created the model")

    monkeypatch.setattr(factory, "create_model", no_model)
    report = build_index(small_catalog, out=out)
    assert (report.encoded, report.added, report.updated, report.removed) == (0, 0, 0, 0)


def test_touched_file_is_hashed_again_and_stays_a_noop(small_catalog, tmp_path, cache, monkeypatch):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)
    hashed: list[str] = []
    real = plan_mod.content_sha256

    def spy(path):
        hashed.append(str(path))
        return real(path)

    monkeypatch.setattr(plan_mod, "content_sha256", spy)
    report = build_index(small_catalog, out=out, **TINY)
    assert hashed == [] and report.encoded == 0  # nothing changed: nothing hashed

    shoe = small_catalog / "clothing/running_shoe.webp"
    st = shoe.stat()
    os.utime(shoe, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = build_index(small_catalog, out=out, **TINY)
    assert hashed == [str(shoe)]  # only the touched file
    assert (report.encoded, report.updated, report.unchanged) == (0, 0, 12)


def test_changed_file_is_encoded_again(small_catalog, tmp_path, cache):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)
    shutil.copy(small_catalog / "clothing/running_shoe.webp", small_catalog / "clothing/coat.webp")
    report = build_index(small_catalog, out=out, **TINY)
    assert (report.encoded, report.updated) == (1, 1)


def test_a_wrong_fingerprint_record_is_corrected_not_trusted(small_catalog, tmp_path, cache, monkeypatch):
    from mmsearch.models import known

    monkeypatch.setattr(known, "shipped_records_path", lambda: tmp_path / "no-shipped-records.json")
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)
    records = json.loads((cache / "fingerprints.json").read_text())
    for rec in records.values():
        rec["fingerprint"] = "0" * 16  # as if tiny's weights had changed since it was recorded
    (cache / "fingerprints.json").write_text(json.dumps(records))
    report = build_index(small_catalog, out=out, **TINY)  # looks like another model: loads it, finds out
    assert (report.encoded, report.unchanged) == (0, 12)
    assert "0" * 16 not in (cache / "fingerprints.json").read_text()


def test_statcache_is_only_a_cache(small_catalog, tmp_path, cache):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)
    (out / ".filestat.json").write_text("{not json")
    assert build_index(small_catalog, out=out, **TINY).unchanged == 12
    assert json.loads((out / ".filestat.json").read_text())["version"] == 1
    assert build_mod.ENCODE_DIR  # the build's other side files are unaffected


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys, tmp_path):
    import sys

    import mmsearch.cli as cli
    from mmsearch.index import snapshot

    def no_torch(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(snapshot, "read_manifest", no_torch)  # a command that turns out to need torch
    monkeypatch.setattr(sys, "argv", ["mmsearch", "info", "-i", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    assert capsys.readouterr().err.strip() == ("Error: this needs PyTorch (torch is not installed): "
                                               "pip install 'mmsearch[torch]'")
