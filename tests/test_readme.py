"""The README's console examples print what the README shows (ids and order, scores to 2 decimals), run
against the sample catalog with the shipped default model (tests/helpers/readme_examples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import readme_examples


def test_parse_and_compare():
    blocks = readme_examples.parse("text\n```console\n$ mmsearch index x   # build\nIndexed 3 items in 1.2 s\n\n"
                                   "$ mmsearch query a\n[{\"score\": 0.7712, \"id\": \"a\"}, ...]\n```\n")
    (build, query), = blocks
    assert readme_examples.command_of(build) == "mmsearch index x" and build.expected == ["Indexed 3 items in 1.2 s"]
    assert readme_examples.matches(build.expected, ["Indexed 3 items in 9.9 s"], "")
    assert not readme_examples.matches(build.expected, ["Indexed 4 items in 1.2 s"], "")
    assert readme_examples.matches(query.expected, ['[{"score": 0.7749, "id": "a"}, {"score": 0.5, "id": "b"}]'], "")
    assert not readme_examples.matches(query.expected, ['[{"score": 0.7551, "id": "a"}]'], "")  # 0.76 != 0.77
    assert readme_examples.same("│ 0.845 │ bus │", "│ 0.846 │ bus │")  # a rounding edge is no drift
    assert not readme_examples.same("│ 0.845 │ bus │", "│ 0.845 │ taxi │")
    assert not readme_examples.matches(query.expected, ['[{"score": 0.7712, "id": "b"}]'], "")


@pytest.mark.slow
def test_readme_examples_print_what_the_readme_shows():
    problems = readme_examples.check()
    assert not problems, ("README examples drifted; if the new output is right, run "
                          "`python tests/helpers/readme_examples.py --update`:\n\n" + "\n\n".join(problems))


@pytest.mark.slow
def test_the_python_api_block_runs_as_written(tmp_path, monkeypatch):
    """The README's Python API block, executed in a folder where mmsearch/sample is the repository's."""
    import os

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("## Python API")) + len("```python\n")
    code = text[start:text.index("```", start)]
    (tmp_path / "mmsearch").mkdir()
    os.symlink(Path(__file__).resolve().parents[1] / "mmsearch" / "sample", tmp_path / "mmsearch" / "sample")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    assert scope["report"].indexed == 60 and scope["hits"]
