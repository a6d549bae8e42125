"""Issue 20 item 11: absurd text weights are refused, `info --check` does not trust the manifest's own
file list, and the results table never cuts an id."""

from __future__ import annotations

import io
import json
import math
import shutil
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.commands.output import hits_table
from mmsearch.errors import QueryError
from mmsearch.search.algebra import MAX_WEIGHT, Term, parse_terms, terms_of

runner = CliRunner()


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("w", [1e308, -1e308, math.inf, -math.inf, math.nan, 101, 1e-300, -1e-9])
def test_absurd_weights_are_refused(w):
    with pytest.raises(QueryError, match="weight"):
        Term("text", "x", w)
    with pytest.raises(QueryError, match="weight"):
        terms_of(text=[(w, "x"), "y"])


def test_huge_integer_and_long_digit_weights_are_refused():
    with pytest.raises(QueryError, match="weight"):
        terms_of(text=[(10 ** 400, "x")])
    with pytest.raises(QueryError, match="weight"):
        parse_terms(["9" * 400 + ":shoe"])


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_weight_is_finite_and_bounded_or_refused(w):
    try:
        t = Term("text", "x", w)
    except QueryError:
        assert not math.isfinite(w) or (w != 0 and not 0.001 <= abs(w) <= MAX_WEIGHT)
    else:
        assert t.weight == 0 or 0.001 <= abs(t.weight) <= MAX_WEIGHT


def test_cli_refuses_an_absurd_weight(tiny_index):
    res = runner.invoke(app, ["query", "1000:red shoe", "--index", str(tiny_index), "--no-server"])
    assert res.exit_code == 2 and "out of range" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["query", "100:red shoe", "--index", str(tiny_index), "--no-server", "--json"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------- info --check
@pytest.fixture()
def own_index(tiny_index, tmp_path):
    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst)
    return dst


def edit_manifest(index, edit):
    snap = index / "snapshots" / (index / "CURRENT").read_text().strip()
    m = json.loads((snap / "manifest.json").read_text())
    edit(m, snap)
    (snap / "manifest.json").write_text(json.dumps(m))
    return snap


def test_check_finds_a_file_dropped_from_the_manifests_list(own_index):
    def edit(m, snap):
        del m["files"]["image.faiss"]
        (snap / "image.faiss").write_bytes(b"garbage")  # damaged, and the list no longer mentions it

    edit_manifest(own_index, edit)
    res = runner.invoke(app, ["info", "--index", str(own_index)])
    assert res.exit_code == 1 and "image.faiss" in res.output and "not in the manifest" in res.output


def test_check_finds_an_emptied_list_and_a_missing_file(own_index):
    def edit(m, snap):
        m["files"] = {}
        (snap / "text.ids.npy").unlink()

    edit_manifest(own_index, edit)
    res = runner.invoke(app, ["info", "--index", str(own_index)])
    assert res.exit_code == 1, res.output
    assert "text.ids.npy" in res.output and "neither present" in res.output and "items.sqlite" in res.output


def test_check_of_an_intact_index_passes(own_index):
    res = runner.invoke(app, ["info", "--index", str(own_index)])
    assert res.exit_code == 0 and "intact" in res.output


# -------------------------------------------------------------------------------------------- table
@pytest.mark.parametrize("width", [80, 60, 40])
def test_table_never_cuts_an_id(width):
    ids = ["animals/friends_by_Aitzol_Bernaola_on_a_sunny_day.webp", "x.webp"]
    hits = [SimpleNamespace(rank=i + 1, score=0.5, id=v, title="a rather long title " * 3)
            for i, v in enumerate(ids)]
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(hits_table(hits, width))
    text = buf.getvalue()
    cells = "".join(line.split("│")[3].strip() for line in text.splitlines() if line.count("│") >= 4)
    assert ids[0] in cells  # every character, in order (folded over lines only when the id alone is too wide)
    assert "…" not in text
    if width >= len(ids[0]) + 19:
        assert ids[0] in text  # on one line
