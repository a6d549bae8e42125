"""``train``: learn the shared space (projection heads + fusion) with a fused objective.

With frozen backbones (the default, ``unfreeze=0``) pooled backbone features are extracted once and
cached by file hash (:mod:`mmsearch.features`); every epoch then runs only the heads and the fusion, so
training the default model is minutes on a CPU. A run folder holds everything::

    run/config.json     what was asked (train config, model, data)
    run/metrics.jsonl   one line per epoch: losses, validation Recall@10, learning rate, items/s
    run/state.pt        full training state after the last epoch (for --resume)
    run/last.pt         model checkpoint after the last epoch
    run/model.pt        the best model checkpoint (by validation Recall@10; last epoch without --val)

Under ``torchrun --nproc-per-node N -m mmsearch train ...`` (WORLD_SIZE > 1) the same run is data
parallel: every rank draws the same global batches and takes its slice of each; the trainable modules
are wrapped in DistributedDataParallel and the batch losses gather embeddings across ranks, so N ranks
take the same steps as one process. Feature extraction is split across ranks; rank 0 validates, decides
early stopping and writes the run folder, which resumes on any number of ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import AugmentedPreprocess, Policy, policy_for
from .config import TrainCfg, to_dict
from .data import CatalogItem, jsonl_objects, load_image, scan_catalog
from .device import autocast, seed_everything
from .distributed import (DistEnv, all_gather_objects, broadcast_object, gathered_composed_loss,
                          gathered_contrastive_loss, process_group, rank_device, shard_ranges)
from .encoders import l2n
from .errors import MMSearchError
from .factory import (Tokenizer, build_model, build_named_model, get_model_config, image_preprocess, list_models,
                      load_checkpoint, save_checkpoint)
from .features import image_features, text_features, view_features
from .fusion import build_fusion
from .loss import classification_loss
from .model import DualEncoder
from .evaluate import recall_at_k
from .unfreeze import set_train_mode, trained_backbone_record, unfreeze_last
from .wise import interpolated, trainable_state

log = logging.getLogger(__name__)


class TrainError(MMSearchError):
    """Training cannot start or continue: too little data, a bad triplets file, a mismatched resume."""


@dataclass
class Triplets:
    """Composed-query triplets as positions into a split's items, plus modifier texts."""

    ref: torch.Tensor  # (T,) long
    tgt: torch.Tensor  # (T,) long
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Split:
    """One catalog, reduced to what training needs: cached features and indices.

    With unfrozen backbones (``raw``) nothing is cached: ``img``, ``txt`` and ``mod`` are None until
    :func:`refresh_features` computes them with the current backbones (validation), and training steps
    encode images and ``strings`` from scratch.
    """

    items: list[CatalogItem]  # items whose image loaded
    img: torch.Tensor | None  # (N, F) image backbone features
    pair_pos: torch.Tensor  # (P,) positions of items with text
    variants: list[list[int]]  # per pair: indices into txt / strings (text augmentations)
    txt: torch.Tensor | None  # (V, F) text backbone features of all variant strings
    labels: torch.Tensor  # (N,) category index or -1
    triplets: Triplets
    mod: torch.Tensor | None  # (T, F) text backbone features of the modifiers
    skipped_no_text: int = 0
    skipped_bad_image: int = 0
    strings: list[str] = field(default_factory=list)  # (V,) the variant texts
    policies: list[Policy] = field(default_factory=list)  # (N,) augmentations each item's text allows
    views: torch.Tensor | None = None  # (N, K, F) features of K cached augmented views (frozen + aug_views)
    raw: bool = False


@dataclass
class TrainReport:
    run_dir: Path
    checkpoint: Path
    epochs_run: int
    best_epoch: int
    best_metric: float | None
    pairs: int
    triplets: int
    skipped_no_text: int
    skipped_bad_image: int
    metrics: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- data
def read_triplets(path: str | Path, known: dict[str, int]) -> list[tuple[int, str, int]]:
    """``{"reference": id, "text": str, "target": id}`` per line -> (ref position, text, target position).

    Malformed lines and unknown ids are errors naming the line. ``known`` maps item id -> position.
    """
    path = Path(path)
    out = []
    for lineno, row in jsonl_objects(path, TrainError, "triplets"):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("reference", "text", "target")):
            raise TrainError(f'{path}:{lineno}: expected {{"reference": id, "text": "...", "target": id}}')
        for key in ("reference", "target"):
            if row[key] not in known:
                raise TrainError(f"{path}:{lineno}: unknown {key} id {row[key]!r} (not an image of the catalog)")
        if not row["text"].strip():
            raise TrainError(f"{path}:{lineno}: empty modifier text")
        out.append((known[row["reference"]], row["text"].strip(), known[row["target"]]))
    return out


def item_texts(item: CatalogItem, templates: tuple[str, ...], max_tags: int, tag_groups: int = 1) -> list[str]:
    """Text augmentations of an item: each template filled with its title, and where the template asks
    for them its tags (``{tags}``: up to ``tag_groups`` variants, each with the next ``max_tags`` tags, so
    more than the first few tags are seen) and its description (``{text}``); templates whose fields the
    item lacks are skipped. A ``captions`` list in the item's metadata adds its texts."""
    title = item.title.strip() or item.full_text
    tags = item.metadata.get("tags")
    tags = [str(t) for t in tags if str(t).strip()] if isinstance(tags, list) else []
    groups = [", ".join(tags[i:i + max_tags]) for i in range(0, len(tags), max(1, max_tags))][:max(1, tag_groups)]
    out = []
    for tpl in templates:
        if ("{tags}" in tpl and not groups) or ("{text}" in tpl and not item.text.strip()):
            continue
        for group in (groups if "{tags}" in tpl else [""]):
            text = tpl.format(title=title, tags=group, text=item.text.strip())
            if text not in out:
                out.append(text)
    caps = item.metadata.get("captions")  # the catalog's own caption variants (build_corpus.py writes them)
    out += [str(c) for c in (caps if isinstance(caps, list) else []) if str(c).strip() and str(c) not in out]
    return out or [title]


def readable_images(paths: list[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """(positions that decode, [(position, reason)]) without running a backbone (unfrozen training)."""
    ok, failed = [], []
    for i, path in enumerate(paths):
        try:
            load_image(path)
            ok.append(i)
        except Exception as exc:  # a bad image is skipped, never fatal
            failed.append((i, str(exc)))
            log.warning("skipping %s: %s", path, exc)
    return ok, failed


def prepare_split(catalog: str | Path, model: DualEncoder, tokenizer: Tokenizer, cfg: TrainCfg,
                  triplets_path: str | Path | None, categories: dict[str, int], augment: bool,
                  progress: bool = True, env: DistEnv | None = None) -> Split:
    """Read a catalog (and its triplets) into a :class:`Split`. Frozen backbones: backbone features of
    every image, text variant and modifier, from the feature cache (plus ``cfg.aug_views`` cached
    augmented views per image when ``augment``). Unfrozen (``cfg.unfreeze``): no features at all."""
    all_items = scan_catalog(catalog)
    raw = cfg.unfreeze > 0
    if raw:
        img, (ok, failed) = None, readable_images([it.path for it in all_items])
    else:
        preprocess = image_preprocess(model.cfg.image)
        img, ok, failed = image_features(model, preprocess, [it.path for it in all_items], progress=progress,
                                         env=env)
    items = [all_items[i] for i in ok]
    pair_pos = [i for i, it in enumerate(items) if it.full_text]
    templates = cfg.text_templates if augment else ("{title}",)
    strings: dict[str, int] = {}
    variants = []
    for i in pair_pos:
        variants.append([strings.setdefault(t, len(strings))
                         for t in item_texts(items[i], templates, cfg.max_tags, cfg.tag_groups)])
    txt = None if raw else text_features(model, tokenizer, list(strings), env=env)
    policies = [policy_for(item_texts(it, cfg.text_templates, cfg.max_tags, cfg.tag_groups) + [it.full_text])
                for it in items]
    views = None
    if augment and cfg.aug_views > 0 and not raw:
        views = view_features(model, [it.path for it in items], img, policies, cfg, cfg.aug_views,
                              progress=progress, env=env)
    labels = torch.tensor([categories.get(str(it.metadata.get("category")), -1) if "category" in it.metadata else -1
                           for it in items], dtype=torch.long)
    trip: list[tuple[int, str, int]] = []
    if triplets_path:
        rows = read_triplets(triplets_path, {it.id: i for i, it in enumerate(all_items)})
        pos_of = {it.id: i for i, it in enumerate(items)}
        trip = [(pos_of[all_items[r].id], t, pos_of[all_items[g].id]) for r, t, g in rows
                if all_items[r].id in pos_of and all_items[g].id in pos_of]  # images that failed are skipped
    triplets = Triplets(torch.tensor([r for r, _, _ in trip], dtype=torch.long),
                        torch.tensor([g for _, _, g in trip], dtype=torch.long), [t for _, t, _ in trip])
    mod = None if raw else text_features(model, tokenizer, triplets.texts, env=env)
    return Split(items=items, img=img, pair_pos=torch.tensor(pair_pos, dtype=torch.long), variants=variants,
                 txt=txt, labels=labels, triplets=triplets, mod=mod, skipped_no_text=len(items) - len(pair_pos),
                 skipped_bad_image=len(failed), strings=list(strings), policies=policies, views=views, raw=raw)


def refresh_features(split: Split, model: DualEncoder, tokenizer: Tokenizer) -> None:
    """Backbone features of a split with the current (partly trained) backbones, not cached."""
    paths = [it.path for it in split.items]
    split.img, _, _ = image_features(model, image_preprocess(model.cfg.image), paths, progress=False,
                                     use_cache=False)
    split.txt = text_features(model, tokenizer, split.strings, use_cache=False)
    split.mod = text_features(model, tokenizer, split.triplets.texts, use_cache=False)


# ------------------------------------------------------------------------------------------------ model
def init_model(model: str | Path, cfg: TrainCfg) -> tuple[DualEncoder, Tokenizer, str]:
    """A named config starts from its fresh initialisation (training from scratch); a checkpoint path
    is fine-tuned. ``cfg.fusion`` replaces the fusion (freshly initialised)."""
    name = str(model)
    if name in list_models():
        mcfg = get_model_config(name)
        if cfg.fusion and cfg.fusion != mcfg.fusion:
            net, tok = build_model(dataclasses.replace(mcfg, fusion=cfg.fusion, weights=""))
        else:
            net, tok = build_named_model(name, with_weights=False)
            net.cfg = dataclasses.replace(net.cfg, weights="")
    elif Path(name).is_file():
        net, tok, _ = load_checkpoint(name)
        if cfg.fusion and cfg.fusion != net.cfg.fusion:
            net.cfg = dataclasses.replace(net.cfg, fusion=cfg.fusion)
            net.fusion = build_fusion(cfg.fusion, net.embed_dim)
    else:
        raise TrainError(f"unknown model {name!r}: use one of {', '.join(list_models())} or a checkpoint path")
    for tower in (net.image_tower, net.text_tower):  # all frozen, but the last cfg.unfreeze blocks
        unfreeze_last(tower.backbone, cfg.unfreeze)
    if not any(p.requires_grad for n, p in net.named_parameters() if n != "logit_scale"):
        raise TrainError(f"model {name!r} has nothing to train (image head {net.cfg.image.head!r}, text head "
                         f"{net.cfg.text.head!r}, fusion {net.cfg.fusion!r}); use a trainable config such as "
                         f"'default' or 'tiny'")
    return net, tok, name


def embed_split(model: DualEncoder, split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) unit image embeddings and (P, D) unit embeddings of each pair's first text variant."""
    img = l2n(model.image_tower.head(split.img.to(device)))
    first = torch.tensor([v[0] for v in split.variants], dtype=torch.long)
    txt = l2n(model.text_tower.head(split.txt[first].to(device)))
    return img, txt


@torch.no_grad()
def validate(model: DualEncoder, split: Split, device: torch.device, k: int = 10) -> dict[str, float]:
    """Recall@k on a held-out split: text -> image over its images, and composed queries if it has triplets.
    ``val_recall`` (what early stopping watches) is their mean."""
    model.eval()
    img, txt = embed_split(model, split, device)
    out = {}
    if len(split.pair_pos):
        out["val_text_r10"] = recall_at_k((txt @ img.t()).cpu().numpy(), split.pair_pos.numpy(), k)
    if len(split.triplets):
        mod = l2n(model.text_tower.head(split.mod.to(device)))
        fused = model.fuse(img[split.triplets.ref.to(device)], mod)
        out["val_composed_r10"] = recall_at_k((fused @ img.t()).cpu().numpy(), split.triplets.tgt.numpy(), k)
    out["val_recall"] = sum(out.values()) / len(out) if out else 0.0
    return out


def lr_lambda(total_steps: int, warmup_frac: float):
    warmup = max(1, int(round(warmup_frac * total_steps)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class StepModel(nn.Module):
    """The trainable part of one step (projection heads, fusion, temperature, classifier) as one module,
    so that DistributedDataParallel wraps exactly what trains; frozen backbones stay outside. With
    ``raw`` (unfrozen blocks) the backbones are inside and the step's inputs are images and tokens."""

    def __init__(self, net: DualEncoder, classifier: nn.Module | None, raw: bool = False):
        super().__init__()
        self.image_head, self.text_head, self.fusion = net.image_tower.head, net.text_tower.head, net.fusion
        self.logit_scale = net.logit_scale
        self.classifier = classifier
        self.image_backbone = net.image_tower.backbone if raw else None
        self.text_backbone = net.text_tower.backbone if raw else None

    def _img(self, x: torch.Tensor) -> torch.Tensor:  # features (B, F) or images (B, 3, S, S) -> (B, D)
        return l2n(self.image_head(x if self.image_backbone is None else self.image_backbone(x)))

    def _txt(self, x) -> torch.Tensor:  # features (B, F) or tokenizer output -> (B, D)
        if self.text_backbone is not None:
            x = self.text_backbone(x["input_ids"], x["attention_mask"])
        return l2n(self.text_head(x))

    def forward(self, img: torch.Tensor, txt, ref: torch.Tensor | None = None,
                mod=None, tgt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Pairs (and triplets) -> unit embeddings, fused queries, logits."""
        out = {"scale": self.logit_scale.exp().clamp(max=100.0), "img": self._img(img), "txt": self._txt(txt)}
        if ref is not None:
            out["fused"] = self.fusion(self._img(ref), self._txt(mod), 0.5)  # (T, D)
            out["tgt"] = self._img(tgt)
        if self.classifier is not None:
            out["logits"] = self.classifier(self.fusion(out["img"], out["txt"], 0.5))
        return out


def wrap_ddp(module: StepModel, dev: torch.device, env: DistEnv, all_used: bool) -> nn.Module:
    """DistributedDataParallel over ``module`` under torchrun; the module itself in one process.

    all_used: every trainable parameter gets a gradient each step (a learned fusion does not in runs
    without triplets or classifier); otherwise DDP must look for unused ones after every forward.
    """
    if not env.is_distributed:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The heads' only buffers are fixed (the bridge's class-name embeddings): no per-step sync. The
    # keyword was renamed in newer torch; both mean the same here.
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in \
        inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                   find_unused_parameters=not all_used, **{no_sync: False})


def open_run(run: Path, asked: dict, resume: bool) -> tuple[dict | None, list[dict]]:
    """Check the run folder against what is asked: (state to resume or None, metrics history)."""
    if resume:
        if not (run / "state.pt").is_file():
            raise TrainError(f"nothing to resume in {run} (no state.pt); start without --resume")
        saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
        # a run from before a TrainCfg field existed used that field's default
        saved["train"] = {**json.loads(json.dumps(to_dict(TrainCfg()))), **saved.get("train", {})}
        if {k: v for k, v in saved.items() if k != "train"} != {k: v for k, v in asked.items() if k != "train"} \
                or {k: v for k, v in saved["train"].items() if k != "epochs"} != \
                {k: v for k, v in asked["train"].items() if k != "epochs"}:
            raise TrainError(f"--resume needs the same data and settings as the run in {run} (only --epochs may change)")
        state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return state, history[:state["epoch"]]
    if (run / "state.pt").exists():
        raise TrainError(f"{run} already holds a run; use --resume to continue it or choose another --out")
    return None, []


def on_rank0(fn, env: DistEnv, what: str):
    """``fn()`` on rank 0, its result (or its TrainError, raised on every rank) broadcast to all ranks."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except TrainError as exc:
            error = str(exc)
    result, error = broadcast_object((result, error), env, what)
    if error:
        raise TrainError(error)
    return result


# ------------------------------------------------------------------------------------------------ train
def train(catalog: str | Path, out: str | Path = "runs/train", model: str | Path = "default",
          cfg: TrainCfg | None = None, composed: str | Path | None = None, val: str | Path | None = None,
          val_composed: str | Path | None = None, device: str = "auto", resume: bool = False,
          progress: bool = True) -> TrainReport:
    """Train the projection heads and fusion of ``model`` on ``catalog`` (items with text are pairs).

    Under torchrun (WORLD_SIZE > 1) this is one rank of a DistributedDataParallel run with the same
    global batch size; every rank returns the same report.

    Args:
        catalog: training catalog folder (catalog.jsonl with titles; ``category`` feeds the classifier).
        out: run folder (config, metrics.jsonl, state.pt, last.pt, model.pt).
        model: a built-in config (trained from its fresh initialisation) or a checkpoint (fine-tuned).
        cfg: a :class:`TrainCfg` (epochs, batch size, learning rate, loss weights, seed ...).
        composed: triplets JSONL (``{"reference": id, "text": "...", "target": id}``) for the composed loss.
        val: validation catalog for early stopping on Recall@10; ``val_composed`` its triplets.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (under torchrun ``auto``/``cuda`` is ``cuda:LOCAL_RANK``).
        resume: continue the run in ``out`` from its last finished epoch (on any number of ranks).

    Returns:
        A :class:`TrainReport`; ``report.checkpoint`` is usable as ``--model`` for ``mmsearch index``.

    Example:
        >>> from mmsearch.train import train                                          # doctest: +SKIP
        >>> r = train("corpus/train", out="runs/a", model="tiny", composed="corpus/train/triplets.jsonl")  # doctest: +SKIP
    """
    cfg = cfg or TrainCfg()
    env = DistEnv.from_env()
    dev = rank_device(device, env)
    with process_group(env, dev):
        return _train(catalog, Path(out), model, cfg, composed, val, val_composed, dev, resume, progress, env)


def _train(catalog, run: Path, model, cfg: TrainCfg, composed, val, val_composed, dev: torch.device,
           resume: bool, progress: bool, env: DistEnv) -> TrainReport:
    asked = {"train": to_dict(cfg), "model": str(model), "catalog": str(Path(catalog).resolve()),
             "composed": str(Path(composed).resolve()) if composed else None,
             "val": str(Path(val).resolve()) if val else None,
             "val_composed": str(Path(val_composed).resolve()) if val_composed else None}
    asked = json.loads(json.dumps(asked))  # as it reads back from config.json (tuples -> lists)
    # Only rank 0 reads and writes the run folder (other machines need not see it).
    state, history = on_rank0(lambda: open_run(run, asked, resume), env, "checking the run folder")

    seed_everything(cfg.seed)  # the same initialisation on every rank (DDP also broadcasts rank 0's)
    net, tokenizer, _ = init_model(model, cfg)
    net.to(dev)
    start_state = trainable_state(net)  # WiSE-FT's other end: the weights training starts from
    categories = category_index(catalog)
    progress = progress and env.is_main
    tr = prepare_split(catalog, net, tokenizer, cfg, composed, categories, augment=True, progress=progress, env=env)
    if len(tr.items) < 2:
        raise TrainError(f"training needs at least 2 readable images; {catalog} has {len(tr.items)}")
    if len(tr.pair_pos) < 2:
        raise TrainError(f"training needs at least 2 items with text (title/text); {catalog} has "
                         f"{len(tr.pair_pos)} ({tr.skipped_no_text} without text)")
    va = prepare_split(val, net, tokenizer, cfg, val_composed, categories, augment=False, progress=progress,
                       env=env) if val else None
    if tr.skipped_no_text and env.is_main:
        log.warning("%d item(s) without text are left out of the pair losses", tr.skipped_no_text)

    classifier = nn.Linear(net.embed_dim, len(categories)).to(dev) \
        if cfg.loss_classify > 0 and len(categories) >= 2 else None
    in_backbone = {id(p) for tower in (net.image_tower, net.text_tower) for p in tower.backbone.parameters()}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in in_backbone]
    if classifier is not None:
        params += list(classifier.parameters())
    # No weight decay on the temperature, biases and norm gains.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Unfrozen backbone blocks learn at a lower rate: they start from good weights, the heads do not.
    backbone = [p for p in net.parameters() if p.requires_grad and id(p) in in_backbone]
    groups += [g for g in ({"params": [p for p in backbone if p.ndim >= 2], "weight_decay": cfg.weight_decay,
                            "lr": cfg.lr * cfg.backbone_lr_scale},
                           {"params": [p for p in backbone if p.ndim < 2], "weight_decay": 0.0,
                            "lr": cfg.lr * cfg.backbone_lr_scale}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    trained_backbone = trained_backbone_record(net, cfg.unfreeze)
    steps_per_epoch = math.ceil(len(tr.pair_pos) / cfg.batch_size)  # global batches: the same on any N
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_frac))

    start, best, best_epoch, bad_epochs = 0, None, 0, 0
    if state is not None:
        net.load_state_dict(state["model"], strict=False)
        if classifier is not None:
            classifier.load_state_dict(state["classifier"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best, best_epoch, bad_epochs = state["epoch"], state["best"], state["best_epoch"], state["bad_epochs"]
    use_fusion = (cfg.loss_composed > 0 and len(tr.triplets) >= 2) or classifier is not None
    use_scale = cfg.loss_contrastive > 0 or (cfg.loss_composed > 0 and len(tr.triplets) >= 2)
    fusion_trains = any(p.requires_grad for p in net.fusion.parameters())
    step_model = wrap_ddp(StepModel(net, classifier, raw=tr.raw), dev, env,
                          all_used=use_scale and (use_fusion or not fusion_trains))
    summary = {"pairs": len(tr.pair_pos), "triplets": len(tr.triplets), "skipped_no_text": tr.skipped_no_text,
               "skipped_bad_image": tr.skipped_bad_image, "categories": len(categories)}
    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asked, indent=2), encoding="utf-8")
        log.info("training on %s over %d process(es)", summary, env.world_size)

    for epoch in range(start, cfg.epochs):
        if va is not None and bad_epochs >= cfg.patience:
            break
        metrics = run_epoch(net, step_model, tr, cfg, opt, sched, dev, epoch, progress, env, tokenizer=tokenizer)

        def finish_epoch():  # rank 0: validate, decide, write; the decision goes to every rank
            nonlocal best, best_epoch, bad_epochs
            if va is not None:
                if va.raw:  # the backbones changed: validate on their current features
                    refresh_features(va, net, tokenizer)
                with interpolated(net, start_state, cfg.wise_alpha):  # what the checkpoint will hold
                    metrics.update(validate(net, va, dev))
            metrics["epoch"] = epoch + 1
            improved = va is None or best is None or metrics["val_recall"] > best
            if improved:
                best, best_epoch, bad_epochs = (metrics.get("val_recall"), epoch + 1, 0)
            else:
                bad_epochs += 1
            save_epoch(run, net, tokenizer, classifier, opt, sched, cfg, summary, metrics, history + [metrics],
                       improved, (epoch + 1, best, best_epoch, bad_epochs), trained_backbone, start_state)
            log.info("epoch %d: %s", epoch + 1, metrics)
            return metrics, best, best_epoch, bad_epochs

        metrics, best, best_epoch, bad_epochs = on_rank0(finish_epoch, env, f"finishing epoch {epoch + 1}")
        history.append(metrics)
    return TrainReport(run_dir=run, checkpoint=run / "model.pt", epochs_run=len(history), best_epoch=best_epoch,
                       best_metric=best, pairs=len(tr.pair_pos), triplets=len(tr.triplets),
                       skipped_no_text=tr.skipped_no_text, skipped_bad_image=tr.skipped_bad_image, metrics=history)


def save_epoch(run: Path, net: DualEncoder, tokenizer: Tokenizer, classifier: nn.Module | None, opt, sched,
               cfg: TrainCfg, summary: dict, metrics: dict, history: list[dict], improved: bool,
               progress_state: tuple, trained_backbone: dict | None = None,
               start_state: dict | None = None) -> None:
    """last.pt, model.pt (when improved), state.pt (atomically) and metrics.jsonl after an epoch.
    ``trained_backbone``: the unfrozen blocks, whose weights every file then carries. With
    ``cfg.wise_alpha`` < 1 the checkpoints hold the WiSE-FT mix of ``start_state`` and the trained weights
    (state.pt keeps the trained ones, to resume)."""
    epoch, best, best_epoch, bad_epochs = progress_state
    extra = {"train": to_dict(cfg), "summary": summary, "epoch": epoch, "metrics": metrics,
             "wise_ft_alpha": cfg.wise_alpha}
    with interpolated(net, start_state or {}, cfg.wise_alpha):
        save_checkpoint(net, tokenizer, run / "last.pt", extra=extra, trained_backbone=trained_backbone)
        if improved:
            save_checkpoint(net, tokenizer, run / "model.pt", extra=extra, trained_backbone=trained_backbone)
    keep = set((trained_backbone or {}).get("keys", ()))
    torch.save({"epoch": epoch, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "model": {k: v for k, v in net.state_dict().items() if "backbone" not in k or k in keep},
                "classifier": classifier.state_dict() if classifier is not None else {},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, run / "state.pt.tmp")
    (run / "state.pt.tmp").replace(run / "state.pt")
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(m) + "\n" for m in history)


def category_index(catalog: str | Path) -> dict[str, int]:
    cats = sorted({str(it.metadata["category"]) for it in scan_catalog(catalog) if "category" in it.metadata})
    return {c: i for i, c in enumerate(cats)}


class RawImages:
    """Unfrozen backbones: items' images decoded and preprocessed at every step, augmented on the fly
    (torch's global RNG, seeded per epoch) when ``cfg.aug_views`` > 0, within each item's policy."""

    def __init__(self, net: DualEncoder, cfg: TrainCfg):
        self.image_cfg, self.cfg = net.cfg.image, cfg
        self.plain = image_preprocess(net.cfg.image)
        self.aug: dict[Policy, AugmentedPreprocess] = {}

    def __call__(self, paths: list[str], policies: list[Policy]) -> torch.Tensor:  # -> (B, 3, S, S)
        out = []
        for path, pol in zip(paths, policies):
            im = load_image(path)
            if self.cfg.aug_views > 0:
                if pol not in self.aug:
                    self.aug[pol] = AugmentedPreprocess(self.image_cfg, self.cfg, pol)
                out.append(self.aug[pol](im))
            else:
                out.append(self.plain(im))
        return torch.stack(out)


def run_epoch(net: DualEncoder, step_model: nn.Module, tr: Split, cfg: TrainCfg, opt: torch.optim.Optimizer,
              sched, dev: torch.device, epoch: int, progress: bool, env: DistEnv | None = None,
              tokenizer: Tokenizer | None = None) -> dict:
    """One pass over the pairs; each step also takes the next batch of triplets (cycled).

    Every rank draws the same global batches (the same generator) and computes its contiguous slice of
    each; the losses are scaled so that DDP's average over ranks is the loss of the whole global batch.
    Frozen backbones: steps read cached features (with cached augmented views, one drawn per item and
    epoch; the plain image counts as one of the choices). Unfrozen (``tr.raw``): images and texts go
    through the backbones at every step.
    """
    env = env or DistEnv()
    # Everything random in an epoch derives from (seed, epoch), so --resume reproduces an uninterrupted run.
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout, on-the-fly augmentation
    net.train()
    for tower in (net.image_tower, net.text_tower):
        set_train_mode(tower.backbone, tr.raw)
    raw_images = RawImages(net, cfg) if tr.raw else None
    view_pick = torch.randint(0, tr.views.shape[1] + 1, (len(tr.items),), generator=gen) \
        if tr.views is not None else None  # per item: 0 = the plain image, v = cached view v - 1
    # A modifier that names a colour or a direction keeps its triplet's images unaugmented / within policy.
    mod_policy = [policy_for([t]) for t in tr.triplets.texts]

    def images(idx: torch.Tensor, extra: list[Policy] | None = None) -> torch.Tensor:
        """Pair or triplet images at item positions ``idx`` (B,): backbone features or pixels."""
        if raw_images is not None:
            pols = [tr.policies[int(i)] & (extra[k] if extra else Policy()) for k, i in enumerate(idx)]
            return raw_images([tr.items[int(i)].path for i in idx], pols).to(dev)
        if view_pick is None:
            return tr.img[idx].to(dev)
        v = view_pick[idx]
        if extra:
            v = torch.where(torch.tensor([p != Policy() for p in extra]), 0, v)
        return torch.where((v > 0)[:, None], tr.views[idx, (v - 1).clamp(min=0)], tr.img[idx]).to(dev)

    def texts(strings: list[str], feats: torch.Tensor | None, rows: torch.Tensor):
        if tr.raw:
            return {k: t.to(dev) for k, t in tokenizer([strings[int(r)] for r in rows]).items()}
        return feats[rows].to(dev)
    order = tr.pair_pos[torch.randperm(len(tr.pair_pos), generator=gen)]
    variant_pick = torch.rand(len(tr.pair_pos), generator=gen)
    pair_row = {int(p): r for r, p in enumerate(tr.pair_pos)}
    trip_order = torch.randperm(len(tr.triplets), generator=gen) if len(tr.triplets) else None
    use_composed = cfg.loss_composed > 0 and len(tr.triplets) >= 2
    classify = getattr(step_model, "module", step_model).classifier is not None
    sums: dict[str, float] = {}
    steps = math.ceil(len(order) / cfg.batch_size)
    t0, seen = time.perf_counter(), 0

    def mine(n: int) -> tuple[slice, list[int]]:  # this rank's rows of an n-row global batch, all ranks' sizes
        a, b = shard_ranges(n, env.world_size)[env.rank]
        return slice(a, b), [hi - lo for lo, hi in shard_ranges(n, env.world_size)]

    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
    for step in bar:
        pos = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]  # the global batch
        if len(pos) < 2:  # a one-item batch has no negatives
            continue
        rows = [pair_row[int(p)] for p in pos]
        var = torch.tensor([tr.variants[r][int(variant_pick[r] * len(tr.variants[r]))] for r in rows])
        part, sizes = mine(len(pos))
        feats = {"img": images(pos[part]), "txt": texts(tr.strings, tr.txt, var[part])}
        if use_composed:
            n = len(tr.triplets)
            pick = trip_order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % n][:min(n, cfg.batch_size)]
            tpart, tsizes = mine(len(pick))
            local = pick[tpart]
            pols = [mod_policy[int(i)] for i in local]
            feats.update(ref=images(tr.triplets.ref[local], pols), mod=texts(tr.triplets.texts, tr.mod, local),
                         tgt=images(tr.triplets.tgt[local], pols))
        with autocast(dev):
            emb = step_model(**feats)
            scale = emb["scale"]
            losses = {}
            if cfg.loss_contrastive > 0:
                # pairs whose items share their first text (the title) are not each other's negatives
                same_ids = torch.tensor([tr.variants[r][0] for r in rows], device=dev) if cfg.mask_same_text else None
                losses["contrastive"] = gathered_contrastive_loss(emb["img"], emb["txt"], scale, sizes, same_ids)
            if use_composed:
                losses["composed"] = gathered_composed_loss(emb["fused"], emb["tgt"], scale,
                                                            tr.triplets.tgt[pick].to(dev), tsizes)
            if classify:
                labels = tr.labels[pos]
                kept, kept_here = int((labels >= 0).sum()), int((labels[part] >= 0).sum())
                # the mean over the global batch's labelled items, split into per-rank shares
                losses["classify"] = classification_loss(emb["logits"].float(), labels[part].to(dev)) \
                    * (kept_here * env.world_size / max(1, kept))
            weights = {"contrastive": cfg.loss_contrastive, "composed": cfg.loss_composed,
                       "classify": cfg.loss_classify}
            loss = sum(weights[k] * v.float() for k, v in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks here
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        sched.step()
        seen += len(pos)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", items_s=f"{seen / max(1e-9, time.perf_counter() - t0):.0f}")
    bar.close()
    if env.is_distributed:  # each rank's share of the loss; their mean is the global batch's loss
        shares = all_gather_objects(sums, env, f"the end of epoch {epoch + 1}")
        sums = {k: sum(s[k] for s in shares) / env.world_size for k in sums}
    out = {k: round(v / max(1, steps), 5) for k, v in sums.items()}
    out.update(lr=opt.param_groups[0]["lr"], temperature=round(1.0 / float(net.logit_scale.detach().exp()), 5),
               items_per_s=round(seen / max(1e-9, time.perf_counter() - t0), 1), world_size=env.world_size)
    return out


def load_train_cfg(path: str | Path | None) -> TrainCfg:
    """A named train config (``mmsearch/train_configs/<name>.json``), a JSON file, or the defaults."""
    if not path:
        return TrainCfg()
    from importlib import resources

    named = resources.files("mmsearch") / "train_configs" / f"{path}.json"
    target = Path(str(named)) if named.is_file() else Path(path)
    if not target.is_file():
        raise TrainError(f"no train config {path!r} (a name in mmsearch/train_configs/ or a JSON file)")
    try:
        return TrainCfg.from_json_file(target)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise TrainError(f"bad train config {target}: {exc}") from None


