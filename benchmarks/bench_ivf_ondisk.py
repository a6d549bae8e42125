"""The IVF add + merge phase of a distributed index build, apart from encoding: 1 vs N processes, and
rank 0's memory when merging the inverted lists on disk vs in RAM.

Precomputed synthetic unit vectors (float16, as the index stores them; FAISS's add cost does not
depend on the values) play the role of one channel's <channel>.f16.npy. The code is mmsearch's own
(mmsearch/index/ondisk.py): train once on a sample, then ``run_parts`` under ``python -m torch.distributed.run``
(part i -> rank i % N, each part added to a copy of the trained index and written as shard-<i>.ivf),
then, each in a fresh process so its peak memory is its own:

    on-disk merge   faiss.contrib.ondisk.merge_ondisk into one .ivfdata (what rank 0 does now)
    in-RAM merge    every part read and merge_from()'d into one in-RAM index, then written
    today's path    one process adds every vector to the trained index in RAM (the writer before this)

    nice -n 10 python benchmarks/bench_ivf_ondisk.py --n 200000 --dim 384 --nlist 1024 --train 20000

Peak memory is sampled from /proc/self/status every 2 ms: RssAnon (heap: what the process needs)
and the high-water mark VmHWM (which also counts mapped file pages the kernel may drop at any
time). Writes benchmarks/results/ivf_ondisk.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peaks of RssAnon (heap) and RssFile (mapped file pages, which the kernel may drop) sampled in a
    thread, and VmHWM at the end (KiB)."""

    def __enter__(self):
        self.start = {f: status_kb(f) for f in ("RssAnon", "RssFile")}
        self.peak = dict(self.start)
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                for f in self.peak:
                    self.peak[f] = max(self.peak[f], status_kb(f))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for f in self.peak:
            self.peak[f] = max(self.peak[f], status_kb(f))
        self.hwm = status_kb("VmHWM")

    def row(self) -> dict:
        mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
        return {"rss_anon_growth_mib": mib(self.peak["RssAnon"] - self.start["RssAnon"]),
                "rss_file_growth_mib": mib(self.peak["RssFile"] - self.start["RssFile"]),
                "rss_anon_peak_mib": mib(self.peak["RssAnon"]), "vm_hwm_mib": mib(self.hwm)}


def task_for(work: Path, parts: int):
    import numpy as np

    from mmsearch.index.ondisk import AddTask
    from mmsearch.ranges import even_ranges

    key = json.loads((work / "trained.json").read_text())["key"]
    n = len(np.load(work / "image.ids.npy", mmap_mode="r"))
    return AddTask(channel="image", work=str(work), vectors=str(work / "image.f16.npy"), ids=str(work / "image.ids.npy"),
                   parts=[list(r) for r in even_ranges(n, parts)], trained_key=key)


# ---------------------------------------------------------------------------------------- phases
def prepare(work: Path, args) -> float:
    """Vectors + ids on disk, and the trained empty index (timed: the same for every configuration)."""
    import numpy as np

    from mmsearch.index.ann import IndexSpec
    from mmsearch.index.ondisk import train_once

    rng = np.random.default_rng(0)
    vecs = np.lib.format.open_memmap(work / "image.f16.npy", mode="w+", dtype=np.float16, shape=(args.n, args.dim))
    for s in range(0, args.n, 50_000):
        x = rng.standard_normal((min(50_000, args.n - s), args.dim)).astype(np.float32)
        vecs[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    vecs.flush()
    np.save(work / "image.ids.npy", np.arange(args.n, dtype=np.int64))
    t0 = time.perf_counter()
    train_once(IndexSpec("ivf", f"IVF{args.nlist},Flat"), np.load(work / "image.f16.npy", mmap_mode="r"), work,
               train_sample=args.train)
    return time.perf_counter() - t0


def add_worker(args) -> None:
    """One rank of the add phase: its parts of the task, then a gather of the statuses."""
    import faiss
    import torch

    from mmsearch.dist.env import DistEnv, all_gather_objects, process_group
    from mmsearch.index.ondisk import run_parts

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    env = DistEnv.from_env()
    with process_group(env, torch.device("cpu"), backend="gloo"):
        task = task_for(args.work, args.parts)
        all_gather_objects(None, env, "starting")  # every rank has started: time the add phase alone
        t0 = time.perf_counter()
        status = run_parts(task, env.rank, env.world_size)
        statuses = all_gather_objects(status.__dict__, env, "adding")
        if env.is_main:
            Path(args.result).write_text(json.dumps({"seconds": time.perf_counter() - t0, "ranks": statuses}))


def merge_worker(args) -> None:
    """One merge in a fresh process; writes its time and peak memory."""
    import faiss

    from mmsearch.index import annbuild, ondisk
    from mmsearch.index.quiet import quiet_stdout

    faiss.omp_set_num_threads(1)
    task = task_for(args.work, args.parts)
    parts = [str(ondisk.part_paths(task, i)[0]) for i in range(len(task.parts))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        index = faiss.read_index(str(args.work / "trained.faiss"))
        if args.merge == "ondisk":
            from faiss.contrib.ondisk import merge_ondisk

            with quiet_stdout():
                merge_ondisk(index, parts, str(out / "image.ivfdata"))
            ondisk.write(index, out / "image.faiss")
        elif args.merge == "ram":
            for p in parts:  # merge_from empties each part, so parts are read into RAM, one at a time
                part = faiss.read_index(p)
                index.merge_from(part, 0)
                del part
            faiss.write_index(index, str(out / "image.faiss"))
        else:  # today's path: one process adds every vector
            import numpy as np

            annbuild.add(index, np.load(args.work / "image.f16.npy", mmap_mode="r"), np.load(args.work / "image.ids.npy"))
            faiss.write_index(index, str(out / "image.faiss"))
        seconds = time.perf_counter() - t0
        ntotal = index.ntotal
        del index
    size = sum(f.stat().st_size for f in out.iterdir())
    Path(args.result).write_text(json.dumps({"seconds": seconds, "ntotal": ntotal, "bytes": size, **mem.row()}))


# ---------------------------------------------------------------------------------------- driver
def run(cmd: list[str], threads: int) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                                   "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})


def clear_parts(work: Path) -> None:
    for p in work.glob("shard-*"):
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["add", "merge"], help=argparse.SUPPRESS)
    ap.add_argument("--merge", choices=["ondisk", "ram", "today"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=200_000, help="vectors")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--train", type=int, default=20_000, help="training sample")
    ap.add_argument("--parts", type=int, default=8, help="shard-<i>.ivf parts")
    ap.add_argument("--procs", type=int, default=2, help="the N compared with 1 process")
    ap.add_argument("--port", type=int, default=29547)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "ivf_ondisk")
    args = ap.parse_args()
    if args.worker == "add":
        return add_worker(args)
    if args.worker == "merge":
        return merge_worker(args)

    work = Path(tempfile.mkdtemp(prefix="bench_ivf_ondisk_"))
    me = [sys.executable, __file__, "--work", str(work), "--parts", str(args.parts)]
    try:
        train_s = prepare(work, args)
        print(f"trained IVF{args.nlist} on {args.train} vectors in {train_s:.1f} s", flush=True)
        adds = []
        for nproc, threads in [(1, 1), (args.procs, 1), (1, args.procs)]:
            clear_parts(work)
            res = work / "add.json"
            run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
                 str(args.port), *me[1:], "--worker", "add", "--result", str(res)], threads)
            r = json.loads(res.read_text())
            adds.append({"config": f"{nproc} process{'es' if nproc > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                         "processes": nproc, "threads": threads, "add_s": round(r["seconds"], 2),
                         "vectors_per_s": round(args.n / r["seconds"]),
                         "per_rank_s": [x["seconds"] for x in r["ranks"]]})
            print(adds[-1], flush=True)
        base = adds[0]["vectors_per_s"]
        for a in adds:
            a["speedup_vs_1x1"] = round(a["vectors_per_s"] / base, 2)
        merges = []
        for kind, label in [("ondisk", "on-disk merge (merge_ondisk -> .ivfdata)"),
                            ("ram", "in-RAM merge (merge_from, then write)"),
                            ("today", "today's path: 1 process adds all in RAM")]:
            res, out = work / f"merge-{kind}.json", work / f"out-{kind}"
            run([*me, "--worker", "merge", "--merge", kind, "--out", str(out), "--result", str(res)], 1)
            r = json.loads(res.read_text())
            assert r["ntotal"] == args.n, r
            merges.append({"merge": label, "seconds": round(r["seconds"], 2),
                           **{k: r[k] for k in ("rss_anon_growth_mib", "rss_file_growth_mib", "rss_anon_peak_mib",
                                                "vm_hwm_mib")},
                           "files_mib": round(r["bytes"] / 2**20, 1)})
            shutil.rmtree(out)
            print(merges[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cmd = " ".join(["nice -n 10 python benchmarks/bench_ivf_ondisk.py"] + sys.argv[1:])
    meta = {"command": cmd, "n": args.n, "dim": args.dim, "factory": f"IVF{args.nlist},Flat", "train_sample": args.train,
            "train_s": round(train_s, 2), "parts": args.parts, "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(), "python": platform.python_version(),
            "note": "2-core machine shared with other jobs; configurations ran one after another in one run"}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "add": adds, "merge": merges}, indent=2) + "\n")
    lines = [f"# IVF add + merge phase: 1 vs {args.procs} processes, on-disk vs in-RAM merge", "", f"`{cmd}`", "",
             f"{args.n:,} synthetic unit vectors of {args.dim} dims (float16 on disk), `IVF{args.nlist},Flat` trained "
             f"once on {args.train:,} of them in {train_s:.1f} s, added in {args.parts} parts; {os.cpu_count()} cores "
             f"shared with other jobs (load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}).", "",
             "**Add phase** (every rank adds its parts to a copy of the trained index and writes shard-<i>.ivf):", "",
             "| configuration | add s | vectors/s | per-rank s | speed-up vs 1x1 |", "|---|---|---|---|---|"]
    lines += [f"| {a['config']} | {a['add_s']} | {a['vectors_per_s']:,} | {', '.join(f'{x:.2f}' for x in a['per_rank_s'])} "
              f"| {a['speedup_vs_1x1']} |" for a in adds]
    lines += ["", "**Rank 0's merge** (each in a fresh 1-thread process; memory sampled every 2 ms):", "",
              "| merge | seconds | heap growth MiB (RssAnon) | mapped file pages growth MiB (RssFile) "
              "| peak RssAnon MiB | VmHWM MiB | index files MiB |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['merge']} | {m['seconds']} | {m['rss_anon_growth_mib']} | {m['rss_file_growth_mib']} "
              f"| {m['rss_anon_peak_mib']} | {m['vm_hwm_mib']} | {m['files_mib']} |" for m in merges]
    lines += ["", "Heap growth is the memory a merge needs; mapped file pages are page cache the kernel evicts under "
              "pressure. The process starts at about 290 MiB RssAnon (mmsearch imports torch)."]
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
