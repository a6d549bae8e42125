"""Stress test of `mmsearch serve` under rebuilds (issues 12 and 20): concurrent requests while the index
is re-indexed and reloaded over and over. Loopback only, bounded in time; it stops by itself.

    python benchmarks/bench_stress.py --seconds 90 --clients 16 --out benchmarks/results/stress.json

A `mmsearch serve` subprocess (127.0.0.1, tiny model, a thumbnail cache too small to keep anything, so
thumbnails are decoded again and again) answers `--clients` threads that loop over text, photo and
filtered `POST /search`, `POST /cli/query` (what `mmsearch query` forwards: text, photo, `--where`) and
`GET /items/{id}/thumbnail`; meanwhile the main thread runs `mmsearch reindex` (alternating flat / hnsw /
ivf) and `POST /reload`, again and again, and the server's own watcher reloads too. Reported: requests per
route, reloads, status counts, client errors (connection resets, timeouts), 5xx, whether the server
process died, and its peak RSS. Target: 0 errors, 0 5xx, 0 crashes (before the issue 12 fix: 102 x 500
and a segfault in 2 of 3 runs; before the issue 20 fix, /cli/query: 500s and a segfault in 3 of 3).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "mmsearch" / "sample" / "catalog"
SHOE = (ROOT / "mmsearch" / "sample" / "queries" / "shoe.jpg").read_bytes()
TEXTS = ["red running shoe", "a banana", "fast car", "leather handbag", "headphones", "a hat", "camera"]
FILTERS = [None, '{"category": "clothing"}', '{"category": ["food", "vehicle"]}', '{"tags": ["<", "m"]}']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="how long searches run (then everything stops)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent search loops")
    ap.add_argument("--max-reloads", type=int, default=60, help="stop reindexing after this many reloads")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON (and .md beside it)")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="mmsearch-stress-"))
    index = work / "index"
    cli = [sys.executable, "-m", "mmsearch"]
    subprocess.run(cli + ["index", str(CATALOG), "--out", str(index), "--model", "tiny", "--device", "cpu",
                          "--workers", "0"], check=True, env=env, capture_output=True)
    port = free_port()
    (work / "serve.json").write_text(json.dumps({"thumbnail_cache_bytes": 1}))  # every thumbnail decoded anew
    server = subprocess.Popen(cli + ["serve", "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
                                     "--device", "cpu", "--reload-interval", "0.5", "--max-pending", "64",
                                     "--config", str(work / "serve.json")],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        server.kill()
        raise SystemExit("server did not start; see " + str(work / "server.log"))

    ids = [item["id"] for item in httpx.get(base + "/items", params={"limit": 1000}, timeout=30).json()["items"]]
    shoe_b64 = base64.b64encode(SHOE).decode()
    statuses: collections.Counter = collections.Counter()
    routes: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            i = n
            while not stop.is_set():
                i += 1
                route = ("search", "cli/query", "thumbnail")[i % 3]
                try:
                    if route == "search":
                        data = {"text": TEXTS[i % len(TEXTS)], "k": "10"}
                        if FILTERS[i % len(FILTERS)]:
                            data["filters"] = FILTERS[i % len(FILTERS)]
                        files = {"image": ("q.jpg", SHOE, "image/jpeg")} if i % 5 == 0 else None
                        r = c.post("/search", data=data, files=files)
                    elif route == "cli/query":
                        body: dict = {"text": TEXTS[i % len(TEXTS)], "k": 10}
                        if i % 4 == 0:
                            body["image_b64"] = shoe_b64
                        if i % 2:
                            body["where"] = ["category=clothing"]
                        r = c.post("/cli/query", json=body)
                    else:
                        r = c.get(f"/items/{ids[i % len(ids)]}/thumbnail")
                    with lock:
                        statuses[r.status_code] += 1
                        routes[f"{route} {r.status_code}"] += 1
                    if r.status_code == 503:
                        time.sleep(0.05)
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                    if server.poll() is not None:
                        return

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(args.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    reloads, reindex_failures, snapshots = 0, 0, set()
    kinds = ["flat", "hnsw", "ivf"]
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.time() - t0 < args.seconds and reloads < args.max_reloads and server.poll() is None:
            r = subprocess.run(cli + ["reindex", "--index", str(index), "--index-type", kinds[reloads % 3],
                                      "--wait", "30"], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                reindex_failures += 1
                continue
            try:
                resp = c.post("/reload")
                if resp.status_code == 200:
                    reloads += 1
                    snapshots.add(resp.json()["snapshot"])
                else:
                    with lock:
                        statuses[resp.status_code] += 1
            except httpx.HTTPError as exc:
                with lock:
                    errors["reload " + type(exc).__name__] += 1
    while time.time() - t0 < args.seconds and server.poll() is None:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.time() - t0
    crashed = server.poll() is not None
    rss = peak_rss_mb(server.pid)
    exit_code = server.returncode
    if not crashed:
        server.terminate()
        server.wait(30)
    searches = sum(v for k, v in statuses.items())
    result = {
        "seconds": round(elapsed, 1), "clients": args.clients, "requests": searches,
        "requests_per_s": round(searches / elapsed, 1), "reloads": reloads, "distinct_snapshots": len(snapshots),
        "reindex_failures": reindex_failures, "status": {str(k): v for k, v in sorted(statuses.items())},
        "by_route": dict(sorted(routes.items())),
        "http_5xx": sum(v for k, v in statuses.items() if k >= 500), "client_errors": dict(errors),
        "server_crashed": crashed, "server_exit_code": exit_code if crashed else None,
        "server_peak_rss_mb": round(rss, 1) if rss else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        md = ["# Stress: searches, /cli/query and thumbnails across repeated reindex + reload (bench_stress.py)", "",
              f"`python benchmarks/bench_stress.py {' '.join(sys.argv[1:])}` on "
              f"{result['machine']}, tiny model, `mmsearch serve` on 127.0.0.1.", "",
              "| requests | /s | reloads | 5xx | client errors | crashed | server peak RSS |",
              "|---:|---:|---:|---:|---:|---|---:|",
              f"| {searches} | {result['requests_per_s']} | {reloads} | {result['http_5xx']} | "
              f"{sum(errors.values())} | {'yes' if crashed else 'no'} | {result['server_peak_rss_mb']} MB |", "",
              f"Status counts: {result['status']} (503 = bounded queue full, answered with Retry-After).", "",
              f"By route: {result['by_route']}.", "",
              "Before the fix of issue 12: 102 x HTTP 500 `Cannot operate on a closed database` and a segfault "
              "in 2 of 3 runs of the same kind of load; before issue 20's, `POST /cli/query` (no lease) gave 500s "
              "and then a segfault in 3 of 3 runs."]
        args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    if crashed or result["http_5xx"] or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
