"""Several index processes sharing one device: 1 vs 2 processes of the torchrun index job on generated
JPEGs, checked to give the same items and embeddings, with images/s for each.

Both configurations run ``build_index_distributed`` (what ``torchrun -m mmsearch index`` runs) through
``python -m torch.distributed.run``; device ``auto`` puts every rank on ``cuda:LOCAL_RANK % GPUs``, so
on a one-GPU machine both ranks share cuda:0 (the job coordinates over gloo, which allows that; NCCL
would not). Run by benchmarks/run_gpu_distributed.sh (on a GPU, or at a smaller size on the CPU):

    python benchmarks/bench_distributed_device.py --images 512 --results benchmarks/results/distributed_cuda

images/s = images encoded / the slowest rank's parallel phase (hash + decode + encode + write shards),
as in bench_distributed.py. Exits 1 when the two indexes differ (ids, or an embedding's cosine below
--min-cosine: 0.999 on the CPU, 0.99 on CUDA where bf16 results depend on batch composition).
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


def make_jpegs(dst: Path, n: int, seed: int = 0) -> None:
    """``n`` deterministic baseline JPEGs (256x192: colour gradients with a rectangle and a disc) + titles."""
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
    from mmsearch.dist_index import build_index_distributed

    t0 = time.perf_counter()
    result = build_index_distributed(args.catalog, out=args.out, model=args.model, device=args.device,
                                     batch_size=args.batch_size, progress=False, shard_size=args.shard_size)
    if result is not None:
        Path(args.result).write_text(json.dumps({"build_s": time.perf_counter() - t0, "info": result.info,
                                                 "encoded": result.report.encoded, "indexed": result.report.indexed}))


def channels(index: Path) -> dict[str, dict[str, "np.ndarray"]]:
    """channel -> item id -> float32 vector."""
    import numpy as np

    from mmsearch.index import read_manifest
    from mmsearch.store import ItemStore

    manifest = read_manifest(index)
    snap = Path(manifest["_snapshot"])
    store = ItemStore.open(snap / "items.sqlite")
    out = {}
    for name, meta in manifest["channels"].items():
        fids = np.load(snap / meta["ids"])
        rows = store.rows(fids.tolist())
        vecs = np.load(snap / meta["embeddings"]).astype(np.float32)
        out[name] = {rows[int(f)]["id"]: v for f, v in zip(fids, vecs)}
    store.close()
    return out


def compare(a: Path, b: Path) -> dict:
    import numpy as np

    ca, cb = channels(a), channels(b)
    report = {}
    for name in sorted(set(ca) | set(cb)):
        ids_a, ids_b = set(ca.get(name, {})), set(cb.get(name, {}))
        common = sorted(ids_a & ids_b)
        va = np.stack([ca[name][i] for i in common]) if common else np.zeros((0, 1), np.float32)
        vb = np.stack([cb[name][i] for i in common]) if common else np.zeros((0, 1), np.float32)
        cos = (va * vb).sum(1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
        report[name] = {"items": len(common), "same_ids": ids_a == ids_b,
                        "max_abs_diff": round(float(np.abs(va - vb).max()), 5) if common else None,
                        "min_cosine": round(float(cos.min()), 6) if common else None}
    return report


def run_config(nproc: int, catalog: Path, work: Path, args) -> dict:
    out, result = work / f"idx-{nproc}", work / f"res-{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(args.port), __file__, "--worker", "--catalog", str(catalog), "--out", str(out), "--result",
           str(result), "--model", args.model, "--device", args.device, "--batch-size", str(args.batch_size),
           "--shard-size", str(args.shard_size)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    wall = time.perf_counter() - t0
    r = json.loads(result.read_text())
    ranks = r["info"]["ranks"]
    parallel = max(x["seconds"] for x in ranks)
    return {"processes": nproc, "images": r["encoded"], "devices": [x.get("device", "") for x in ranks],
            "parallel_s": round(parallel, 2), "images_per_s": round(r["encoded"] / parallel, 1),
            "per_rank_images_per_s": [round(x["encoded"] / x["seconds"], 1) for x in ranks],
            "merge_s": r["info"].get("merge_seconds"), "command_wall_s": round(wall, 1), "out": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=0, help="default: a quarter of the images (4 shards)")
    ap.add_argument("--min-cosine", type=float, default=None)
    ap.add_argument("--port", type=int, default=29561)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "distributed_cuda")
    args = ap.parse_args()
    args.shard_size = args.shard_size or max(1, -(-args.images // 4))
    if args.worker:
        return worker(args)
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    min_cos = args.min_cosine or (0.99 if cuda else 0.999)
    work = Path(tempfile.mkdtemp(prefix="bench_dist_dev_"))
    try:
        catalog = work / "catalog"
        catalog.mkdir()
        t0 = time.perf_counter()
        make_jpegs(catalog, args.images)
        print(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for nproc in (1, 2):
            rows.append(run_config(nproc, catalog, work, args))
            print({k: v for k, v in rows[-1].items() if k != "out"}, flush=True)
        check = compare(Path(rows[0]["out"]), Path(rows[1]["out"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(c["same_ids"] and c["min_cosine"] is not None and c["min_cosine"] >= min_cos for c in check.values())
    for r in rows:
        r.pop("out")
        r["speedup_vs_1"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
    gpu = torch.cuda.get_device_name(0) if cuda else None
    cmd = " ".join(["python benchmarks/bench_distributed_device.py"] + sys.argv[1:])
    meta = {"command": cmd, "model": args.model, "images": args.images, "batch_size": args.batch_size,
            "shard_size": args.shard_size, "gpu": gpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "min_cosine_required": min_cos, "passed": ok}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "check": check}, indent=2) + "\n")
    where = gpu or f"CPU ({os.cpu_count()} cores)"
    lines = [f"# Distributed indexing on one device: 1 vs 2 processes ({where})", "",
             f"`{cmd}` (run by `benchmarks/run_gpu_distributed.sh`)", "",
             f"{args.images} generated JPEGs (256x192), model `{args.model}`, batch {args.batch_size}, "
             f"{-(-args.images // args.shard_size)} shards; torch {torch.__version__}.", "",
             "| processes | devices | parallel phase s | images/s | per-rank images/s | speed-up | rank-0 merge s "
             "| command wall s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {', '.join(r['devices'])} | {r['parallel_s']} | {r['images_per_s']} | "
              f"{', '.join(map(str, r['per_rank_images_per_s']))} | {r['speedup_vs_1']} | {r['merge_s']} | "
              f"{r['command_wall_s']} |" for r in rows]
    lines += ["", f"**Same index from 1 and 2 processes: {'yes' if ok else 'NO'}** (cosine ≥ {min_cos} required)", "",
              "| channel | items | same ids | max abs diff | min cosine |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {c['items']} | {c['same_ids']} | {c['max_abs_diff']} | {c['min_cosine']} |"
              for name, c in check.items()]
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
