"""Distributed indexing throughput: 1 process vs N processes under torchrun, side by side in one run.

Catalog: the sample catalog's images (Fluent Emoji 3D, 256 px webp, with titles) copied round-robin to
--images files. Each configuration runs the same code path (``build_index_distributed``; with one
process it runs without a process group) through ``python -m torch.distributed.run``:

    nice -n 10 python benchmarks/bench_distributed.py --images 160 --model default

Reported per configuration: the parallel phase (hash + decode + encode images and texts + write
shards; images/s = images / slowest rank's time), rank 0's serial merge (read shards, build FAISS
indexes and the item store, fsync, swap), and the whole command's wall time (process start, model load
included). Scaling efficiency = images/s with N processes / (N x images/s of one 1-thread process).
Writes benchmarks/results/distributed.json and .md.

On a GPU (``--device cuda``; what benchmarks/run_gpu_bench.sh runs) every rank encodes on the GPU of its local
rank, and with one GPU the ranks share it, which checks the multi-process path rather than scaling:

    python benchmarks/bench_distributed.py --device cuda --images 2000 --threads 4 --workers 3 \
        --batch-size 128 --shard-size 250 --results benchmarks/results/distributed_cuda

``--compare`` (on by default) checks that the N-process index holds the same item ids as the 1-process one and
reports the largest embedding difference per channel; the command exits 1 when the ids differ or a difference
exceeds ``--max-diff``. ``--jpegs`` indexes generated baseline JPEGs instead (decoded by nvJPEG on a GPU):
benchmarks/run_gpu_distributed.sh runs that check on one GPU in under a minute.
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
    rows = [json.loads(line) for line in (SAMPLE / "catalog.jsonl").read_text().splitlines()]
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        name = f"img{i:05d}_{Path(row['image']).name}"
        shutil.copy(SAMPLE / row["image"], dst / name)
        out_rows.append({**row, "image": name})
    (dst / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out_rows))


def make_jpegs(dst: Path, n: int, seed: int = 0) -> None:
    """``n`` deterministic baseline JPEGs (256x192: a colour gradient, a rectangle and a disc) with titles."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:192, 0:256].astype(np.float32)
    rows = []
    for i in range(n):
        a, b = rng.random(3) * 255, rng.random(3) * 255
        t = (xx / 255.0 * rng.random() + yy / 191.0 * (1 - rng.random()))[..., None] / 2
        img = Image.fromarray(np.clip(a * (1 - t) + b * t, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        x0, y0 = rng.integers(0, 160), rng.integers(0, 100)
        draw.rectangle([x0, y0, x0 + rng.integers(20, 90), y0 + rng.integers(20, 90)], fill=tuple(rng.integers(0, 255, 3)))
        cx, cy, r = rng.integers(30, 226), rng.integers(30, 162), rng.integers(8, 30)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(rng.integers(0, 255, 3)))
        img.save(dst / f"gen{i:05d}.jpg", quality=90)
        rows.append({"image": f"gen{i:05d}.jpg", "title": f"generated picture {i}"})
    (dst / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def worker(args) -> None:
    import torch

    from mmsearch.dist.runner import build_index_distributed

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    result = build_index_distributed(args.catalog, out=args.out, model=args.model, device=args.device,
                                     batch_size=args.batch_size, num_workers=args.workers, progress=False,
                                     shard_size=args.shard_size)
    if result is not None:
        Path(args.result).write_text(json.dumps({"build_s": time.perf_counter() - t0, "info": result.info,
                                                 "encoded": result.report.encoded,
                                                 "indexed": result.report.indexed}))


def run_config(nproc: int, threads: int, catalog: Path, work: Path, args) -> dict:
    out, result = work / f"idx-{nproc}x{threads}", work / f"res-{nproc}x{threads}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(args.port), __file__, "--worker", "--catalog", str(catalog), "--out", str(out), "--result",
           str(result), "--model", args.model, "--batch-size", str(args.batch_size), "--shard-size",
           str(args.shard_size), "--device", args.device, "--workers", str(args.workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r = json.loads(result.read_text())
    ranks = r["info"]["ranks"]
    parallel = max(x["seconds"] for x in ranks)
    return {"out": str(out), "config": f"{nproc} process{'es' if nproc > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
            "processes": nproc, "threads": threads, "images": r["encoded"],
            "parallel_s": round(parallel, 2), "images_per_s": round(r["encoded"] / parallel, 2),
            "per_rank_images_per_s": [round(x["encoded"] / x["seconds"], 2) for x in ranks],
            "devices": [x.get("device", "") for x in ranks],
            "merge_s": r["info"].get("merge_seconds"), "command_wall_s": round(wall, 2)}


def compare(single: Path, multi: Path) -> dict:
    """Same item set and embeddings (largest absolute difference per channel) of two indexes."""
    from mmsearch.index.snapshot import channel_vectors, read_manifest

    out = {}
    for name in read_manifest(single)["channels"]:
        a, b = channel_vectors(single, name), channel_vectors(multi, name)
        out[name] = {"same_ids": sorted(a) == sorted(b), "items": len(a),
                     "max_abs_diff": float(max((abs(a[i] - b[i]).max() for i in a if i in b), default=0.0))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=40)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--procs", type=int, default=2, help="the N compared with 1 process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (ranks take cuda:LOCAL_RANK, sharing one GPU)")
    ap.add_argument("--workers", type=int, default=0, help="decode workers per rank")
    ap.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--max-diff", type=float, default=0.01, help="largest embedding difference 1 vs N processes "
                    "that passes (float16 storage: ~1e-3; bf16 on CUDA may differ with the batch composition)")
    ap.add_argument("--jpegs", action="store_true", help="generated JPEGs instead of the sample catalog's WebP")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "distributed")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    work = Path(tempfile.mkdtemp(prefix="bench_dist_"))
    try:
        catalog = work / "catalog"
        catalog.mkdir()
        (make_jpegs if args.jpegs else make_catalog)(catalog, args.images)
        # 1x1 gives the per-core cost; 1xN uses every core in one process (what a plain `mmsearch index` does)
        t = args.threads
        configs = [(1, t), (args.procs, t)] + ([(1, args.procs * t)] if args.device == "cpu" else [])
        rows = [run_config(n, t, catalog, work, args) for n, t in configs]
        agreement = compare(Path(rows[0]["out"]), Path(rows[1]["out"])) if args.compare else None
        for r in rows:
            shutil.rmtree(r.pop("out"), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_vs_1x1"] = round(r["images_per_s"] / base, 2)
        cores = r["processes"] * r["threads"] / (rows[0]["processes"] * rows[0]["threads"])
        r["scaling_efficiency"] = round(r["images_per_s"] / (base * cores), 2)
    cmd = " ".join(["python benchmarks/bench_distributed.py"] + sys.argv[1:])
    import torch

    meta = {"command": cmd, "model": args.model, "images": args.images, "cpus": os.cpu_count(),
            "device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
            "torch": torch.__version__, "agreement_1_vs_n": agreement,
            "load_average_at_end": os.getloadavg(), "python": platform.python_version(),
            "note": "2-core machine shared with other jobs; configurations ran one after another in one run"}
    passed = agreement is None or all(v["same_ids"] and v["max_abs_diff"] <= args.max_diff for v in agreement.values())
    meta["passed"] = passed
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Distributed indexing: 1 vs {args.procs} processes", "", f"`{cmd}`", "",
             f"{args.images} " + ("generated baseline JPEGs (256x192, with titles)" if args.jpegs else
                                  "images (Fluent Emoji 3D webp, 256 px, with titles)") + f", model `{args.model}`, "
             f"{meta['gpu'] or 'CPU'}, {os.cpu_count()} cores (load average at the end: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}).", "",
             f"1 process vs {args.procs} processes, same items: "
             + (", ".join(f"{k}: same ids {v['same_ids']} ({v['items']} items), max |diff| {v['max_abs_diff']:.2e}"
                          for k, v in agreement.items()) if agreement else "not compared") + ".", "",
             "| configuration | parallel phase s | images/s | per-rank images/s | speed-up vs first row | scaling efficiency "
             "| rank-0 merge s | command wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['parallel_s']} | {r['images_per_s']} | "
                     f"{', '.join(map(str, r['per_rank_images_per_s']))} | {r['speedup_vs_1x1']} | "
                     f"{r['scaling_efficiency']} | {r['merge_s']} | {r['command_wall_s']} |")
    if agreement is not None:
        lines += ["", f"Devices per rank: {'; '.join(', '.join(r['devices']) for r in rows)}. "
                      f"**Same index from 1 and {args.procs} processes: {'yes' if passed else 'NO'}** "
                      f"(max |diff| ≤ {args.max_diff} required)."]
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
