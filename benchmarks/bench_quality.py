"""Retrieval quality on the held-out test split: zero-shot bridge vs trained fusions, over seeds.

    python benchmarks/build_corpus.py --fluent fluent/package --emojibase emojibase/package --out corpus
    python benchmarks/bench_quality.py --corpus corpus --seeds 0 1 2 --out benchmarks/results/quality

For each seed and fusion it trains ``default`` from scratch on corpus/train (early stopping on corpus/val), indexes the
test images **without titles** (so text queries are answered by the shared space, not by title
matching) and runs corpus/test/queries.jsonl through ``mmsearch.evaluate`` (the code behind
``mmsearch eval``). Rows: chance, the zero-shot bridge (``bridge``), each trained fusion, and for the
composed queries the image-only and text-only rankings of the same queries. The fusion to ship is
picked by mean validation Recall@10, never by the test numbers.

Backbone features are memoised in-process by input tensor, so the images are run through
EfficientNet once for all models (the heads, fusion and ranking code are the real ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from mmsearch import SearchEngine, build_index
from mmsearch.evaluate import EvalQuery, evaluate, read_queries
from mmsearch.models.encoders import EfficientNetLite0
from mmsearch.train.loop import load_train_cfg, train

COMPOSED_KINDS = ("skin_tone", "gender", "recolour")


def memoise_backbone() -> None:
    """Every EfficientNetLite0 carries the same packaged weights, so one memo (input tensor -> pooled
    features) serves all models of this process."""
    memo: dict[str, torch.Tensor] = {}
    forward = EfficientNetLite0.forward

    def cached(self, x):
        keys = [hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest() for t in x]
        miss = [i for i, k in enumerate(keys) if k not in memo]
        if miss:
            for i, f in zip(miss, forward(self, x[miss])):
                memo[keys[i]] = f.detach()
        return torch.stack([memo[k] for k in keys])

    EfficientNetLite0.forward = cached


def images_only_catalog(test: Path, dst: Path) -> Path:
    """Symlinks to the test images with no catalog.jsonl: items have no title, ids stay images/<name>."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for p in sorted((test / "images").iterdir()):
        link = dst / "images" / p.name
        if not link.exists():
            os.symlink(p.resolve(), link)
    return dst


def kind_of(line: dict) -> str:
    return line.get("kind") or ("image+text" if line.get("image") and line.get("text") else "x")


def load_queries(test: Path) -> dict[str, list[EvalQuery]]:
    raw = [json.loads(x) for x in (test / "queries.jsonl").read_text().splitlines() if x.strip()]
    parsed = read_queries(test / "queries.jsonl")
    groups: dict[str, list[EvalQuery]] = {"text": [], "photo": [], "composed": [], "composed_image_only": [],
                                          "composed_text_only": []}
    for r, q in zip(raw, parsed):
        k = kind_of(r)
        if k in COMPOSED_KINDS:
            groups["composed"].append(q)
            groups["composed_image_only"].append(dataclasses.replace(q, text=None))
            groups["composed_text_only"].append(dataclasses.replace(q, image=None))
        elif k in groups:
            groups[k].append(q)
    return groups


def score(engine: SearchEngine, groups: dict[str, list[EvalQuery]], which: tuple[str, ...]) -> dict[str, dict]:
    return {g: evaluate(None, groups[g], engine=engine, bootstrap=500)["overall"] for g in which if groups[g]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fusions", nargs="+", default=["sum", "concat", "gated", "combiner"])
    ap.add_argument("--config", default="default", help="train config name or JSON file")
    ap.add_argument("--epochs", type=int, default=None, help="override the train config's epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_quality"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    memoise_backbone()
    torch.set_num_threads(args.threads)
    corpus, work = args.corpus, args.work
    work.mkdir(parents=True, exist_ok=True)
    test_catalog = images_only_catalog(corpus / "test", work / "test_images")
    groups = load_queries(corpus / "test")
    n_items = len(list((corpus / "test" / "images").iterdir()))
    all_groups = ("text", "photo", "composed", "composed_image_only", "composed_text_only")
    results: dict = {"n_items": n_items, "queries": {g: len(v) for g, v in groups.items()}, "models": {}}

    def run_model(name: str, model: str) -> dict:
        out = work / f"index-{name}"
        build_index(test_catalog, out=out, model=model, device="cpu", num_workers=0, progress=False)
        engine = SearchEngine.open(out, device="cpu")
        return score(engine, groups, all_groups)

    t0 = time.perf_counter()
    results["models"]["zero-shot bridge"] = {"seeds": {"-": run_model("bridge", "bridge")}}
    base_cfg = load_train_cfg(args.config)
    if args.epochs:
        base_cfg = dataclasses.replace(base_cfg, epochs=args.epochs)
    for fusion in args.fusions:
        entry = {"seeds": {}, "val_recall": {}, "train_s": {}, "epochs": {}}
        for seed in args.seeds:
            run = work / f"run-{fusion}-s{seed}"
            cfg = dataclasses.replace(base_cfg, seed=seed, fusion=fusion)
            t = time.perf_counter()
            if (run / "model.pt").exists() and (run / "state.pt").exists():
                rep = None
            else:
                rep = train(corpus / "train", out=run, model="default", cfg=cfg,
                            composed=corpus / "train" / "triplets.jsonl", val=corpus / "val",
                            val_composed=corpus / "val" / "triplets.jsonl", device="cpu", progress=False)
            entry["train_s"][seed] = round(time.perf_counter() - t, 1)
            metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            entry["val_recall"][seed] = max(m["val_recall"] for m in metrics)
            entry["epochs"][seed] = len(metrics) if rep is None else rep.epochs_run
            entry["seeds"][seed] = run_model(f"{fusion}-s{seed}", str(run / "model.pt"))
            print(f"{fusion} seed {seed}: val {entry['val_recall'][seed]:.3f}, "
                  f"train {entry['train_s'][seed]} s", file=sys.stderr)
        results["models"][f"trained, {fusion} fusion"] = entry
    results["seconds"] = round(time.perf_counter() - t0, 1)
    trained = {k: v for k, v in results["models"].items() if k.startswith("trained")}
    results["picked_by_validation"] = max(trained, key=lambda k: statistics.mean(trained[k]["val_recall"].values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    md = render(results, " ".join(["python"] + sys.argv))
    args.out.with_suffix(".md").write_text(md)
    print(md)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def render(res: dict, command: str) -> str:
    n = res["n_items"]
    q = res["queries"]
    lines = [f"# Retrieval quality on the held-out test split ({n} images, titles not indexed)", "",
             f"Command: `{command}`", "",
             f"Queries: {q['text']} text -> image (item titles), {q['photo']} photo -> image (item rendered as a "
             f"photo), {q['composed']} composed image + text (skin tone / gender / recolour edits).", "",
             "Mean ± standard deviation over seeds (training seeds; the bridge has none). "
             "In brackets: 95% bootstrap interval of the first seed.", "",
             "| model | text R@10 | text MRR | photo R@1 | photo R@10 | composed R@1 | composed R@10 | composed MRR |",
             "|---|---|---|---|---|---|---|---|"]
    chance = {f"R@{k}": min(1.0, k / n) for k in (1, 5, 10, 50)}
    chance["MRR"] = sum(1 / r for r in range(1, n + 1)) / n
    lines.append(f"| chance | {chance['R@10']:.3f} | {chance['MRR']:.3f} | {chance['R@1']:.3f} | {chance['R@10']:.3f} "
                 f"| {chance['R@1']:.3f} | {chance['R@10']:.3f} | {chance['MRR']:.3f} |")

    def cell(entry, group, metric, ci=False):
        vals = [s[group][metric] for s in entry["seeds"].values() if group in s]
        if not vals:
            return "-"
        first = next(iter(entry["seeds"].values()))[group]["ci"][metric]
        return mean_std(vals) + (f" [{first[0]:.2f}, {first[1]:.2f}]" if ci else "")

    for name, entry in res["models"].items():
        lines.append(f"| {name} | {cell(entry, 'text', 'R@10', True)} | {cell(entry, 'text', 'MRR')} | "
                     f"{cell(entry, 'photo', 'R@1')} | {cell(entry, 'photo', 'R@10')} | "
                     f"{cell(entry, 'composed', 'R@1', True)} | {cell(entry, 'composed', 'R@10')} | "
                     f"{cell(entry, 'composed', 'MRR')} |")
    lines += ["", "Composed queries ranked by one side only (same queries):", "",
              "| model | image only R@1 | image only R@10 | text only R@1 | text only R@10 |", "|---|---|---|---|---|"]
    for name, entry in res["models"].items():
        lines.append(f"| {name} | {cell(entry, 'composed_image_only', 'R@1')} | "
                     f"{cell(entry, 'composed_image_only', 'R@10')} | {cell(entry, 'composed_text_only', 'R@1')} | "
                     f"{cell(entry, 'composed_text_only', 'R@10')} |")
    trained = {k: v for k, v in res["models"].items() if "val_recall" in v}
    lines += ["", "Training (frozen backbones, cached features):", "",
              "| fusion | validation Recall@10 (mean of text and composed) | epochs run | train seconds |",
              "|---|---|---|---|"]
    for name, e in trained.items():
        lines.append(f"| {name} | {mean_std(list(e['val_recall'].values()))} | "
                     f"{', '.join(str(x) for x in e['epochs'].values())} | "
                     f"{', '.join(str(x) for x in e['train_s'].values())} |")
    pick = res["picked_by_validation"]
    bridge = res["models"]["zero-shot bridge"]["seeds"]["-"]
    lines += ["", f"Picked by validation: **{pick}**.", "", bar_check(res["models"][pick], bridge), ""]
    return "\n".join(lines)


def bar_check(entry: dict, bridge: dict) -> str:
    """The issue's bar for switching the default, checked on every seed."""
    rows = []
    for seed, s in entry["seeds"].items():
        single_r1 = max(s["composed_image_only"]["R@1"], s["composed_text_only"]["R@1"])
        single_r10 = max(s["composed_image_only"]["R@10"], s["composed_text_only"]["R@10"])
        checks = {
            "text R@10 >= 1.5x bridge": s["text"]["R@10"] >= 1.5 * bridge["text"]["R@10"],
            "composed R@1 >= best single side + 0.2": s["composed"]["R@1"] >= single_r1 + 0.2,
            "composed R@10 >= best single side": s["composed"]["R@10"] >= single_r10,
            "photo R@10 >= raw features (bridge row)": s["photo"]["R@10"] >= bridge["photo"]["R@10"],
        }
        rows.append(f"- seed {seed}: " + "; ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in checks.items()))
    return "Bar to switch the default:\n\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
