"""Keyword + semantic (hybrid) search on a titled photo catalog, and on the same photos untitled.

Data (real photos, ``../shared/photos``): ``--per-set`` photos from each of clothing-cc0 (CC0) and
caltech101-ccby (CC BY 4.0), sampled with a fixed seed, copied flat under neutral names (p0001.jpg ...,
so file and folder names carry no label). The *titled* catalog gives each photo a shop-style title: a
product code no embedding knows, after the label for every other item ("t-shirt KX-4821", "QB-1093"), as
shops whose titles are bare model numbers have. Queries:

- ``code``: the product code alone ("KX-4821"): one target, the item;
- ``code+type``: label and code ("t-shirt KX-4821"): one target;
- ``type``: "a photo of a {label}": every item with that label is a target;
- ``untitled type``: the same type queries on the untitled catalog (what a photo library is).

Methods: ``semantic`` (embeddings only), ``keyword`` (BM25 only), ``hybrid@w`` (semantic score + ``w`` times
the IDF-weighted share of the query's phrases an item matches, w = ``--weights``, + the identifier bonus:
``identifier_weight`` times the share of the query's terms with a digit it holds, search/hybrid.py),
``hybrid@w id=0`` (the same without the identifier bonus) and ``rrf`` (reciprocal-rank fusion, k = 60, of
the semantic and keyword top 100). Metrics: hit@1, hit@10 (a target in the top 1 / 10), MRR (first target),
P@10 (share of the top 10 that are targets; the type queries). ``mean`` averages the three titled query
kinds with equal weight. ``--seed`` draws another sample of photos and codes (a second, held-out run).

    python benchmarks/bench_hybrid.py --per-set 200 --out benchmarks/results/hybrid
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mmsearch import SearchEngine, build_index
from mmsearch.config import RankingCfg
from mmsearch.search.hybrid import rrf

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "photos"
SETS = ("clothing-cc0", "caltech101-ccby")
shipped = RankingCfg()


def sample(photos: Path, per_set: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for name in SETS:
        rows = [json.loads(line) for line in (photos / name / "items.jsonl").read_text().splitlines() if line.strip()]
        for r in rng.sample(rows, min(per_set, len(rows))):
            out.append({"src": photos / name / "images" / r["file"], "label": r["text"]})
    codes = rng.sample(range(1000, 10000), len(out))
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    for r, c in zip(out, codes):
        r["code"] = f"{rng.choice(letters)}{rng.choice(letters)}-{c}"
    return out


def write_catalog(rows: list[dict], folder: Path, titled: bool) -> None:
    folder.mkdir(parents=True)
    for n, r in enumerate(rows):
        r["id"] = f"p{n:04d}.jpg"
        shutil.copy(r["src"], folder / r["id"])
    if titled:
        (folder / "catalog.jsonl").write_text("".join(json.dumps({"image": r["id"], "title": title(n, r)}) + "\n"
                                                      for n, r in enumerate(rows)))


def title(n: int, r: dict) -> str:
    """Every other item is titled by its product code alone, as many shops' items are."""
    return f"{r['label']} {r['code']}" if n % 2 == 0 else r["code"]


def score(ranked: list[str], targets: set[str]) -> dict:
    first = next((i for i, x in enumerate(ranked) if x in targets), None)
    return {"hit@1": float(first == 0), "hit@10": float(first is not None and first < 10),
            "mrr": 0.0 if first is None else 1.0 / (first + 1),
            "p@10": sum(x in targets for x in ranked[:10]) / min(10, len(targets))}


def run_method(engine: SearchEngine, method: str, text: str) -> list[str]:
    if method == "rrf":
        sem = engine.search(text=text, k=100, mode="semantic")
        kw = engine.search(text=text, k=100, mode="keyword")
        fid = {h.id: i for i, h in enumerate(sem + kw)}
        names = {i: x for x, i in fid.items()}
        ids, _ = rrf([np.array([fid[h.id] for h in sem]), np.array([fid[h.id] for h in kw])])
        return [names[int(i)] for i in ids[:10]]
    if method.startswith("hybrid"):
        weight, _, no_id = method.split("@")[1].partition(" ")
        engine.ranking.keyword_weight = float(weight)
        engine.ranking.identifier_weight = 0.0 if no_id else shipped.identifier_weight
        return [h.id for h in engine.search(text=text, k=10, mode="hybrid")]
    return [h.id for h in engine.search(text=text, k=10, mode=method)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--per-set", type=int, default=200)
    ap.add_argument("--weights", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = sample(a.photos, a.per_set, a.seed)
    methods = ["semantic", "keyword", "rrf"] + [f"hybrid@{w}" for w in a.weights.split(",")] + \
        [f"hybrid@{shipped.keyword_weight} id=0"]
    labels = sorted({r["label"] for r in rows})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        engines = {}
        for titled in (True, False):
            cat = Path(tmp) / ("titled" if titled else "untitled")
            write_catalog(rows, cat, titled)
            build_index(cat, out=cat.parent / f"{cat.name}-index", model=a.model, device="cpu", progress=False)
            engines[titled] = SearchEngine.open(cat.parent / f"{cat.name}-index", device="cpu")
        build_s = time.time() - t0
        by_label = {lab: {r["id"] for r in rows if r["label"] == lab} for lab in labels}
        queries = {
            "code": [(r["code"], {r["id"]}, True) for r in rows],
            "code+type": [(f"{r['label']} {r['code']}", {r["id"]}, True) for r in rows],
            "type": [(f"a photo of a {lab}", by_label[lab], True) for lab in labels],
            "untitled type": [(f"a photo of a {lab}", by_label[lab], False) for lab in labels],
        }
        results: dict[str, dict[str, dict]] = {}
        for kind, qs in queries.items():
            for m in methods:
                if kind == "untitled type" and m == "keyword":
                    continue  # no words to match: neutral file names, no titles
                per = [score(run_method(engines[titled], m, text), targets) for text, targets, titled in qs]
                results.setdefault(kind, {})[m] = {k: round(float(np.mean([p[k] for p in per])), 3) for k in per[0]}
                print(kind, m, results[kind][m], flush=True)
            for e in engines.values():
                e.ranking = RankingCfg()
            auto = [score([h.id for h in engines[qs[0][2]].search(text=t, k=10)], tg) for t, tg, _ in qs]
            results[kind]["auto (default)"] = {k: round(float(np.mean([p[k] for p in auto])), 3) for k in auto[0]}
    titled = ("code", "code+type", "type")
    results["mean"] = {m: {k: round(float(np.mean([results[q][m][k] for q in titled])), 3) for k in ("hit@1", "mrr")}
                       for m in results["type"]}
    print("mean", results["mean"])
    if a.out:
        a.out.with_suffix(".json").write_text(json.dumps({"items": len(rows), "labels": len(labels),
                                                           "build_s": round(build_s, 1), "results": results}, indent=1))
        lines = ["# Hybrid (keyword + semantic) search on titled and untitled real photos", "",
                 f"Command: `python benchmarks/bench_hybrid.py --per-set {a.per_set} --weights {a.weights} "
                 f"--seed {a.seed} --out {a.out}`",
                 "", f"{len(rows)} photos ({a.per_set} each from {', '.join(SETS)}), {len(labels)} labels; model "
                 f"`{a.model}`. auto (default) = hybrid with the shipped weights on the titled catalog, "
                 "semantic on the untitled one.", ""]
        for kind, table in results.items():
            if kind == "mean":
                lines += ["## mean of code, code+type and type", "", "| method | hit@1 | MRR |", "|---|---|---|"]
                lines += [f"| {m} | {v['hit@1']} | {v['mrr']} |" for m, v in table.items()] + [""]
                continue
            lines += [f"## {kind} ({len(queries[kind])} queries)", "", "| method | hit@1 | hit@10 | MRR | P@10 |",
                      "|---|---|---|---|---|"]
            lines += [f"| {m} | {v['hit@1']} | {v['hit@10']} | {v['mrr']} | {v['p@10']} |" for m, v in table.items()]
            lines.append("")
        a.out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
