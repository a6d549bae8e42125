"""The CLI as a user runs it, in fresh processes, side by side (interleaved rounds, one run, same load):

    python benchmarks/bench_cli.py                 # query cold start + index 300 photos (results/cli_cpu.*)
    python benchmarks/bench_cli.py --skip-index    # only the query part

Query (on the sample catalog indexed with the default model):
- ``import torch, transformers.models.bert`` alone (the yardstick of issue 14);
- ``mmsearch query TEXT --no-server`` with ``MMSEARCH_RUNTIME=torch`` (the torch model: what every query
  cost before) and with ``onnx`` (the lean path: exported towers, no torch model);
- ``mmsearch query TEXT`` while ``mmsearch serve`` runs on that index (the query goes to the server).

Index (300 photo-sized JPEGs, imports and model load included in every variant):
- naive: PIL full-size decode + torchvision Resize/CenterCrop/ToTensor/Normalize + fp32 NCHW torch forward,
  batch 32 (what typical tools do; embeddings only, no index written);
- ``mmsearch index --device cpu`` with ``MMSEARCH_RUNTIME=torch`` and with ``onnx`` (the image tower in
  onnxruntime; the export is made once before timing, as it is on a user's first build).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "mmsearch" / "sample" / "catalog"
MM = [sys.executable, "-m", "mmsearch"]

NAIVE = r"""
import sys, torch
from PIL import Image
from torchvision import transforms
from mmsearch.models.factory import create_model
paths = sys.argv[1:]
model, _, _ = create_model("default", device="cpu")
cfg = model.cfg.image
tf = transforms.Compose([transforms.Resize(cfg.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
                         transforms.CenterCrop(cfg.image_size), transforms.ToTensor(),
                         transforms.Normalize(cfg.mean, cfg.std)])
out = []
with torch.inference_mode():
    for s in range(0, len(paths), 32):
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[s:s + 32]])
        out.append(model.encode_image_channels(x)["image"])
print(torch.cat(out).shape)
"""


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    dt_ = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return dt_


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--index-rounds", type=int, default=2)
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MMSEARCH_BENCH_CACHE", "/tmp/mmsearch_bench")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_cpu")
    args = ap.parse_args()
    # MMSEARCH_SRC: run another checkout (e.g. a frozen copy while this one is being edited)
    env = {"PYTHONPATH": os.environ.get("MMSEARCH_SRC", str(ROOT)), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    load0 = os.getloadavg()
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                 "command": " ".join(["python", "benchmarks/bench_cli.py"] + sys.argv[1:]), "query": {}, "index": {}}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        timed(MM + ["index", str(SAMPLE), "--out", str(index), "--device", "cpu"], {"MMSEARCH_RUNTIME": "torch"})
        q = ["query", "red running shoes", "--index", str(index), "--device", "cpu", "--json"]
        timed(MM + q + ["--no-server"], {"MMSEARCH_RUNTIME": "onnx"})  # first use: exports the towers
        port = free_port()
        server = subprocess.Popen(MM + ["serve", "--index", str(index), "--port", str(port), "--device", "cpu"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "MMSEARCH_RUNTIME": "onnx"})
        try:
            for _ in range(600):
                if (index / ".mmsearch-serve.json").exists():
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    except OSError:
                        pass
                time.sleep(0.2)
            variants = {
                "import torch + transformers.models.bert": ([sys.executable, "-c", "import torch, transformers.models.bert"], {}),
                "query in-process, torch (before)": (MM + q + ["--no-server"], {"MMSEARCH_RUNTIME": "torch"}),
                "query in-process, onnx (lean)": (MM + q + ["--no-server"], {"MMSEARCH_RUNTIME": "onnx"}),
                "query through mmsearch serve": (MM + q, {}),
            }
            times: dict[str, list[float]] = {k: [] for k in variants}
            for r in range(args.rounds):
                for name, (cmd, e) in variants.items():
                    times[name].append(timed(cmd, e))
                print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
        base = statistics.median(times["import torch + transformers.models.bert"])
        res["query"] = {k: {"runs_s": [round(x, 2) for x in v], "median_s": round(statistics.median(v), 2),
                            "vs_import_torch": round(statistics.median(v) / base, 2)} for k, v in times.items()}
        if not args.skip_index:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_encode import input_set

            photos = input_set(args.photos, args.cache)
            cat = Path(tmp) / "photos"
            cat.mkdir()
            for p in photos:
                os.symlink(p, cat / Path(p).name)
            timed(MM + ["index", str(cat), "--out", str(Path(tmp) / "warm"), "--device", "cpu"],
                  {"MMSEARCH_RUNTIME": "onnx"})  # first build exports the image tower (a one-off)
            ivariants = {
                "naive (PIL + torchvision + fp32)": ([sys.executable, "-c", NAIVE, *photos], {}),
                "mmsearch index, torch": (MM + ["index", str(cat), "--out", str(Path(tmp) / "i_torch"), "--device",
                                                "cpu"], {"MMSEARCH_RUNTIME": "torch"}),
                "mmsearch index, onnx": (MM + ["index", str(cat), "--out", str(Path(tmp) / "i_onnx"), "--device",
                                               "cpu"], {"MMSEARCH_RUNTIME": "onnx"}),
            }
            itimes: dict[str, list[float]] = {k: [] for k in ivariants}
            for r in range(args.index_rounds):
                for name, (cmd, e) in ivariants.items():
                    for d in ("i_torch", "i_onnx"):
                        shutil.rmtree(Path(tmp) / d, ignore_errors=True)
                    itimes[name].append(timed(cmd, e))
                print(f"  index round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in itimes.items()), flush=True)
            naive = statistics.median(itimes["naive (PIL + torchvision + fp32)"])
            res["index"] = {k: {"runs_s": [round(x, 1) for x in v], "median_s": round(statistics.median(v), 1),
                                "speedup_vs_naive": round(naive / statistics.median(v), 2),
                                "images_per_s": round(args.photos / statistics.median(v), 1)} for k, v in itimes.items()}
    res["loadavg_start"], res["loadavg_end"] = load0, os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = ["# The CLI end to end, fresh processes, side by side", "", f"Command: `{res['command']}`  ",
             f"Date: {res['date']}, {res['cpus']} CPUs, load average {[round(x, 1) for x in load0]} at start, "
             f"{[round(x, 1) for x in res['loadavg_end']]} at end (shared machine: compare the ratios, which come "
             f"from interleaved rounds)", "", "## `mmsearch query` (sample catalog, default model)", "",
             "| variant | runs s | median s | / import torch + transformers |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['runs_s']} | {v['median_s']} | {v['vs_import_torch']}x |" for k, v in res["query"].items()]
    if res["index"]:
        lines += ["", f"## Index {args.photos} photo-sized JPEGs (imports + model load included)", "",
                  "| variant | runs s | median s | images/s | speed-up vs naive |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['runs_s']} | {v['median_s']} | {v['images_per_s']} | {v['speedup_vs_naive']}x |"
                  for k, v in res["index"].items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
