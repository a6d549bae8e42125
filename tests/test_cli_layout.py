"""The CLI's shape (issue 24): one error boundary, every option defined once, each command a plain function
in its own module, registered by cli.py."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from mmsearch.cli import app

PKG = Path(__file__).resolve().parents[1] / "mmsearch"
CLI_FILES = [PKG / "cli.py", *sorted((PKG / "commands").glob("*.py"))]


def test_no_command_catches_the_domain_errors_itself():
    for path in CLI_FILES:
        if path.name == "boundary.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"except\s*\(?[^:\n]*MMSearchError", text), f"{path.name} catches MMSearchError"
        assert "noqa: E402" not in text, path.name


def test_options_are_defined_only_in_options_py():
    for path in CLI_FILES:
        if path.name != "options.py":
            text = path.read_text(encoding="utf-8")
            assert "typer.Option(" not in text and "typer.Argument(" not in text, path.name


def test_every_command_is_a_module_level_function_of_commands():
    from typer.main import get_command

    group = get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        fn = cmd.callback
        fn = getattr(fn, "__wrapped__", fn)
        assert fn.__module__.startswith("mmsearch.commands."), (name, fn.__module__)
        assert "<locals>" not in fn.__qualname__, (name, fn.__qualname__)


def test_the_boundary_gives_one_line_and_the_error_exit_code(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["info", "-i", str(tmp_path / "missing")])  # IndexNotFoundError: exit 1
    assert missing.exit_code == 1 and missing.output.startswith("Error: no index at ")
    assert len(missing.output.strip().splitlines()) == 1 and missing.exception.__class__ is SystemExit
    malformed = runner.invoke(app, ["query", "-i", str(tmp_path), "--where", "price<<", "x"])  # QueryError: 2
    assert malformed.exit_code == 2 and malformed.output.startswith("Error: ")
    assert len(malformed.output.strip().splitlines()) == 1
