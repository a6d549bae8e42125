"""Run the README's console examples and compare what they print with what the README shows.

    python tests/helpers/readme_examples.py            # check: exit 1 and a diff per example that drifted
    python tests/helpers/readme_examples.py --update   # rewrite the README's outputs with what the commands print

Every ```console block (and every ``` block that starts with a ``$`` line) is a sequence of ``$ command`` lines, each followed by the output the README shows.
The commands run in order, in a scratch folder where ``mmsearch/sample`` is the repository's sample (so
``mmsearch index mmsearch/sample/catalog`` builds ``./index`` there), with the shipped default model.
Compared: ids and their order, scores to 2 decimals, counts; not compared: timings, rates, absolute paths
(shown as ``...``), and output the README elides with ``...``. Skipped: ``mmsearch serve`` (a server) and
commands needing a tool this machine lacks (``jq``). ``tests/test_readme.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@dataclass
class Example:
    command: str
    expected: list[str]
    line: int  # 1-based line of the command in the README
    actual: list[str] = field(default_factory=list)


def parse(text: str) -> list[list[Example]]:
    """The README's console blocks, each a list of examples."""
    blocks: list[list[Example]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opens = lines[i].strip() in ("```console", "```") and i + 1 < len(lines) and lines[i + 1].startswith("$ ")
        if opens:
            block: list[Example] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                if lines[i].startswith("$ "):
                    block.append(Example(lines[i][2:], [], i + 1))
                elif block:
                    block[-1].expected.append(lines[i])
                i += 1
            for ex in block:
                while ex.expected and not ex.expected[-1].strip():
                    ex.expected.pop()
            blocks.append(block)
        i += 1
    return blocks


def command_of(ex: Example) -> str:
    """The shell command without its trailing ``# comment``."""
    return re.sub(r"\s+#[^'\"]*$", "", ex.command).strip()


def skip_reason(ex: Example, block: list[Example] | None = None) -> str | None:
    cmd = command_of(ex)
    if block and any(not command_of(e).startswith("mmsearch ") for e in block):
        return "its block prepares files by hand"
    if cmd.startswith("mmsearch serve"):
        return "starts a server"
    if "| jq" in cmd and shutil.which("jq") is None:
        return "needs jq"
    return None


NUMBER = re.compile(r"-?\d+\.\d+")


def normalise(lines: list[str], scratch: str = "") -> list[str]:
    """What is compared: timings and rates masked, absolute paths elided (numbers: see ``same``)."""
    out = []
    for line in lines:
        line = (line.replace(scratch, "...") if scratch else line).replace("…", "...")
        line = re.sub(r" in \d+(\.\d+)? s\b", " in T s", line)
        line = re.sub(r"\(\d+(\.\d+)? images/s\)", "(R images/s)", line)
        line = re.sub(r'"path":\s*"[^"]*?/catalog/', '"path": ".../catalog/', line)
        line = re.sub(r"[━─═]+", "─", line)  # table widths follow the longest cell
        line = re.sub(r"\s+", " ", line).strip()
        out.append(line)
    return out


SCORE_TOLERANCE = 0.01  # scores to 2 decimals, without a rounding edge (0.845 vs 0.846 across runtimes)


def same(expected: str, actual: str, prefix: bool = False) -> bool:
    """The same text between the numbers, and each number within SCORE_TOLERANCE; with ``prefix``, ``actual``
    may go on after ``expected``."""
    te, ta = NUMBER.split(expected), NUMBER.split(actual)
    ne, na = NUMBER.findall(expected), NUMBER.findall(actual)
    if prefix:
        n = len(te)
        if len(ta) < n or ta[:n - 1] != te[:n - 1] or not ta[n - 1].startswith(te[n - 1]):
            return False
    elif te != ta:
        return False
    return all(abs(float(x) - float(y)) <= SCORE_TOLERANCE + 1e-9 for x, y in zip(ne, na))


def matches(expected: list[str], actual: list[str], scratch: str) -> bool:
    """Line by line; an expected line ending in ``...`` (JSON the README shortens) matches by prefix."""
    exp, act = normalise(expected, scratch), normalise(actual, scratch)
    if len(act) < len(exp):
        return False
    for e, a in zip(exp, act):
        stem = e[:-len(", ...]")] if e.endswith(", ...]") else e[:-3] if e.endswith("...") else None
        if not (same(e, a) if stem is None else same(stem, a, prefix=True)):
            return False
    return len(act) == len(exp) or any(e.endswith("...]") or e.endswith("...") for e in exp)


def shown_line(expected: str, actual: str, scratch: str) -> str:
    """What ``--update`` writes: absolute paths shortened to ``...``, and a JSON list the README shortens
    (``[first, ...]``) shortened the same way."""
    line = actual.replace(scratch, "...").replace(str(ROOT / "mmsearch" / "sample"), "...")
    if expected.endswith(", ...]") and line.startswith("["):
        try:
            items = json.loads(line)
            return "[" + json.dumps(items[0], ensure_ascii=False) + ", ...]"
        except (ValueError, IndexError, TypeError):
            return line
    return line


def run_all(blocks: list[list[Example]], scratch: Path) -> None:
    (scratch / "mmsearch").mkdir()
    os.symlink(ROOT / "mmsearch" / "sample", scratch / "mmsearch" / "sample")
    bin_dir = scratch / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "mmsearch"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m mmsearch \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="120", NO_COLOR="1",
               TERM="dumb")
    env.pop("MMSEARCH_RUNTIME", None)
    for block in blocks:
        for ex in block:
            if skip_reason(ex, block):
                continue
            res = subprocess.run(["bash", "-c", command_of(ex)], cwd=scratch, env=env, capture_output=True, text=True,
                                 timeout=900)
            ex.actual = (res.stdout + (res.stderr if res.returncode else "")).rstrip("\n").splitlines()


def check(update: bool = False, readme: Path = README) -> list[str]:
    """Run every example; -> one message per example whose output drifted (``update``: rewrite them)."""
    text = readme.read_text()
    blocks = parse(text)
    scratch = Path(tempfile.mkdtemp(prefix="mmsearch-readme-"))
    problems = []
    try:
        run_all(blocks, scratch)
        lines = text.splitlines()
        for block in reversed(blocks):
            for ex in reversed(block):
                if skip_reason(ex, block) or matches(ex.expected, ex.actual, str(scratch)):
                    continue
                problems.append(f"README.md:{ex.line}: $ {ex.command}\n  expected: "
                                + "\n            ".join(ex.expected) + "\n  printed:  "
                                + "\n            ".join(ex.actual))
                if update:
                    shown = [shown_line(e, a, str(scratch)) for e, a in zip(ex.expected + [""] * len(ex.actual),
                                                                          ex.actual)]
                    start = ex.line  # output lines follow the command
                    lines[start:start + len(ex.expected)] = shown
        if update and problems:
            readme.write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return list(reversed(problems))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="rewrite the README outputs that drifted")
    args = ap.parse_args()
    problems = check(update=args.update)
    for p in problems:
        print(p, end="\n\n")
    print(f"{len(problems)} example(s) {'rewritten' if args.update else 'drifted'}" if problems
          else "every README example prints what the README shows")
    return 1 if problems and not args.update else 0


if __name__ == "__main__":
    sys.exit(main())
