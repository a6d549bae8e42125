"""Load test of `mmsearch serve` over loopback: throughput, p50/p99 latency and errors per query kind.

Starts the real server (a `mmsearch serve` subprocess on 127.0.0.1), then sends a bounded number of
requests per (kind, concurrency) cell from an asyncio client and prints one table, side by side. Both run
on this machine, so the client's own CPU use is part of the numbers.

    python benchmarks/bench_serve.py --model default --requests 200 --concurrency 1,2,4,16 \
        --out benchmarks/results/serve_default.json

Target (issue 6): zero errors, and p99 under 4x p50 at the saturation point (the smallest concurrency
whose throughput is within 10 % of the best).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "mmsearch" / "sample" / "catalog"
QUERIES = ROOT / "mmsearch" / "sample" / "queries"
TEXTS = ["red running shoe", "a banana", "fast car", "leather handbag", "headphones for music", "a hat",
         "fresh fruit", "something to wear in the rain", "camera", "bicycle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_images() -> list[tuple[str, bytes]]:
    files = sorted(QUERIES.glob("*.jpg")) + sorted(CATALOG.rglob("*.webp"))[:8]
    return [(p.name, p.read_bytes()) for p in files]


def make_request(kind: str, i: int, images: list[tuple[str, bytes]]) -> dict:
    text = TEXTS[i % len(TEXTS)]
    name, data = images[i % len(images)]
    if kind == "text":
        return {"data": {"text": text, "k": "10"}}
    if kind == "image":
        return {"data": {"k": "10"}, "files": {"image": (name, data, "application/octet-stream")}}
    return {"data": {"text": text, "k": "10", "image_weight": "0.5"},
            "files": {"image": (name, data, "application/octet-stream")}}


async def run_cell(base: str, kind: str, n: int, concurrency: int, images) -> dict:
    """n requests of one kind with `concurrency` in flight; latency is measured per request."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/search", **make_request(kind, i, images))
                    ok = r.status_code == 200 and len(r.json()["hits"]) > 0
                    key = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append((time.perf_counter() - t0) * 1000)
                if key:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies)
    return {"kind": kind, "concurrency": concurrency, "requests": n, "seconds": round(wall, 2),
            "throughput_rps": round(n / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "p99_over_p50": round(float(np.percentile(ms, 99) / np.percentile(ms, 50)), 2),
            "errors": sum(errors.values()), "error_kinds": errors}


def saturation(rows: list[dict]) -> dict:
    """The smallest concurrency whose throughput is within 10 % of the best for that kind."""
    best = max(r["throughput_rps"] for r in rows)
    return min((r for r in rows if r["throughput_rps"] >= 0.9 * best), key=lambda r: r["concurrency"])


def start_server(index: Path, port: int, max_pending: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--host", "127.0.0.1", "--port",
           str(port), "--reload-interval", "0", "--max-pending", str(max_pending), "--device", "cpu"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="index to serve (default: the sample catalog, built now)")
    ap.add_argument("--model", default="default", help="model for the built index (default, tiny)")
    ap.add_argument("--requests", type=int, default=200, help="requests per (kind, concurrency) cell")
    ap.add_argument("--concurrency", default="1,2,4,16", help="comma-separated client concurrencies")
    ap.add_argument("--kinds", default="text,image,fused")
    ap.add_argument("--max-pending", type=int, default=32, help="server queue limit (must exceed concurrency "
                                                                   "for a zero-error run)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = args.kinds.split(",")
    if args.requests * len(levels) * len(kinds) > 20_000:
        raise SystemExit("refusing more than 20,000 requests in one run; this is a bounded benchmark")

    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            from mmsearch import build_index

            index = Path(tmp) / "index"
            build_index(CATALOG, out=index, model=args.model, device="cpu", progress=False)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(index, port, args.max_pending)
        try:
            wait_ready(base, proc)
            images = query_images()
            stats0 = httpx.get(base + "/stats").json()
            for kind in kinds:  # warm-up: first calls allocate buffers
                asyncio.run(run_cell(base, kind, 10, 2, images))
            rows = []
            for kind in kinds:
                for c in levels:
                    row = asyncio.run(run_cell(base, kind, args.requests, c, images))
                    rows.append(row)
                    print(f"{kind:6s} c={c:<3d} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                          f"p99 {row['p99_ms']:7.1f} ms  p99/p50 {row['p99_over_p50']:4.2f}  errors {row['errors']}",
                          flush=True)
            stats = httpx.get(base + "/stats").json()
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nmodel {stats0['model']['name']}, {stats0['items']} items, server queue limit {args.max_pending}")
    print(f"{'kind':6s} {'saturation c':>12s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'p99/p50':>7s} "
          f"{'errors':>6s}")
    summary = {}
    for kind in kinds:
        sat = saturation([r for r in rows if r["kind"] == kind])
        summary[kind] = {"saturation_concurrency": sat["concurrency"], **{k: sat[k] for k in
                         ("throughput_rps", "p50_ms", "p99_ms", "p99_over_p50")},
                         "errors_all_cells": sum(r["errors"] for r in rows if r["kind"] == kind)}
        s = summary[kind]
        print(f"{kind:6s} {s['saturation_concurrency']:12d} {s['throughput_rps']:7.1f} {s['p50_ms']:7.1f} "
              f"{s['p99_ms']:7.1f} {s['p99_over_p50']:7.2f} {s['errors_all_cells']:6d}")
    total_errors = sum(r["errors"] for r in rows)
    worst = max(s["p99_over_p50"] for s in summary.values())
    verdict = "PASS" if total_errors == 0 and worst < 4 else "FAIL"
    print(f"\ntarget: zero errors and p99 < 4 x p50 at saturation -> {verdict} "
          f"(errors {total_errors}, worst p99/p50 {worst:.2f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "model": stats0["model"], "items": stats0["items"], "max_pending": args.max_pending,
            "cells": rows, "saturation": summary, "server_latency_window": stats["latency"],
            "rejected_503": stats["queue"]["rejected"], "verdict": verdict,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
