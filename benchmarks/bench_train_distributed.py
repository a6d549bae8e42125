"""Distributed training throughput: 1 process vs N processes under torchrun, side by side in one run.

Two phases of ``mmsearch train`` are measured separately, each through the real code:

- feature extraction (the frozen backbones, once per image, split across ranks): images/s on a fresh
  feature cache, slowest rank's time;
- the training epochs (heads + fusion on cached features, DDP with the gathered losses): pairs/s as
  the run's own metrics.jsonl reports it (mean over epochs after the first).

The catalog is the sample catalog's images, each copy with one pixel changed (so every file hashes
differently and is extracted), titles kept::

    nice -n 10 python benchmarks/bench_train_distributed.py --images 120 --model default

Writes benchmarks/results/train_distributed.json and .md.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "mmsearch" / "sample" / "catalog"


def make_catalog(dst: Path, n: int) -> None:
    from PIL import Image

    rows = [json.loads(line) for line in (SAMPLE / "catalog.jsonl").read_text().splitlines()]
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        im = Image.open(SAMPLE / row["image"]).convert("RGBA")
        im.putpixel((i % im.width, (i // im.width) % im.height), (i % 256, (i * 7) % 256, 0, 255))
        name = f"img{i:05d}.png"
        im.save(dst / name)
        out_rows.append({**row, "image": name})
    (dst / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out_rows))


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from mmsearch.config import TrainCfg
    from mmsearch.dist.env import DistEnv, process_group, rank_device
    from mmsearch.train.loop import init_model, train
    from mmsearch.train.splits import prepare_split

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    env = DistEnv.from_env()
    dev = rank_device("cpu", env)
    cfg = TrainCfg(epochs=args.epochs, batch_size=args.batch_size)
    with process_group(env, dev):
        net, tok, _ = init_model(args.model, cfg)
        if env.is_distributed:
            dist.barrier()
        t0 = time.perf_counter()
        prepare_split(args.catalog, net, tok, cfg, None, {}, augment=True, progress=False, env=env)
        if env.is_distributed:
            dist.barrier()
        extract_s = time.perf_counter() - t0
        report = train(args.catalog, out=args.out, model=args.model, cfg=cfg, device="cpu", progress=False)
    if env.is_main:
        pairs_s = [m["items_per_s"] for m in report.metrics[1:]] or [report.metrics[0]["items_per_s"]]
        Path(args.result).write_text(json.dumps({"extract_s": extract_s, "pairs_per_s": pairs_s,
                                                 "pairs": report.pairs}))


def run_config(nproc: int, threads: int, catalog: Path, work: Path, args) -> dict:
    tag = f"{nproc}x{threads}"
    result = work / f"res-{tag}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(args.port), __file__, "--worker", "--catalog", str(catalog), "--out", str(work / f"run-{tag}"),
           "--result", str(result), "--model", args.model, "--batch-size", str(args.batch_size), "--epochs",
           str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MMSEARCH_CACHE": str(work / f"cache-{tag}")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r = json.loads(result.read_text())
    pairs_s = sorted(r["pairs_per_s"])
    return {"config": f"{nproc} process{'es' if nproc > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
            "processes": nproc, "threads": threads, "extract_s": round(r["extract_s"], 2),
            "extract_images_per_s": round(args.images / r["extract_s"], 2),
            "train_pairs_per_s_median": pairs_s[len(pairs_s) // 2], "command_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--port", type=int, default=29547)
    ap.add_argument("--procs", type=int, default=2, help="the N compared with 1 process")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "train_distributed")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    work = Path(tempfile.mkdtemp(prefix="bench_train_dist_"))
    try:
        catalog = work / "catalog"
        catalog.mkdir()
        make_catalog(catalog, args.images)
        configs = [(1, 1), (args.procs, 1), (1, args.procs)]
        rows = [run_config(n, t, catalog, work, args) for n, t in configs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_x, base_t = rows[0]["extract_images_per_s"], rows[0]["train_pairs_per_s_median"]
    for r in rows:
        r["extract_speedup_vs_1x1"] = round(r["extract_images_per_s"] / base_x, 2)
        r["train_speedup_vs_1x1"] = round(r["train_pairs_per_s_median"] / base_t, 2)
    cmd = " ".join(["nice -n 10 python benchmarks/bench_train_distributed.py"] + sys.argv[1:])
    meta = {"command": cmd, "model": args.model, "images": args.images, "batch_size": args.batch_size,
            "epochs": args.epochs, "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "note": "2-core machine shared with other jobs; configurations ran one after another in one run"}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Distributed training: 1 vs {args.procs} processes", "", f"`{cmd}`", "",
             f"{args.images} images with titles (sample catalog copies, one pixel changed each), model "
             f"`{args.model}` (frozen backbones), global batch {args.batch_size}, {args.epochs} epochs, CPU, "
             f"{os.cpu_count()} cores shared with other jobs (load average at the end: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}).", "",
             "| configuration | feature extraction s | images/s | speed-up | training pairs/s (median epoch) "
             "| speed-up | command wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['extract_s']} | {r['extract_images_per_s']} | "
                     f"{r['extract_speedup_vs_1x1']} | {r['train_pairs_per_s_median']} | {r['train_speedup_vs_1x1']} "
                     f"| {r['command_wall_s']} |")
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
