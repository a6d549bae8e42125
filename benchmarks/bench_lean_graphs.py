"""The shipped ONNX graphs (float16 weights) against float32 graphs of the same model, on photos.

    python benchmarks/bench_lean_graphs.py --photos ../shared/photos/caltech101-ccby/images --per-class 5

Exports float32 graphs of ``--model`` into a temporary folder (needs torch), encodes the same photos and
text queries (each class name, and "a photo of a {name}") with both through ``encode/lean.py``, and prints
R@1 / R@10 / P@10 (a hit: a photo of the query's class), the cosine of the embeddings and the overlap of
the top-10 lists. Results: benchmarks/results/lean_graphs.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from mmsearch.config import ModelCfg, from_dict
from mmsearch.encode import lean
from mmsearch.models import graphs, known


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, required=True, help="a folder of class folders of photos")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    from mmsearch.models.factory import create_model

    classes = sorted(p.name for p in args.photos.iterdir() if p.is_dir())
    paths, labels = [], []
    for c in classes:
        for p in sorted((args.photos / c).iterdir())[:args.per_class]:
            paths.append(str(p))
            labels.append(c)
    shipped = graphs.entry_for(known.lookup(args.model).fingerprint)
    folder = Path(tempfile.mkdtemp(prefix="fp32-graphs-"))
    model, _, _ = create_model(args.model, device="cpu")
    ref = graphs.export_model(model, args.model, folder=folder, fp16=False)
    cfg = from_dict(ModelCfg, shipped["cfg"])
    variants = {"float16 weights (shipped)": lean.LeanTowers(graphs.ShippedTowers(shipped), graphs.tokenizer_for(shipped), "")}
    real_dir = graphs.graphs_dir
    graphs.graphs_dir = lambda: folder  # type: ignore[assignment]
    variants["float32"] = lean.LeanTowers(graphs.ShippedTowers(ref), variants["float16 weights (shipped)"].tokenizer, "")
    graphs.graphs_dir = real_dir  # type: ignore[assignment]
    queries = [c.replace("_", " ") for c in classes] + [f"a photo of a {c.replace('_', ' ')}" for c in classes]
    qlab = classes + classes
    out, res = {}, {}
    for kind, towers in variants.items():
        img = lean.encode_images(towers, cfg.image, paths)
        emb, lab = img.channels["image"], np.array([labels[i] for i in img.ok])
        text = lean.encode_texts(towers, queries)
        order = np.argsort(-(text @ emb.T), axis=1)[:, :10]
        out[kind] = {"R@1": float(np.mean([lab[o[0]] == c for o, c in zip(order, qlab)])),
                     "R@10": float(np.mean([np.any(lab[o] == c) for o, c in zip(order, qlab)])),
                     "P@10": float(np.mean([np.mean(lab[o] == c) for o, c in zip(order, qlab)]))}
        res[kind] = (emb, text, order)
    (a, b) = res.values()
    out["image cosine min"] = float(np.sum(a[0] * b[0], axis=1).min())
    out["text cosine min"] = float(np.sum(a[1] * b[1], axis=1).min())
    out["top-10 overlap"] = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a[2], b[2])]))
    out["top-1 same"] = float(np.mean(a[2][:, 0] == b[2][:, 0]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
