"""Issue 19: leave-one-domain-out with photo domains, query kinds, the zero-shot prior re-chosen on every
domain, and training candidates that keep what the backbone knows about photos.

Domains: the drawn corpus (``build_corpus.py``: emoji, icons, clip art, Fashion-MNIST) plus the photo corpus
(``build_corpus.py --domains photo-clothing,photo-caltech,photo-coco``): ``photo-clothing`` and
``photo-caltech`` are LODO domains split by class; ``photo-coco`` never trains (its model: every train split).
Query kinds, each scored apart: ``text`` (the name), ``caption`` (sentences: COCO's human captions, templated
for the others), ``paraphrase`` (WordNet synonyms and hypernyms). Photo mean = mean R@10 over the photo
(domain, kind) pairs (clothing and caltech: text, caption, paraphrase; coco: caption); drawn mean = text R@10
over the drawn domains.

``bridges``: the zero-shot prior over temperature x templates x synonyms (pad geometry), then pad vs crop
for each temperature at the chosen prompts (on the test rows with crop features). ``train``: trained
candidates against the chosen prior, with WiSE-FT alpha per head, an output-space ensemble
``l2n(b * zero-shot + (1 - b) * trained)`` and catalog-mean centring at search time, all on the same folds;
paired bootstrap intervals against the prior; the issue's ship rule per candidate.

Commands: see ``benchmarks/results/lodo_photos.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lodo as L  # noqa: E402

from mmsearch.models.encoders import l2n  # noqa: E402
from mmsearch.models.factory import build_model  # noqa: E402

PHOTO5 = ("a photo of a {}.", "a close-up photo of a {}.", "a photo of the {}.", "a photo of my {}.", "{}")
TEMPLATES = {"ens8": L.ENSEMBLE, "photo5": PHOTO5, "photo1": ("a photo of a {}.",)}
PHOTO_KINDS = {"photo-clothing": ("text", "caption", "paraphrase"), "photo-caltech": ("text", "caption", "paraphrase"),
               "photo-coco": ("caption",)}
EVAL_ONLY = ("photo-coco",)


def is_photo(d: str) -> bool:
    return d.startswith("photo-")


def eval_texts(c: L.Corpus) -> list[str]:
    test = c.where("test")
    out = {c.rows[i]["title"] for i in test} | {m for _, m, _, _ in c.triplets}
    out |= {t for i in test for texts in c.rows[i].get("queries", {}).values() for t in texts}
    return sorted(out)


class Frozen(L.Space):
    """A space whose text embeddings are computed once (heads change after it is made)."""

    def __init__(self, img: torch.Tensor, table: dict[str, torch.Tensor], vis: torch.Tensor):
        super().__init__(img, lambda texts: torch.stack([table[t] for t in texts]), vis)
        self.table = table


_VIS: list[torch.Tensor] = []  # the raw visual channel: one copy for every space of a run (it never trains)


def freeze(space: L.Space, texts: list[str]) -> Frozen:
    emb = torch.cat([space.text_fn(texts[k:k + 2048]) for k in range(0, len(texts), 2048)])
    if not _VIS or _VIS[0].shape != space.vis.shape or not torch.equal(_VIS[0].nan_to_num(), space.vis.nan_to_num()):
        _VIS[:] = [space.vis]
    return Frozen(space.img, dict(zip(texts, emb)), _VIS[0])


def mix(a: Frozen, b: Frozen, beta: float) -> Frozen:
    """Output-space ensemble: ``l2n(beta * a + (1 - beta) * b)`` on both towers."""
    texts = list(a.table)
    ta, tb = torch.stack([a.table[t] for t in texts]), torch.stack([b.table[t] for t in texts])
    return Frozen(l2n(beta * a.img + (1 - beta) * b.img), dict(zip(texts, l2n(beta * ta + (1 - beta) * tb))), a.vis)


def centred(space: Frozen, c: L.Corpus, domain: str) -> Frozen:
    """Hubness reduction: the domain's catalog (test split) minus its mean embedding, renormalised."""
    idx = torch.from_numpy(c.where("test", domain))
    img = space.img.clone()
    ok = idx[~torch.isnan(img[idx]).any(1)]
    img[ok] = l2n(img[ok] - img[ok].mean(0, keepdim=True))
    return Frozen(img, space.table, space.vis)


# ------------------------------------------------------------------------------------------------ scores
def score(per_dom: dict[str, dict], doms: list[str]) -> dict:
    """R@10 summaries: drawn mean (text), photo mean (photo domain x kind), per kind means."""
    drawn = [d for d in doms if not is_photo(d)]
    photo = [(d, k) for d in doms if is_photo(d) for k in PHOTO_KINDS[d] if k in per_dom.get(d, {})]
    r10 = {d: {k: L.summary(r)["R@10"] for k, r in t.items() if len(r)} for d, t in per_dom.items()}
    out = {"drawn_mean": float(np.mean([r10[d]["text"] for d in drawn])) if drawn else float("nan"),
           "photo_mean": float(np.mean([r10[d][k] for d, k in photo])) if photo else float("nan")}
    r1 = {d: {k: L.summary(r)["R@1"] for k, r in t.items() if len(r)} for d, t in per_dom.items()}
    if drawn:
        out["drawn_R@1"] = float(np.mean([r1[d]["text"] for d in drawn]))
    if photo:
        out["photo_R@1"] = float(np.mean([r1[d][k] for d, k in photo]))
    for kind in ("text", "caption", "paraphrase"):
        vals = [r10[d][k] for d, k in photo if k == kind]
        if vals:
            out[f"photo_{kind}"] = float(np.mean(vals))
    comp = [d for d in drawn if "composed_w0.5" in per_dom[d]]
    if comp:
        for w in ("0.5", "0.6", "0.7"):
            key = f"composed_w{w}"
            if all(key in per_dom[d] for d in comp):
                out[f"composed_R@1_w{w}"] = float(np.mean([L.summary(per_dom[d][key])["R@1"] for d in comp]))
                out[f"composed_R@10_w{w}"] = float(np.mean([L.summary(per_dom[d][key])["R@10"] for d in comp]))
    return out


def detail(per_dom: dict[str, dict], base: dict[str, dict] | None) -> dict:
    out: dict = {}
    for d, tasks in per_dom.items():
        out[d] = {}
        for k, r in tasks.items():
            e = L.summary(r)
            if base is not None and k in base.get(d, {}) and len(base[d][k]) == len(r) and len(r):
                e["dR@10_ci"] = L.paired_ci(r, base[d][k], 10)
                e["dR@1_ci"] = L.paired_ci(r, base[d][k], 1)
                e["dR@10"] = e["R@10"] - L.summary(base[d][k])["R@10"]
            out[d][k] = e
    return out


def ship_rule(det: dict, sc: dict, prior_sc: dict, doms: list[str], w: str = "0.5") -> dict:
    """Issue 19: no held-out domain (any query kind) significantly below the prior; above it on the drawn
    mean and on the photo mean; composed R@1 >= 0.55 on held-out emoji styles."""
    below = [f"{d}/{k}" for d in doms for k, e in det[d].items()
             if k in ("text", "caption", "paraphrase") and e.get("dR@10_ci", (0, 0))[1] < 0]
    comp = sc.get(f"composed_R@1_w{w}", float("nan"))
    ok = (not below and sc["drawn_mean"] > prior_sc["drawn_mean"] and sc["photo_mean"] > prior_sc["photo_mean"]
          and comp >= 0.55)
    return {"significantly_below": below, "composed_R@1": comp, "passes": bool(ok)}


# ------------------------------------------------------------------------------------------------ setup
def setup(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = L.load_corpus(args.corpus)
    doms = [d for d in L.domains_of(c) if not args.domains or d in args.domains.split(",")]
    pad_model, tok = build_model(L.geometry_cfg("pad", "default"))
    have = L.attach_features(c, "pad", pad_model)
    test = np.array(c.split) == "test"
    ev = c.feats["pad"].clone()
    ev[torch.from_numpy(~test)] = float("nan")
    counts = {d: {"train": int(((np.array(c.domain) == d) & (np.array(c.split) == "train")).sum()),
                  "train_with_features": int(((np.array(c.domain) == d) & (np.array(c.split) == "train") & have).sum()),
                  "test": int(((np.array(c.domain) == d) & test).sum()),
                  "test_with_features": int(((np.array(c.domain) == d) & test & have).sum())} for d in doms}
    return c, doms, pad_model, tok, ev, counts


def prior_heads(tpl: str, syn: bool, temp: float, geometry: str, tok, text_model) -> L.Heads:
    m, _ = build_model(L.geometry_cfg(geometry, "default", bridge_templates=TEMPLATES[tpl], bridge_synonyms=syn,
                                      bridge_temperature=temp))
    return L.Heads(m, tok, text_model)


def evaluate_all(space_of, c: L.Corpus, doms: list[str], weights=(0.5, 0.6, 0.7)) -> dict[str, dict]:
    return {d: L.evaluate(space_of(d), c, d, weights) for d in doms}


def cmd_bridges(args) -> None:
    c, doms, pad_model, tok, ev, counts = setup(args)
    texts = eval_texts(c)
    res: dict = {"domains": doms, "counts": counts, "pad": {}, "geometry": {}}
    ranks = {}
    for tpl in ([] if args.geometry_of else args.templates.split(",")):
        for syn in (True, False):
            h = prior_heads(tpl, syn, 1.0, "pad", tok, pad_model)
            h.text_feats(texts)
            for temp in (float(t) for t in args.temperatures.split(",")):
                h.model.image_tower.head.base.temperature = temp
                sp = freeze(h.space(ev), texts)
                name = f"{tpl}{'+syn' if syn else ''} T{temp:g}"
                ranks[name] = evaluate_all(lambda d, sp=sp: sp, c, doms)
                res["pad"][name] = {"score": score(ranks[name], doms), "detail": detail(ranks[name], None)}
                print(name, json.dumps(res["pad"][name]["score"]), file=sys.stderr, flush=True)
    if args.geometry_of:  # geometry only, at these prompts
        old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
        res = {**old, **{k: v for k, v in res.items() if k != "pad"}, "geometry": {}}
        res.setdefault("pad", {})
        best = f"{args.geometry_of} T1"
    else:
        best = max(res["pad"], key=lambda n: rank_key(res["pad"][n]["score"]))
        res["best_pad"] = best
        res["command"] = " ".join(sys.argv)
    if not args.geometry:
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        print(f"best: {best}")
        return
    # geometry: pad vs crop at the best prompts, on test rows with crop features
    tpl, rest = best.split(" T")[0], best.split(" T")[1]
    syn = tpl.endswith("+syn")
    tpl = tpl.removesuffix("+syn")
    crop_model, _ = build_model(L.geometry_cfg("crop", "default"))
    have_crop = L.attach_features(c, "crop", crop_model)
    both = torch.from_numpy(~have_crop)
    for temp in (float(t) for t in args.temperatures.split(",")):
        for geo in ("pad", "crop"):
            h = prior_heads(tpl, syn, temp, geo, tok, pad_model)
            f = (ev if geo == "pad" else c.feats["crop"]).clone()
            f[both] = float("nan")
            f[torch.from_numpy(np.array(c.split) != "test")] = float("nan")
            sp = freeze(h.space(f), texts)
            name = f"{geo} T{temp:g}"
            r = evaluate_all(lambda d, sp=sp: sp, c, doms)
            res["geometry"][name] = {"score": score(r, doms), "detail": detail(r, None)}
            print("geometry", name, json.dumps(res["geometry"][name]["score"]), file=sys.stderr, flush=True)
    res["geometry_command"] = " ".join(sys.argv)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(f"best: {best} ({rest})")


def rank_key(sc: dict) -> float:
    """The prior's choice: the mean of the drawn mean and the photo mean (photos weigh as much as drawings)."""
    return 0.5 * (sc["drawn_mean"] + sc["photo_mean"])


def cmd_train(args) -> None:
    c, doms, pad_model, tok, ev, counts = setup(args)
    texts = eval_texts(c)
    tpl, syn, temp = args.prior_templates, args.prior_synonyms, args.prior_temperature
    prior = prior_heads(tpl, syn, temp, "pad", tok, pad_model)
    prior.text_feats(L.all_texts(c, [i for i in range(len(c.ids)) if not torch.isnan(c.feats["pad"][i]).any()]))
    zs = freeze(prior.space(ev), texts)
    weights = (0.5, 0.6, 0.7)
    base = evaluate_all(lambda d: zs, c, doms, weights)
    models: dict[str, dict] = {"prior": base}
    models["prior centred"] = evaluate_all(lambda d: centred(zs, c, d), c, doms, weights)
    if args.baseline_temperature and args.baseline_temperature != temp:  # compare with another bridge
        bh = prior_heads(tpl, syn, args.baseline_temperature, "pad", tok, pad_model)
        bh.text_feats(texts)
        bzs = freeze(bh.space(ev), texts)
        base = evaluate_all(lambda d: bzs, c, doms, weights)
        models[f"bridge T{args.baseline_temperature:g}"] = base
    fold_doms = [d for d in doms if d not in EVAL_ONLY]
    alphas = [L.parse_alpha(a) for a in args.alphas.split(",")]
    betas = [float(b) for b in args.betas.split(",") if b]
    costs = {}
    for rname in args.recipes.split(","):
        recipe = L.RECIPES[rname]
        t0 = time.time()
        tuned = {}
        saved = Path(f"{args.states}-{rname}.pt") if args.states else None
        if saved is not None and saved.is_file():  # the same folds, trained before: evaluate only
            tuned = torch.load(saved, weights_only=True)
        for d in [d for d in fold_doms if d not in tuned]:
            tuned[d] = L.train_heads(prior, c, c.feats["pad"], c.where("train", not_domain=d), recipe)
            print(f"{rname} without {d}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        if any(d in EVAL_ONLY for d in doms) and "*" not in tuned:
            tuned["*"] = L.train_heads(prior, c, c.feats["pad"], c.where("train"), recipe)
        if saved is not None:
            torch.save(tuned, saved)
        costs[rname] = (time.time() - t0) / max(1, len(tuned))
        for a in alphas:
            aname = f"{a[0]:g}/{a[1]:g}" if isinstance(a, tuple) else f"{a:g}"
            sp = {k: freeze(prior.space(ev, a, v), texts) for k, v in tuned.items()}
            fold = {d: sp.get(d, sp.get("*")) for d in doms}
            models[f"{rname} a{aname}"] = evaluate_all(lambda d: fold[d], c, doms, weights)
            models[f"{rname} a{aname} centred"] = evaluate_all(lambda d: centred(fold[d], c, d), c, doms, weights)
            for b in betas:
                models[f"{rname} a{aname} ens{b:g}"] = evaluate_all(lambda d: mix(zs, fold[d], b), c, doms, weights)
            print(f"{rname} a{aname}: {json.dumps(score(models[f'{rname} a{aname}'], doms))}", file=sys.stderr,
                  flush=True)
    prior_sc = score(base, doms)
    res = {"domains": doms, "counts": counts, "prior": {"templates": tpl, "synonyms": syn, "temperature": temp,
                                                        "baseline_temperature": args.baseline_temperature or temp},
           "train_seconds_per_fold": costs, "command": " ".join(sys.argv), "models": {}}
    for name, r in models.items():
        sc = score(r, doms)
        det = detail(r, base)
        res["models"][name] = {"score": sc, "detail": det, "ship_rule": ship_rule(det, sc, prior_sc, doms)}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    for name, e in res["models"].items():
        print(f"{name}: {json.dumps(e['score'])} {json.dumps(e['ship_rule'])}")


# ------------------------------------------------------------------------------------------------ report
def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def _ci(e: dict) -> str:
    if "dR@10_ci" not in e:
        return ""
    lo, hi = e["dR@10_ci"]
    mark = " **below**" if hi < 0 else (" above" if lo > 0 else "")
    return f" ({e['dR@10']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark})"


def report(bridges: dict | None, train: dict | None, top: int = 12) -> str:
    L_ = ["# Leave-one-domain-out with photo domains (issue 19)\n",
          "Drawn domains: emoji, icons, clip art, Fashion-MNIST (`build_corpus.py`); photo domains: `photo-clothing` "
          "(CC0 home photos of garments, 17 labels), `photo-caltech` (Caltech 101, 90 classes, CC BY 4.0, "
          "doi:10.22002/D1.20086), both split **by class** (held-out classes never train), and `photo-coco` (51 COCO "
          "photos, 5 human captions each; evaluation only, never trained on). Text -> image Recall@10, each domain's "
          "test split indexed without titles. Query kinds: `text` = the class name, `caption` = sentences (COCO: "
          "human captions; others: 'a photo of a {name}.', 'there is a {name} in this picture'), `paraphrase` = "
          "WordNet synonyms and hypernyms of the name's first noun synset. **Photo mean** = mean R@10 over "
          "(clothing, caltech) x (text, caption, paraphrase) and coco captions; **drawn mean** = text R@10 over the "
          "drawn domains.\n"]
    if bridges:
        doms = bridges["domains"]
        L_ += ["## Zero-shot prior (`bridge`), pad geometry\n", f"Command: `{bridges.get('command', '')}`; geometry: "
               f"`{bridges.get('geometry_command', '')}`\n",
               "| prompts | T | drawn mean | photo mean | photo text | photo caption | photo paraphrase | "
               "drawn / photo R@1 | clothing text | caltech text | coco caption |", "|---" * 11 + "|"]
        for name, e in bridges["pad"].items():
            sc, det = e["score"], e["detail"]
            p, t = name.rsplit(" T", 1)
            L_.append(f"| {p} | {t} | {_f(sc['drawn_mean'])} | **{_f(sc['photo_mean'])}** | "
                      f"{_f(sc.get('photo_text'))} | {_f(sc.get('photo_caption'))} | {_f(sc.get('photo_paraphrase'))} | "
                      f"{_f(sc.get('drawn_R@1'))} / {_f(sc.get('photo_R@1'))} | "
                      + " | ".join(_f(det.get(d, {}).get(k, {}).get("R@10")) for d, k in
                                   (("photo-clothing", "text"), ("photo-caltech", "text"), ("photo-coco", "caption")))
                      + " |")
        chosen = bridges.get("chosen", bridges["best_pad"])
        L_ += ["", f"Highest mean of drawn mean and photo mean: {bridges['best_pad']}. **Chosen: {chosen}**. "
               f"{bridges.get('chosen_note', '')}\n",
               "Geometry at the chosen prompts (test rows with crop features: every photo, up to 100 per drawn "
               "domain):\n", "| geometry | T | drawn mean | photo mean |", "|---|---|---|---|"]
        for name, e in bridges["geometry"].items():
            g, t = name.split(" T")
            L_.append(f"| {g} | {t} | {_f(e['score']['drawn_mean'])} | {_f(e['score']['photo_mean'])} |")
        L_ += ["", "Per domain (text R@10; photo domains every kind), chosen prompts at T=1, 1.5, 2:\n"]
        names = [n for n in bridges["pad"] if n.rsplit(" T", 1)[0] == chosen.rsplit(" T", 1)[0]]
        L_ += ["| domain | kind | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for d in doms:
            for k in PHOTO_KINDS.get(d, ("text",)):
                L_.append(f"| {d} | {k} | " + " | ".join(_f(bridges["pad"][n]["detail"][d].get(k, {}).get("R@10"))
                                                         for n in names) + " |")
        L_.append("")
    if train:
        doms = train["domains"]
        models = train["models"]
        pr = train["prior"]
        L_ += ["## Trained candidates vs the chosen prior (leave one domain out)\n",
               f"Command: `{train.get('command', '')}`\n",
               f"Prior: templates `{pr['templates']}`, synonyms {bool(pr['synonyms'])}, T={pr['temperature']:g}, pad. "
               "Recipes: `masked` = the shipped recipe (masked contrastive + composed), `masked_photoanchor[10]` = "
               "plus an L2 anchor (weight 1 or 10) of both residuals toward the zero-shot embedding on photo rows. "
               "`aX` = WiSE-FT alpha (image/text), `ensB` = output-space ensemble "
               "`l2n(B * zero-shot + (1 - B) * trained)` on both towers, `centred` = catalog-mean centring at "
               "search time. Ship rule (issue 19): no held-out domain x kind significantly below the prior "
               "(paired bootstrap 95%), drawn mean and photo mean above the prior's, composed R@1 (w=0.5, held-out "
               "emoji styles) >= 0.55.\n",
               "| model | drawn mean | photo mean | photo text | photo caption | photo paraphrase | drawn / photo "
               "R@1 | composed R@1 / R@10 (w=0.5) | sig. below prior | passes |", "|---" * 10 + "|"]
        order = sorted(models, key=lambda n: -rank_key(models[n]["score"]))
        for name in ["prior"] + [n for n in order if n != "prior"]:
            e = models[name]
            sc, rule = e["score"], e["ship_rule"]
            below = ", ".join(rule["significantly_below"][:4]) + (" ..." if len(rule["significantly_below"]) > 4
                                                                   else "")
            L_.append(f"| {name} | {_f(sc['drawn_mean'])} | {_f(sc['photo_mean'])} | {_f(sc.get('photo_text'))} | "
                      f"{_f(sc.get('photo_caption'))} | {_f(sc.get('photo_paraphrase'))} | "
                      f"{_f(sc.get('drawn_R@1'))} / {_f(sc.get('photo_R@1'))} | "
                      f"{_f(sc.get('composed_R@1_w0.5'))} / {_f(sc.get('composed_R@10_w0.5'))} | {below or 'none'} | "
                      f"{'**yes**' if rule['passes'] else 'no'} |")
        picked = ["prior"] + [n for n in models if n.startswith("bridge T")]
        picked += [n for n in order if models[n]["ship_rule"]["passes"] and n not in picked][:3]
        picked += [n for n in order if n not in picked][:max(0, 4 - len(picked))]
        L_ += ["", "Per domain, R@10 (difference to the prior [95% CI]):\n",
               "| domain | kind | " + " | ".join(picked) + " |", "|---" * (2 + len(picked)) + "|"]
        for d in doms:
            for k in PHOTO_KINDS.get(d, ("text",)):
                cells = [f"{_f(models[n]['detail'][d].get(k, {}).get('R@10'))}{_ci(models[n]['detail'][d].get(k, {}))}"
                         for n in picked]
                L_.append(f"| {d} | {k} | " + " | ".join(cells) + " |")
        L_ += ["", f"Training seconds per fold (2 shared CPU cores): {train.get('train_seconds_per_fold')}", "",
               "## Corpus\n", "| domain | train | train with features | test | test with features |",
               "|---|---|---|---|---|"]
        for d, n in train["counts"].items():
            L_.append(f"| {d} | {n['train']} | {n['train_with_features']} | {n['test']} | {n['test_with_features']} |")
    return "\n".join(L_) + "\n"


def cmd_report(args) -> None:
    b = json.loads(args.bridges.read_text()) if args.bridges else None
    t = json.loads(args.train.read_text()) if args.train else None
    args.out.write_text(report(b, t))
    print(args.out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("bridges", "train"):
        p = sub.add_parser(name)
        p.add_argument("--corpus", type=Path, action="append", required=True)
        p.add_argument("--domains", default="")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", type=Path, required=True)
    b = sub.choices["bridges"]
    b.add_argument("--templates", default="ens8,photo5,photo1")
    b.add_argument("--temperatures", default="1,1.5,2")
    b.add_argument("--geometry", type=int, default=1, help="0: skip the pad vs crop comparison")
    b.add_argument("--geometry-of", default="", help="only the geometry comparison, at these prompts (e.g. "
                                                      "ens8+syn), merged into --out's JSON")
    t = sub.choices["train"]
    t.add_argument("--prior-templates", default="ens8", choices=sorted(TEMPLATES))
    t.add_argument("--prior-synonyms", type=int, default=1)
    t.add_argument("--prior-temperature", type=float, default=1.0)
    t.add_argument("--baseline-temperature", type=float, default=0.0,
                   help="the bridge the ship rule compares with, when not the prior itself (0: the prior)")
    t.add_argument("--recipes", default="masked,masked_photoanchor")
    t.add_argument("--states", default="", help="save the tuned heads per fold to PREFIX-<recipe>.pt, and "
                                                 "reuse them when that file exists (evaluate other alphas)")
    t.add_argument("--alphas", default="0.25,0.5,0.75,1,0.25/0.5")
    t.add_argument("--betas", default="0.3,0.5,0.7")
    r = sub.add_parser("report")
    r.add_argument("--bridges", type=Path)
    r.add_argument("--train", type=Path)
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    {"bridges": cmd_bridges, "train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
