"""An update that finds nothing to do, as a user runs it: fresh processes, the sample catalog, the default model.

    python benchmarks/bench_noop.py                     # -> results/noop_cpu.{json,md}
    python benchmarks/bench_noop.py --rounds 5 --catalog DIR

Measured (median of ``--rounds`` fresh processes each, interleaved):
- ``python -c pass`` (the interpreter alone) and ``python -c "import mmsearch.cli"``;
- ``mmsearch index CATALOG -i OUT`` on an unchanged catalog (the no-op update), wall time, and whether
  torch / transformers / onnxruntime were imported;
- the same after touching every file (mtime changed, same content: every file hashed again, still no-op);
- ``mmsearch info`` / ``list`` / ``export`` on the index;
- per phase, in one process (no-op update): import, catalog scan, stat check + hashing, live state and
  plan, commit decision.
The index is built once before timing (that build, and one update adding a photo, are reported too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "mmsearch" / "sample" / "catalog"

TOUCHED = "index (no-op, every file touched: all re-hashed)"

PROBE = r"""
import atexit, sys, time
t0 = time.perf_counter()
def report():
    mods = {m: m in sys.modules for m in ("torch", "transformers", "onnxruntime")}
    print("PROBE " + __import__("json").dumps({"seconds": time.perf_counter() - t0, **mods}), file=sys.stderr)
atexit.register(report)
from mmsearch.cli import main
sys.argv = ["mmsearch"] + sys.argv[1:]
main()
"""

PHASES = r"""
import json, sys, time
t = [time.perf_counter()]
marks = {}
def mark(name):
    now = time.perf_counter(); marks[name] = round(now - t[0], 4); t[0] = now
from mmsearch.index.build import index_model
from mmsearch.index.update import open_update
from mmsearch.index.plan import plan_update
from mmsearch.index.statcache import StatCache
from mmsearch.index.snapshot import writer_lock
from mmsearch.catalog.scan import scan_catalog
from pathlib import Path
mark("import")
catalog, out = Path(sys.argv[1]), Path(sys.argv[2])
items = scan_catalog(catalog, exclude=[out])
mark("scan catalog")
with writer_lock(out, 0):
    mark("writer lock")
    stats = StatCache.open(out)
    hashes = stats.hash_items(items)
    mark("stat check + hashing")
    ctx = open_update(out, index_model(out), "auto", False, lazy=True)
    live = ctx.state.manifest
    plan = plan_update(items, ctx.previous, hashes, ctx.next_fid, skipped=live.get("skipped"),
                       keep=live.get("api_items", []))
    mark("live state + model record + plan")
    work = (len(plan.images), len(plan.texts({})), len(plan.removed))
    mark("decide")
print(json.dumps({"phases": marks, "work": work, "torch": "torch" in sys.modules}))
"""


CPU: dict[str, list[float]] = {}  # command -> CPU seconds (user + sys) of its process, per run


def run(cmd: list[str], env: dict, name: str = "") -> tuple[float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name:
        CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    probe = {}
    for line in res.stderr.splitlines():
        if line.startswith("PROBE "):
            probe = json.loads(line[6:])
    return wall, probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", type=Path, default=SAMPLE)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "noop_cpu")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    catalog = work / "catalog"
    shutil.copytree(args.catalog, catalog)
    index = work / "index"
    mm = [py, "-c", PROBE]
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "catalog": str(args.catalog), "files": sum(1 for p in catalog.rglob("*") if p.is_file()),
                     "rounds": args.rounds, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    first, probe = run(mm + ["index", str(catalog), "-i", str(index)], env)
    results["first_build"] = {"wall_s": round(first, 3), **probe}
    variants = {
        "python -c pass": [py, "-c", "pass"],
        "import mmsearch.cli": [py, "-c", "import mmsearch.cli"],
        "index (no-op)": mm + ["index", str(catalog), "-i", str(index)],
        "info": mm + ["info", "-i", str(index)],
        "list": mm + ["list", "-i", str(index)],
        "export": mm + ["export", "-i", str(index), "-o", str(work / "export")],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    imports: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, cmd in variants.items():
            wall, probe = run(cmd, env, name)
            times[name].append(wall)
            if probe:
                imports[name] = {k: v for k, v in probe.items() if k != "seconds"}
    touched = []
    for _ in range(args.rounds):
        now = time.time_ns()
        for p in catalog.rglob("*"):
            if p.is_file():
                os.utime(p, ns=(now, now))
        touched.append(run(mm + ["index", str(catalog), "-i", str(index)], env, TOUCHED)[0])
    times[TOUCHED] = touched
    res = subprocess.run([py, "-c", PHASES, str(catalog), str(index)], capture_output=True, text=True, env=env)
    results["phases_noop"] = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.copy(args.catalog / "vehicle" / "taxi.webp", catalog / "vehicle" / "taxi2.webp")
    add, probe = run(mm + ["index", str(catalog), "-i", str(index)], env)
    results["add_one_photo"] = {"wall_s": round(add, 3), **{k: v for k, v in probe.items() if k != "seconds"}}
    results["median_wall_s"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    results["max_wall_s"] = {k: round(max(v), 3) for k, v in times.items()}
    results["imports"] = imports
    results["median_cpu_s"] = {k: round(statistics.median(v), 3) for k, v in CPU.items()}
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# No-op update and read-only commands ({results['date']})", "",
             f"`python benchmarks/bench_noop.py --rounds {args.rounds}`: {results['files']} files "
             f"({args.catalog.name}), default model, {results['cpus']} CPUs, load {results['load_before']:.1f} "
             f"before the run (machine shared with training jobs); fresh processes, interleaved; seconds.",
             "CPU = user + sys seconds of the process (what the command costs when the machine is not shared).",
             "", "| command | wall median | wall max | CPU median | torch imported |", "|---|---|---|---|---|"]
    for k in times:
        imp = imports.get(k, {}).get("torch")
        lines.append(f"| {k} | {results['median_wall_s'][k]:.3f} | {results['max_wall_s'][k]:.3f} | "
                     f"{results['median_cpu_s'][k]:.3f} | {'-' if imp is None else ('yes' if imp else 'no')} |")
    ph = results["phases_noop"]
    lines += ["", "No-op update, per phase in one process (s): "
              + ", ".join(f"{k} {v:.3f}" for k, v in ph["phases"].items())
              + f"; work found (images, texts, removals): {tuple(ph['work'])}; torch imported: {ph['torch']}.",
              "", f"First build (60 photos, model loaded): {results['first_build']['wall_s']:.1f} s. "
              f"Adding one photo: {results['add_one_photo']['wall_s']:.1f} s (torch imported: "
              f"{results['add_one_photo'].get('torch')}, transformers: {results['add_one_photo'].get('transformers')})."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
