"""docs/configuration.md lists every config dataclass, named config folder and environment variable the code
reads, and nothing that is gone: a new setting cannot appear without its line there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
PREFIX = "MMSEARCH" + "_"  # spelt in two parts so this file does not name a variable itself
VARIABLE = re.compile(rf"\b{PREFIX}[A-Z0-9_]*[A-Z0-9]\b")
CONFIG_CLASS = re.compile(r"(Cfg|Options)$")


def variables_in(text: str) -> set[str]:
    return set(VARIABLE.findall(text))


def code_files() -> list[Path]:
    files = [p for folder in ("mmsearch", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    return [p for p in files + [ROOT / ".ci" / "run", ROOT / "pyproject.toml"] if p.is_file()]


def config_classes() -> dict[str, Path]:
    """Every dataclass in the package named ...Cfg or ...Options."""
    found = {}
    for path in (ROOT / "mmsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and CONFIG_CLASS.search(node.name) and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                found[node.name] = path.relative_to(ROOT)
    return found


def test_the_variable_pattern_finds_a_new_variable():
    assert variables_in(f'os.environ.get("{PREFIX}NEW_THING", "1")  # {PREFIX}X') == {f"{PREFIX}NEW_THING",
                                                                                      f"{PREFIX}X"}
    assert f"{PREFIX}NEW_THING" not in variables_in(DOC.read_text(encoding="utf-8"))


def test_every_environment_variable_is_documented_and_every_documented_one_is_read():
    used: dict[str, list[str]] = {}
    for path in code_files():
        for name in variables_in(path.read_text(encoding="utf-8", errors="replace")):
            used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    listed = variables_in(DOC.read_text(encoding="utf-8"))
    missing = {name: where for name, where in used.items() if name not in listed}
    assert not missing, f"add these to {DOC.relative_to(ROOT)} (meaning and default): {missing}"
    assert not listed - set(used), f"{DOC.relative_to(ROOT)} lists variables no code reads: {listed - set(used)}"


def test_every_config_dataclass_and_named_config_folder_is_documented():
    doc = DOC.read_text(encoding="utf-8")
    classes = config_classes()
    assert {"ModelCfg", "TrainCfg", "EncodeCfg", "IndexCfg", "BuildOptions", "ServeCfg"} <= set(classes)
    missing = {name: str(path) for name, path in classes.items()
               if f"`{name}`" not in doc or f"`{path.as_posix()}`" not in doc}
    assert not missing, f"add these dataclasses (and their module) to {DOC.relative_to(ROOT)}: {missing}"
    folders = {p.parent.relative_to(ROOT).as_posix() + "/" for p in (ROOT / "mmsearch").rglob("configs/*.json")}
    assert folders and all(f"`{f}`" in doc for f in folders), folders
