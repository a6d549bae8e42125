"""Does writing embeddings as chunks from a background thread pay? Memory and speed, side by side.
(The script and its variants keep their old "shard" names: results/shard_writer_cpu.md was made with them.)

    python benchmarks/bench_shard_writer.py          # results/shard_writer_cpu.md (+ .json)

1. The collector alone (no model; `default`'s channels, 384 + 1280 floats per image, batches of 32 random
   unit rows): peak RSS of a fresh process, and seconds, for N images, with the embeddings
   - ``memory``: kept as float32 chunks, concatenated and re-ordered at the end (the pre-chunk path,
     still used for queries and ``encode_image_files(..., shards=None)``);
   - ``shards-sync``: float16 chunks written in the caller's thread;
   - ``shards-async``: float16 chunks written by mmsearch.encode.chunks.ChunkWriter's thread (the index build).
   Each variant runs in its own process so peak RSS is its own.
2. Real encoding through ``encode_image_files`` of the same photos (bench_encode.py's input set),
   in memory vs async chunks, interleaved runs, tiny and default models: images/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIMS = {"image": 384, "visual": 1280}  # the default model's channels
BATCH = 32


def collector(variant: str, n: int, shard_rows: int) -> dict:
    """Feed n synthetic rows through the real collector; return seconds and peak RSS growth (MB)."""
    import torch

    from mmsearch.config import EncodeCfg
    from mmsearch.encode.chunks import ChunkWriter, assemble, chunk_paths, write_chunk
    from mmsearch.encode.pipeline import _Encoder

    class Stub(torch.nn.Module):  # what _Encoder reads from a model, without a model
        embed_dim, visual_dim = DIMS["image"], DIMS["visual"]
        image_tower = torch.nn.Identity()
        cfg = type("C", (), {"image": None})()
        encode_image_channels = None

    rng = np.random.default_rng(0)
    pool = [{k: rng.standard_normal((BATCH, d), dtype=np.float32) for k, d in DIMS.items()} for _ in range(8)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        writer = ChunkWriter(Path(tmp) / "s", shard_rows) if variant == "shards-async" else None
        enc = _Encoder(Stub(), EncodeCfg(), [""] * n, torch.device("cpu"), writer)
        buf: list[tuple[list[int], dict]] = []
        shards: list[int] = []
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            pos = list(range(start, min(n, start + BATCH)))
            # a fresh array per batch, as the model's output is
            out = {k: torch.from_numpy(v[:len(pos)].copy()) for k, v in pool[(start // BATCH) % 8].items()}
            if variant == "shards-sync":
                buf.append((pos, {k: v.numpy() for k, v in out.items()}))
                if sum(len(p) for p, _ in buf) >= shard_rows or pos[-1] == n - 1:
                    arrays = {k: np.concatenate([a[k] for _, a in buf]) for k in DIMS}
                    write_chunk(*chunk_paths(tmp, len(shards)), arrays, {"positions": [p for q, _ in buf for p in q]},
                                durable=False)  # as ChunkWriter writes an index build's chunks
                    shards.append(len(shards))
                    buf = []
            else:
                enc.collect((pos, out, None))
        t_loop = time.perf_counter() - t0
        if variant == "shards-sync":
            ok, channels = assemble(tmp, shards, DIMS)
        else:
            emb = enc.result()
            channels = emb.channels
        secs = time.perf_counter() - t0
        rows = len(channels["image"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "images": n, "rows": rows, "dtype": str(channels["image"].dtype),
            "seconds": round(secs, 3), "loop_seconds": round(t_loop, 3),
            "ms_per_1k_images": round(1000 * secs / n * 1000, 2), "peak_rss_growth_mb": round(peak - base, 1),
            "result_mb": round(sum(a.nbytes for a in channels.values()) / 2**20, 1)}


def real_encode(models: list[str], n: int, runs: int, cache: Path) -> list[dict]:
    from bench_encode import input_set

    from mmsearch.config import EncodeCfg
    from mmsearch.encode.pipeline import encode_image_files
    from mmsearch.models.factory import create_model

    paths = input_set(n, cache)
    rows = []
    for name in models:
        model, preprocess, _ = create_model(name, device="cpu")
        cfg = EncodeCfg(batch_size=32, num_workers=1, shard_rows=128)
        encode_image_files(model, preprocess, paths[:32], cfg=cfg, progress=False)  # warm-up
        times: dict[str, list[float]] = {"memory": [], "shards-async": []}
        for _ in range(runs):
            for variant in times:  # interleaved: both see the same machine load
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    encode_image_files(model, preprocess, paths, cfg=cfg, progress=False,
                                       shards=Path(tmp) / "s" if variant != "memory" else None)
                    times[variant].append(n / (time.perf_counter() - t0))
        for variant, ts in times.items():
            rows.append({"model": name, "variant": variant, "images": n, "images_per_s": [round(t, 2) for t in ts],
                         "best": round(max(ts), 2), "median": round(statistics.median(ts), 2)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--shard-rows", type=int, default=4096)
    ap.add_argument("--images", type=int, default=128, help="photos for the real-encode part")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["tiny", "default"])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "MMSEARCH_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "mmsearch-bench"))))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shard_writer_cpu")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: VARIANT N in a fresh process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(collector(args.one[0], int(args.one[1]), args.shard_rows)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    coll = []
    for n in args.sizes:
        for variant in ("memory", "shards-sync", "shards-async"):
            res = subprocess.run([sys.executable, __file__, "--one", variant, str(n), "--shard-rows",
                                  str(args.shard_rows)], capture_output=True, text=True, check=True)
            coll.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(coll[-1], flush=True)
    real = real_encode(args.models, args.images, args.runs, args.cache)
    cmd = "python benchmarks/bench_shard_writer.py " + " ".join(sys.argv[1:])
    res = {"command": cmd.strip(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cpus": os.cpu_count(), "shard_rows": args.shard_rows, "collector": coll, "encode": real}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = ["# Embedding shards from a background writer (CPU)", "",
             f"Command: `{res['command']}`  ", f"Date: {res['date']}, {res['cpus']} CPUs, shards of "
             f"{args.shard_rows} rows, `default`'s channels (384 + 1280 floats per image)", "",
             "## Collecting N embeddings (no model): peak memory and time, each variant in a fresh process", "",
             "| images | variant | result dtype | result MB | peak RSS growth MB | seconds | ms per 1k images |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['images']} | {r['variant']} | {r['dtype']} | {r['result_mb']} | {r['peak_rss_growth_mb']} "
              f"| {r['seconds']} | {r['ms_per_1k_images']} |" for r in coll]
    lines += ["", f"## Real encoding of {args.images} photos (batch 32, 1 worker), interleaved runs", "",
              "| model | variant | images/s (runs) | best | median |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['images_per_s']} | {r['best']} | {r['median']} |" for r in real]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
