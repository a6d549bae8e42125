"""Out-of-domain text->image retrieval: the trained ``default`` against the zero-shot ``bridge``.

``default`` was trained on Fluent Emoji 3D renders only (mmsearch/models/weights/MODEL_CARD.md). This benchmark
asks whether it still wins, or at least does not lose, on real image domains it never saw. Data comes
from Debian packages, fetched and unpacked into a cache folder (nothing of it is committed):

    mkdir -p ~/.cache/mmsearch-gen && cd ~/.cache/mmsearch-gen
    apt-get update && apt-get download openclipart-png dataset-fashion-mnist
    dpkg-deb -x openclipart-png_*_all.deb openclipart
    dpkg-deb -x dataset-fashion-mnist_*_all.deb fashion-mnist
    cd - && nice -n 10 python benchmarks/bench_generalization.py --data ~/.cache/mmsearch-gen \\
        --out benchmarks/results/generalization

Domains (a fixed, seeded sample of each; ``--per-domain`` images):

* **openclipart**: clip art from ``openclipart-png``, sampled evenly over its leaf folders so no folder
  (hundreds of near-identical stars) dominates. Query text = cleaned file name + folder category
  ("flying wasp gerald, animals bugs"; names are noisy, some Italian, some carry the author). Every
  sampled image whose cleaned text is identical to the query's is a correct answer.
* **fashion-mnist**: the 10k test images of ``dataset-fashion-mnist``, an equal number per class,
  upscaled from 28x28 grey to 224x224 RGB (bicubic). Queries "a photo of a {class}" and the bare class
  name; every image of the class is correct, so precision@10 and mean average precision are reported.
  With only 10 queries per template those intervals are wide, so the same space is also scored the
  other way round: zero-shot classification accuracy, each of the images taking its most similar class
  text (one sample per image).

Images are written under neutral names (``000123.png``) into a folder without catalog.jsonl, so the
index has no titles and text queries are answered by the shared image-text space alone. Each domain is
indexed with ``default`` and with ``bridge`` through ``build_index`` / ``SearchEngine``; queries rank
the whole index. Chance is the mean over 200 random rankings of the same queries. Brackets: 95%
percentile bootstrap over queries; the "default - bridge" row is a paired bootstrap (same resampled
queries for both models), so an interval that excludes 0 is a real difference on this sample.

EfficientNet runs once per image for both models (the backbone is memoised in-process by input tensor,
as in bench_quality.py; heads and ranking are the real ones).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmsearch import SearchEngine, build_index
from mmsearch.evaluate import first_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import memoise_backbone  # noqa: E402

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
FASHION_TEMPLATES = ("a photo of a {}", "{}")
METRICS = ("R@1", "R@10", "MRR", "P@10", "mAP")
MODELS = {"bridge": "bridge", "default": "default"}  # row name -> model; --candidate adds one
PAIRS = [("default", "bridge")]  # paired differences reported (a - b)


# ------------------------------------------------------------------------------------------ data
def clean_words(s: str) -> list[str]:
    """Words of a file or folder name: split on separators and camelCase, drop tokens with digits,
    one- and two-letter tokens and file-format leftovers ("svg", "png")."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", s)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", s) if w]
    return [w for w in words if len(w) > 2 and not any(c.isdigit() for c in w) and w not in ("svg", "png")]


def openclipart_words(path: Path, root: Path) -> tuple[list[str], list[str]]:
    """(name words, folder-category words not in the name) of a clip; a clip without name words is
    named by its folder's last word."""
    name = clean_words(path.stem)
    category = [w for part in path.parent.relative_to(root).parts for w in clean_words(part)]
    name = list(dict.fromkeys(name)) or category[-1:]
    category = [w for w in dict.fromkeys(category) if w not in name]
    return name, category


def openclipart_text(path: Path, root: Path) -> str:
    name, category = openclipart_words(path, root)
    return ", ".join(x for x in (" ".join(name), " ".join(category)) if x)


def openclipart_root(src: Path) -> Path:
    root = src / "usr/share/openclipart/png"
    if not root.is_dir():
        sys.exit(f"error: {root} not found; unpack openclipart-png into {src} (see the docstring)")
    return root


def sample_openclipart(root: Path, n: int, seed: int) -> list[Path]:
    """This benchmark's sample: round-robin over shuffled leaf folders until ``n`` images.
    (benchmarks/build_corpus.py keeps these images, and every clip sharing their name, out of training.)"""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for p in sorted(root.rglob("*.png")):
        by_folder[p.parent].append(p)
    rng = random.Random(seed)
    folders = sorted(by_folder)
    rng.shuffle(folders)
    for f in folders:
        rng.shuffle(by_folder[f])
    picked: list[Path] = []
    while len(picked) < n and any(by_folder.values()):
        for f in folders:
            if by_folder[f] and len(picked) < n:
                picked.append(by_folder[f].pop())
    return picked


def build_openclipart(src: Path, dst: Path, n: int, seed: int) -> list[dict]:
    """The sampled clips under neutral names; returns queries (text -> target ids)."""
    root = openclipart_root(src)
    picked = sample_openclipart(root, n, seed)
    targets: dict[str, list[str]] = defaultdict(list)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(picked):
        out = dst / "images" / f"{i:06d}.png"
        if not out.exists():
            out.symlink_to(p.resolve())
        text = openclipart_text(p, root)
        if text:
            targets[text].append(f"images/{out.name}")
    return [{"text": t, "targets": ids, "group": "clipart"} for t, ids in sorted(targets.items())]


def idx_array(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def build_fashion(src: Path, dst: Path, n: int, seed: int) -> list[dict]:
    base = src / "usr/share/datasets/fashion-mnist"
    img_f, lab_f = base / "t10k-images-idx3-ubyte.gz", base / "t10k-labels-idx1-ubyte.gz"
    if not img_f.is_file():
        sys.exit(f"error: {img_f} not found; unpack dataset-fashion-mnist into {src} (see the docstring)")
    images, labels = idx_array(img_f, 16).reshape(-1, 28, 28), idx_array(lab_f, 8)
    rng = np.random.default_rng(seed)
    per_class = n // len(FASHION_CLASSES)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    targets: dict[int, list[str]] = defaultdict(list)
    for c in range(len(FASHION_CLASSES)):
        for j in sorted(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)):
            out = dst / "images" / f"{j:06d}.png"
            if not out.exists():
                Image.fromarray(images[j]).resize((224, 224), Image.BICUBIC).convert("RGB").save(out)
            targets[c].append(f"images/{out.name}")
    return [{"text": t.format(name), "targets": targets[c], "group": t.format("{class}")}
            for t in FASHION_TEMPLATES for c, name in enumerate(FASHION_CLASSES)]


# --------------------------------------------------------------------------------------- metrics
def query_metrics(ranked: list[str], targets: list[str]) -> dict[str, float]:
    """R@1, R@10, reciprocal rank, precision@10 and average precision of one full ranking."""
    wanted = set(targets)
    rel = np.array([i in wanted for i in ranked], dtype=np.float64)
    r = first_rank(ranked, targets)
    hits = np.flatnonzero(rel) + 1  # 1-based ranks of every relevant item
    ap = float((np.arange(1, len(hits) + 1) / hits).sum() / len(wanted))  # mean precision at each relevant
    return {"R@1": float(r is not None and r <= 1), "R@10": float(r is not None and r <= 10),
            "MRR": 1.0 / r if r else 0.0, "P@10": float(rel[:10].mean()), "mAP": ap}


def table(per_query: list[dict[str, float]]) -> np.ndarray:
    return np.array([[q[m] for m in METRICS] for q in per_query])  # (Q, M)


def bootstrap(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of the column means of values (Q, M), resampling queries (rows)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(1)  # (n, M)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def summary(values: np.ndarray) -> dict[str, list[float]]:
    lo, hi = bootstrap(values)
    return {m: [float(values[:, i].mean()), float(lo[i]), float(hi[i])] for i, m in enumerate(METRICS)}


def chance(queries: list[dict], ids: list[str], n: int = 200, seed: int = 0) -> np.ndarray:
    rng = random.Random(seed)
    out = []
    for q in queries:
        rows = []
        for _ in range(n):
            ranked = ids[:]
            rng.shuffle(ranked)
            rows.append([query_metrics(ranked, q["targets"])[m] for m in METRICS])
        out.append(np.mean(rows, 0))
    return np.array(out)


def class_correct(engine: SearchEngine, queries: list[dict]) -> np.ndarray:
    """Zero-shot classification, the other direction of the same space: each indexed image takes the
    query text it is most similar to; (n_images,) 1.0 where that query lists the image as a target.
    ``queries`` must partition the index (every image the target of exactly one query)."""
    fid_to_id = {row["fid"]: row["id"] for row in engine.items}
    ch = engine.backend.channels["image"]
    order = np.argsort([fid_to_id[int(f)] for f in ch.ids])  # rows sorted by item id: same order per model
    ids = [fid_to_id[int(f)] for f in ch.ids[order]]
    vecs = np.asarray(ch.vectors, dtype=np.float32)[order]  # (n, D)
    label = {t: i for i, q in enumerate(queries) for t in q["targets"]}
    pred = (vecs @ engine.encode_texts([q["text"] for q in queries]).T).argmax(1)  # (n,)
    return np.array([float(pred[i] == label[x]) for i, x in enumerate(ids)])


def is_partition(queries: list[dict], ids: set[str]) -> bool:
    targets = [t for q in queries for t in q["targets"]]
    return len(targets) == len(set(targets)) and set(targets) == ids


# ------------------------------------------------------------------------------------------- run
def run_domain(name: str, catalog: Path, queries: list[dict], work: Path) -> dict:
    res: dict = {"images": len(list((catalog / "images").iterdir())), "groups": {}}
    per_model: dict[str, np.ndarray] = {}
    accuracy: dict[str, dict[str, np.ndarray]] = defaultdict(dict)  # group -> model -> (n_images,)
    for model, spec in MODELS.items():
        out = work / f"index-{name}-{model}"
        t = time.perf_counter()
        report = build_index(catalog, out=out, model=spec, device="cpu", num_workers=0, progress=False)
        engine = SearchEngine.open(out, device="cpu")
        # images the index skipped (unreadable, too large) cannot be found by either model: drop them
        indexed = {row["id"] for row in engine.items}
        queries = [{**q, "targets": [t for t in q["targets"] if t in indexed]} for q in queries]
        queries = [q for q in queries if q["targets"]]
        res.update(indexed=len(indexed), skipped=report.skipped, queries=len(queries))
        hits = engine.search_batch([{"text": q["text"]} for q in queries], k=len(engine))
        per_model[model] = table([query_metrics([h.id for h in hs], q["targets"]) for hs, q in zip(hits, queries)])
        ids = sorted(row["id"] for row in engine.items)
        for group in sorted({q["group"] for q in queries}):
            members = [q for q in queries if q["group"] == group]
            if len(members) > 1 and is_partition(members, indexed):
                accuracy[group][model] = class_correct(engine, members)
        print(f"{name} {model}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rand = chance(queries, ids)
    for group in sorted({q["group"] for q in queries}):
        rows = np.array([q["group"] == group for q in queries])
        g = {"n": int(rows.sum()), "chance": {m: float(v) for m, v in zip(METRICS, rand[rows].mean(0))}}
        for model in MODELS:
            g[model] = summary(per_model[model][rows])
        for a, b in PAIRS:
            g[f"{a} - {b}"] = summary(per_model[a][rows] - per_model[b][rows])
        if group in accuracy:  # image -> class text over every image: many more samples than queries
            acc = accuracy[group]
            g["classification"] = {"n_images": len(acc["bridge"]), "chance": 1.0 / g["n"], **{
                k: [float(v.mean()), *map(float, (x[0] for x in bootstrap(v[:, None])))]
                for k, v in (*acc.items(), *((f"{a} - {b}", acc[a] - acc[b]) for a, b in PAIRS))}}
        res["groups"][group] = g
    res["examples"] = [q["text"] for q in queries[:: max(1, len(queries) // 8)]][:8]
    return res


def fmt(cell: list[float]) -> str:
    return f"{cell[0]:.3f} [{cell[1]:.2f}, {cell[2]:.2f}]"


def render(results: dict, command: str) -> str:
    lines = ["# Out-of-domain text->image retrieval: trained `default` vs zero-shot `bridge`", "",
             f"Command: `{command}`", "",
             "Catalogs indexed without titles; each text query ranks the whole catalog. Brackets: 95% "
             "bootstrap interval over queries; `default - bridge` is a paired bootstrap of the per-query "
             "difference (an interval excluding 0 is a real difference on this sample). P@10 and mAP "
             "matter where many images are correct (Fashion-MNIST).", ""]
    for domain, d in results["domains"].items():
        skipped = f"; {len(d['skipped'])} skipped by the indexer, their queries dropped" if d["skipped"] else ""
        lines += [f"## {domain} ({d['indexed']} images indexed, {d['queries']} queries{skipped})", "",
                  "Example queries: " + "; ".join(f"\"{e}\"" for e in d["examples"]), ""]
        for group, g in d["groups"].items():
            lines += [f"### queries: {group} (n = {g['n']})", "",
                      "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|",
                      "| chance | " + " | ".join(f"{g['chance'][m]:.3f}" for m in METRICS) + " |"]
            for row in (*MODELS, *(f"{a} - {b}" for a, b in PAIRS)):
                lines.append(f"| {row} | " + " | ".join(fmt(g[row][m]) for m in METRICS) + " |")
            lines.append("")
            if "classification" in g:
                c = g["classification"]
                lines += [f"Zero-shot classification (each of the {c['n_images']} images takes the most similar "
                          f"of the {g['n']} query texts; accuracy, chance {c['chance']:.3f}): "
                          + "; ".join(f"{k} {fmt(c[k])}" for k in (*MODELS, *(f"{a} - {b}" for a, b in PAIRS))),
                          ""]
    lines.append(f"Total time: {results['seconds']} s (both models, all domains, one process).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with the unpacked .deb packages")
    ap.add_argument("--per-domain", type=int, default=500, help="images per domain")
    ap.add_argument("--domains", nargs="+", default=["openclipart", "fashion-mnist"])
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/bench_generalization"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generalization"))
    ap.add_argument("--candidate", help="also a candidate model (a checkpoint), with paired candidate - default rows")
    args = ap.parse_args()
    if args.candidate:
        MODELS["candidate"] = args.candidate
        PAIRS.append(("candidate", "default"))
    logging.basicConfig(level=logging.WARNING)
    memoise_backbone()
    torch.set_num_threads(args.threads)
    builders = {"openclipart": (build_openclipart, "openclipart"),
                "fashion-mnist": (build_fashion, "fashion-mnist")}
    results: dict = {"per_domain": args.per_domain, "seed": args.seed, "domains": {}}
    t0 = time.perf_counter()
    for domain in args.domains:
        build, sub = builders[domain]
        catalog = args.work / f"catalog-{domain}"
        queries = build(args.data / sub, catalog, args.per_domain, args.seed)
        results["domains"][domain] = run_domain(domain, catalog, queries, args.work)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    md = render(results, " ".join(["python"] + sys.argv))
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
