"""CPU forward-pass options for the image tower that keep embeddings (and so retrieval) unchanged.

    python benchmarks/bench_cpu_options.py        # results/cpu_options.md (+ .json)

The fast pipeline on this machine is bound by the image tower's forward (~35 ms/image for `default` on
2 cores, benchmarks/results/encode_cpu_quiet_default.md). Measured here, model only, on the same batch
of preprocessed photos, interleaved repeats:
- ``eager``: what ``EncodeCfg()`` runs (fp32, channels_last);
- ``compile``: ``torch.compile`` (inductor) of the same callable, what ``EncodeCfg(compile=True)`` runs;
- bf16 (oneDNN) only if this CPU supports it (AVX512-BF16 / AMX); otherwise the report says so.
Agreement: cosine of each option's embeddings with eager's (min over the batch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mmsearch.config import EncodeCfg  # noqa: E402
from mmsearch.encode.pipeline import image_forward  # noqa: E402
from mmsearch.models.factory import create_model  # noqa: E402
from mmsearch.models.preprocess import ResizeCropU8, normalize_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "MMSEARCH_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "mmsearch-bench"))))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_options")
    args = ap.parse_args()
    from bench_encode import input_set

    from mmsearch.catalog.images import load_image

    model, _, _ = create_model(args.model, device="cpu")
    icfg = model.cfg.image
    u8 = torch.stack([ResizeCropU8(icfg)(load_image(p, draft_size=2 * icfg.resize_size))
                      for p in input_set(args.batch, args.cache)])
    x = normalize_batch(u8, icfg.mean, icfg.std, channels_last=True)
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    options = {"eager": image_forward(model, EncodeCfg())}
    t0 = time.perf_counter()
    options["compile"] = image_forward(model, EncodeCfg(compile=True))
    with torch.inference_mode():
        options["compile"](x)  # compiles here
    compile_s = time.perf_counter() - t0
    if bf16:
        def bf16_forward(batch, fwd=options["eager"]):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fwd(batch)
        options["bf16 autocast"] = bf16_forward
    speed: dict[str, list[float]] = {k: [] for k in options}
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for fwd in options.values():
            fwd(x)  # warm-up
        for _ in range(args.repeats):
            for name, fwd in options.items():
                t = time.perf_counter()
                res = fwd(x)
                speed[name].append(args.batch / (time.perf_counter() - t))
                out[name] = res["image"].float().numpy()
    rows = []
    for name, ts in speed.items():
        cos = float((out[name] * out["eager"]).sum(1).min())
        pairs = statistics.median(t / e for t, e in zip(ts, speed["eager"]))
        rows.append({"option": name, "images_per_s": [round(t, 2) for t in ts], "best": round(max(ts), 2),
                     "median_pair_ratio_vs_eager": round(pairs, 3), "min_cosine_vs_eager": round(cos, 6)})
        print(rows[-1], flush=True)
    cmd = "python benchmarks/bench_cpu_options.py " + " ".join(sys.argv[1:])
    res = {"command": cmd.strip(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn_bf16_supported": bf16,
           "compile_seconds": round(compile_s, 1), "model": args.model, "batch": args.batch, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [f"# CPU forward options, `{args.model}` image tower, batch {args.batch}", "",
             f"Command: `{res['command']}`  ",
             f"Date: {res['date']}, {os.cpu_count()} CPUs, torch {torch.__version__}, CPU capability "
             f"{res['cpu_capability']}, oneDNN bf16 supported: {bf16}; torch.compile took {res['compile_seconds']} s "
             f"(first batch)", "",
             "| option | images/s (interleaved repeats) | best | speed-up vs eager (median of pairs) | min cosine vs eager |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['option']} | {r['images_per_s']} | {r['best']} | {r['median_pair_ratio_vs_eager']} "
              f"| {r['min_cosine_vs_eager']} |" for r in rows]
    if not bf16:
        lines += ["", "bf16: not measured; this CPU has no AVX512-BF16 or AMX, so oneDNN would emulate it "
                      "(`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is False)."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
