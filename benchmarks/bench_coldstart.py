"""Cold start: seconds from a fresh interpreter to a loaded model, this checkout against a git revision.

    python benchmarks/bench_coldstart.py --against 86aaabf --runs 3     # results/cold_start_cpu.md

Runs alternate (new, old, new, old ...) so both see the same machine load; each run is a new process
doing ``from mmsearch import create_model; create_model(name, device="cpu")``. Besides wall seconds it
reports the child's CPU seconds (user + sys), which a shared, busy machine inflates much less, and the
median of the per-pair ratios old / new. The old revision is
extracted with ``git archive`` into a temp folder and imported from there. Also prints where the time of
one new-code start goes (``python -X importtime``, top imports by cumulative time).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("import time; t = time.perf_counter(); import mmsearch; from mmsearch import create_model; "
        "i = time.perf_counter(); m = create_model({name!r}, device='cpu'); e = time.perf_counter(); "
        "print(round(i - t, 3), round(e - i, 3), round(e - t, 3), mmsearch.__file__)")


def one(src: Path, name: str) -> tuple[float, float, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([sys.executable, "-c", CODE.format(name=name)], cwd=src, capture_output=True, text=True,
                         env={"PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    imp, load, total, where = res.stdout.split()[-4:]
    assert where.startswith(str(src)), where  # the code under test, not an installed copy
    return float(imp), float(load), float(total), round(cpu, 3)


def top_imports(name: str, n: int = 12) -> list[str]:
    res = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          f"from mmsearch import create_model; create_model({name!r}, device='cpu')"],
                         cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    rows = []
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, mod = line.split("|")
            if cum.strip().isdigit():
                rows.append((int(cum), mod.rstrip()))
    return [f"{c / 1e6:6.2f} s  {m}" for c, m in sorted(rows, reverse=True)[:n]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="86aaabf", help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["default", "tiny"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_start_cpu.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "archive", args.against, "mmsearch"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "x", "-C", str(old)], input=archive.stdout, check=True)
        lines = [f"# Cold start (fresh process to loaded model, CPU), this branch vs {args.against}", "",
                 f"Command: `python benchmarks/bench_coldstart.py --against {args.against} --runs {args.runs}`  ",
                 "Runs alternate new/old under the same load; seconds as import mmsearch / create_model / total.", "",
                 "| model | code | runs (total s) | median total s | median import s | median create_model s "
                 "| median CPU s | old / new (median of pairs: wall, CPU) |",
                 "|---|---|---|---|---|---|---|---|"]
        for name in args.models:
            times: dict[str, list[tuple[float, float, float, float]]] = {"this branch": [], args.against: []}
            for _ in range(args.runs):
                times["this branch"].append(one(ROOT, name))
                times[args.against].append(one(old, name))
            pairs = list(zip(times[args.against], times["this branch"]))
            wall = statistics.median(o[2] / n[2] for o, n in pairs)
            cpu = statistics.median(o[3] / n[3] for o, n in pairs)
            for label, ts in times.items():
                med = [statistics.median(t[i] for t in ts) for i in range(4)]
                ratio = f"{wall:.2f}x, {cpu:.2f}x" if label == "this branch" else ""
                lines.append(f"| {name} | {label} | {', '.join(str(t[2]) for t in ts)} | {med[2]:.2f} | {med[0]:.2f} "
                             f"| {med[1]:.2f} | {med[3]:.2f} | {ratio} |")
                print(lines[-1], flush=True)
    lines += ["", "Where one start of `default` goes now (`python -X importtime`, cumulative, top 12):", "", "```"]
    lines += top_imports("default") + ["```"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-16:]))


if __name__ == "__main__":
    main()
