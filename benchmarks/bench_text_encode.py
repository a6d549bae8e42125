"""Text encoding: length-bucketed batches against unsorted ones and the earlier character-length sort.

    python benchmarks/bench_text_encode.py        # results/text_encode_cpu.md (+ .json)

Input: a deterministic catalog-like mix of short titles (2-6 words, 70%) and descriptions (15-60 words),
in shuffled order, words from the ImageNet class names. Variants, interleaved so they share the load:
- ``unsorted``: batches in input order, each padded to its longest text (``encode_texts(bucket=False)``);
- ``char-sorted``: sorted by character count, tokenized per batch (what encode_texts did before);
- ``token-bucketed``: the current ``encode_texts``: tokenized once per chunk, sorted by token count,
  each batch cut to its longest text.
Reports texts/s, the padding share (padded tokens / all tokens fed) and the largest difference from
the unsorted embeddings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsearch.encode.pipeline import encode_texts  # noqa: E402
from mmsearch.models.device import autocast  # noqa: E402
from mmsearch.models.factory import create_model  # noqa: E402


def texts(n: int, seed: int = 0) -> list[str]:
    import timm.data

    words = sorted({w.strip(",.").lower() for d in timm.data.ImageNetInfo().label_descriptions() for w in d.split()})
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 7)) if rng.random() < 0.7 else int(rng.integers(15, 61))
        out.append(" ".join(rng.choice(words, size=k)))
    return out


def char_sorted(model, tokenizer, items: list[str], batch_size: int = 64) -> np.ndarray:
    """encode_texts as it was before length bucketing (sort by characters, tokenize per batch)."""
    out = np.zeros((len(items), model.embed_dim), np.float32)
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    with torch.inference_mode(), autocast(torch.device("cpu")):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = model.encode_text(tokenizer([items[i] for i in idx])).float().numpy()
    return out


def padding_share(tokenizer, items: list[str], variant: str, batch_size: int = 64) -> float:
    """Padded positions / all positions the model sees, for the variant's batching."""
    lengths = tokenizer(items)["attention_mask"].sum(1).numpy()
    if variant == "unsorted":
        order = np.arange(len(items))
    elif variant == "char-sorted":
        order = np.argsort([len(t) for t in items], kind="stable")
    else:  # one chunk here (n <= 4096): a global sort by token count
        order = np.argsort(lengths, kind="stable")
    fed = real = 0
    for s in range(0, len(order), batch_size):
        b = lengths[order[s:s + batch_size]]
        fed += int(b.max()) * len(b)
        real += int(b.sum())
    return round(1 - real / fed, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_encode_cpu")
    args = ap.parse_args()
    model, _, tokenizer = create_model(args.model, device="cpu")
    items = texts(args.texts)
    variants = {
        "unsorted": lambda: encode_texts(model, tokenizer, items, bucket=False),
        "char-sorted": lambda: char_sorted(model, tokenizer, items),
        "token-bucketed": lambda: encode_texts(model, tokenizer, items),
    }
    encode_texts(model, tokenizer, items[:64])  # warm-up
    speed: dict[str, list[float]] = {v: [] for v in variants}
    emb: dict[str, np.ndarray] = {}
    for _ in range(args.runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            emb[name] = fn()
            speed[name].append(len(items) / (time.perf_counter() - t0))
    rows = []
    for name, ts in speed.items():
        rows.append({"variant": name, "texts_per_s": [round(t, 1) for t in ts], "best": round(max(ts), 1),
                     "median": round(statistics.median(ts), 1), "padding_share": padding_share(tokenizer, items, name),
                     "max_abs_diff_vs_unsorted": float(np.abs(emb[name] - emb["unsorted"]).max())})
        print(rows[-1], flush=True)
    base = max(speed["unsorted"])
    cmd = "python benchmarks/bench_text_encode.py " + " ".join(sys.argv[1:])
    res = {"command": cmd.strip(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cpus": os.cpu_count(), "model": args.model, "texts": len(items), "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [f"# Text encoding, `{args.model}`, CPU", "", f"Command: `{res['command']}`  ",
             f"Date: {res['date']}, {res['cpus']} CPUs; {len(items)} texts (70% 2-6 words, 30% 15-60 words), "
             f"batch 64, {args.runs} interleaved runs", "",
             "| variant | texts/s (runs) | best | speed-up vs unsorted (bests) | padding share | max abs diff vs unsorted |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['texts_per_s']} | {r['best']} | {r['best'] / base:.2f} | {r['padding_share']} "
              f"| {r['max_abs_diff_vs_unsorted']:.1e} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
