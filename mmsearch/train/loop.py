"""``train``: learn the shared space (projection heads + fusion) with a fused objective.

With frozen backbones (the default, ``unfreeze=0``) pooled backbone features are extracted once and
cached by file hash (:mod:`mmsearch.train.features`); every epoch then runs only the heads and the fusion, so
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from ..config import TrainCfg, to_dict
from ..dist.env import DistEnv, broadcast_object, process_group, rank_device
from ..evaluate import recall_at_k
from ..fsutil import atomic_write
from ..models.device import seed_everything
from ..models.dual_encoder import DualEncoder
from ..models.encoders import l2n
from ..models.factory import (
    Tokenizer,
    build_model,
    build_named_model,
    get_model_config,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from ..models.fusion import build_fusion
from .splits import Split, TrainError, category_index, prepare_split, refresh_features
from .step import StepModel, build_optimizer, run_epoch, wrap_ddp
from .unfreeze import trained_backbone_record, unfreeze_last
from .wise import interpolated, trainable_state

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Everything a training run takes besides its catalog (as :class:`mmsearch.index.options.BuildOptions`
    does for an index build); :func:`train` also takes each field by name.

    out: run folder (config, metrics.jsonl, state.pt, last.pt, model.pt).
    model: a built-in config (trained from its fresh initialisation) or a checkpoint (fine-tuned).
    cfg: a :class:`TrainCfg` (epochs, batch size, learning rate, loss weights, seed ...).
    composed: triplets JSONL (``{"reference": id, "text": "...", "target": id}``) for the composed loss.
    val: validation catalog for early stopping on Recall@10; ``val_composed`` its triplets.
    device: ``auto``, ``cpu`` or ``cuda[:N]`` (under torchrun ``auto``/``cuda`` is ``cuda:LOCAL_RANK``).
    resume: continue the run in ``out`` from its last finished epoch (on any number of ranks).
    progress: show progress bars (on rank 0).
    """

    out: str | Path = "runs/train"
    model: str | Path = "default"
    cfg: TrainCfg = field(default_factory=TrainCfg)
    composed: str | Path | None = None
    val: str | Path | None = None
    val_composed: str | Path | None = None
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    @classmethod
    def from_config(cls, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    **fields: Any) -> "TrainOptions":
        """A run of the train config ``config`` (a name in ``mmsearch/train/configs/``, a JSON file; None:
        ``default``) with ``overrides`` of its :class:`TrainCfg` fields (None values are left out: options
        not given), and the other fields of :class:`TrainOptions` by name. What ``mmsearch train`` builds."""
        cfg = load_train_cfg(config or "default")
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        try:
            cfg = dataclasses.replace(cfg, **given)
        except TypeError:
            unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainCfg)})
            raise TrainError(f"unknown train setting(s) {', '.join(unknown)}") from None
        return cls(cfg=cfg, **fields)


class TrainKw(TypedDict, total=False):
    """:class:`TrainOptions`' fields as keyword arguments of :func:`train` (tests/test_build_options.py
    keeps the two in step)."""

    out: str | Path
    model: str | Path
    cfg: TrainCfg
    composed: str | Path | None
    val: str | Path | None
    val_composed: str | Path | None
    device: str
    resume: bool
    progress: bool


@dataclass
class Trainee:
    """What a run trains, and saves after every epoch."""

    net: DualEncoder
    tokenizer: Tokenizer
    classifier: nn.Module | None
    opt: Any
    sched: Any
    trained_backbone: dict | None  # the unfrozen backbone blocks, whose weights every checkpoint carries
    start_state: dict  # the trainable weights training started from (WiSE-FT's other end)


@dataclass
class Standing:
    """Early stopping's record after ``epoch`` finished epochs (state.pt keeps it, to resume)."""

    epoch: int = 0
    best: float | None = None  # best validation Recall@10 (None without --val)
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one

    def record(self, epoch: int, metrics: dict, validated: bool) -> None:
        """Epoch ``epoch`` (1-based) finished with ``metrics``; without validation every epoch is the best."""
        self.epoch = epoch
        if not validated or self.best is None or metrics["val_recall"] > self.best:
            self.best, self.best_epoch, self.bad_epochs = metrics.get("val_recall"), epoch, 0
        else:
            self.bad_epochs += 1

    @property
    def improved(self) -> bool:
        return self.best_epoch == self.epoch


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


def train(catalog: str | Path, *, options: TrainOptions | None = None,
          **overrides: Unpack[TrainKw]) -> TrainReport:
    """Train the projection heads and fusion of a model on ``catalog`` (items with text are pairs).

    Under torchrun (WORLD_SIZE > 1) this is one rank of a DistributedDataParallel run with the same
    global batch size; every rank returns the same report.

    Args:
        catalog: training catalog folder (catalog.jsonl with titles; ``category`` feeds the classifier).
        options: a :class:`TrainOptions` (out, model, cfg, composed, val, val_composed, device, resume,
            progress; each documented there). Default: ``TrainOptions()``.
        **overrides: any field of :class:`TrainOptions` by name, over ``options``.

    Returns:
        A :class:`TrainReport`; ``report.checkpoint`` is usable as ``--model`` for ``mmsearch index``.

    Example:
        >>> from mmsearch.train import train                                          # doctest: +SKIP
        >>> r = train("corpus/train", out="runs/a", model="tiny", composed="corpus/train/triplets.jsonl")  # doctest: +SKIP
    """
    opts = dataclasses.replace(options or TrainOptions(), **overrides)
    if opts.cfg is None:
        opts.cfg = TrainCfg()
    env = DistEnv.from_env()
    dev = rank_device(opts.device, env)
    with process_group(env, dev):
        return _train(catalog, opts, dev, env)


def _train(catalog, opts: TrainOptions, dev: torch.device, env: DistEnv) -> TrainReport:
    cfg, run = opts.cfg, Path(opts.out)
    asked = _asked(catalog, opts)
    # Only rank 0 reads and writes the run folder (other machines need not see it).
    state, history = on_rank0(lambda: open_run(run, asked, opts.resume), env, "checking the run folder")

    seed_everything(cfg.seed)  # the same initialisation on every rank (DDP also broadcasts rank 0's)
    net, tokenizer, _ = init_model(opts.model, cfg)
    net.to(dev)
    start_state = trainable_state(net)  # WiSE-FT's other end: the weights training starts from
    categories = category_index(catalog)
    progress = opts.progress and env.is_main
    tr, va = _splits(catalog, opts, net, tokenizer, categories, progress, env)

    classifier = nn.Linear(net.embed_dim, len(categories)).to(dev) \
        if cfg.loss_classify > 0 and len(categories) >= 2 else None
    steps_per_epoch = math.ceil(len(tr.pair_pos) / cfg.batch_size)  # global batches: the same on any N
    opt, sched = build_optimizer(net, classifier, cfg, cfg.epochs * steps_per_epoch)
    trainee = Trainee(net, tokenizer, classifier, opt, sched, trained_backbone_record(net, cfg.unfreeze), start_state)
    standing = _resume(trainee, state) if state is not None else Standing()
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

    for epoch in range(standing.epoch, cfg.epochs):
        if va is not None and standing.bad_epochs >= cfg.patience:
            break
        metrics = run_epoch(net, step_model, tr, cfg, opt, sched, dev, epoch, progress, env, tokenizer=tokenizer)

        def finish_epoch():  # rank 0: validate, decide, write; the decision goes to every rank
            if va is not None:
                if va.raw:  # the backbones changed: validate on their current features
                    refresh_features(va, net, tokenizer)
                with interpolated(net, start_state, cfg.wise_alpha):  # what the checkpoint will hold
                    metrics.update(validate(net, va, dev))
            metrics["epoch"] = epoch + 1
            standing.record(epoch + 1, metrics, validated=va is not None)
            save_epoch(run, trainee, cfg, summary, history + [metrics], standing)
            log.info("epoch %d: %s", epoch + 1, metrics)
            return metrics, standing

        metrics, standing = on_rank0(finish_epoch, env, f"finishing epoch {epoch + 1}")
        history.append(metrics)
    return TrainReport(run_dir=run, checkpoint=run / "model.pt", epochs_run=len(history),
                       best_epoch=standing.best_epoch, best_metric=standing.best, pairs=len(tr.pair_pos),
                       triplets=len(tr.triplets), skipped_no_text=tr.skipped_no_text,
                       skipped_bad_image=tr.skipped_bad_image, metrics=history)


def _asked(catalog, opts: TrainOptions) -> dict:
    """What a run is asked to do, as config.json records it (and --resume compares)."""
    def resolved(path):
        return str(Path(path).resolve()) if path else None

    asked = {"train": to_dict(opts.cfg), "model": str(opts.model), "catalog": resolved(catalog),
             "composed": resolved(opts.composed), "val": resolved(opts.val),
             "val_composed": resolved(opts.val_composed)}
    return json.loads(json.dumps(asked))  # as it reads back from config.json (tuples -> lists)


def _splits(catalog, opts: TrainOptions, net: DualEncoder, tokenizer: Tokenizer, categories: dict, progress: bool,
            env: DistEnv) -> tuple[Split, Split | None]:
    """The training split (checked: enough images and pairs) and the validation split (None without --val)."""
    cfg = opts.cfg
    tr = prepare_split(catalog, net, tokenizer, cfg, opts.composed, categories, augment=True, progress=progress,
                       env=env)
    if len(tr.items) < 2:
        raise TrainError(f"training needs at least 2 readable images; {catalog} has {len(tr.items)}")
    if len(tr.pair_pos) < 2:
        raise TrainError(f"training needs at least 2 items with text (title/text); {catalog} has "
                         f"{len(tr.pair_pos)} ({tr.skipped_no_text} without text)")
    va = prepare_split(opts.val, net, tokenizer, cfg, opts.val_composed, categories, augment=False,
                       progress=progress, env=env) if opts.val else None
    if tr.skipped_no_text and env.is_main:
        log.warning("%d item(s) without text are left out of the pair losses", tr.skipped_no_text)
    return tr, va


def _resume(trainee: Trainee, state: dict) -> Standing:
    """Load a state.pt's weights and optimizer into ``trainee``; -> its early-stopping record."""
    trainee.net.load_state_dict(state["model"], strict=False)
    if trainee.classifier is not None:
        trainee.classifier.load_state_dict(state["classifier"])
    trainee.opt.load_state_dict(state["optimizer"])
    trainee.sched.load_state_dict(state["scheduler"])
    return Standing(state["epoch"], state["best"], state["best_epoch"], state["bad_epochs"])


def save_epoch(run: Path, trainee: Trainee, cfg: TrainCfg, summary: dict, history: list[dict],
               standing: Standing) -> None:
    """last.pt, model.pt (when the epoch improved), state.pt (atomically) and metrics.jsonl after an epoch
    (``history[-1]``'s). Every file carries the unfrozen backbone blocks (``trainee.trained_backbone``). With
    ``cfg.wise_alpha`` < 1 the checkpoints hold the WiSE-FT mix of ``trainee.start_state`` and the trained
    weights (state.pt keeps the trained ones, to resume)."""
    net, backbone = trainee.net, trainee.trained_backbone
    extra = {"train": to_dict(cfg), "summary": summary, "epoch": standing.epoch, "metrics": history[-1],
             "wise_ft_alpha": cfg.wise_alpha}
    with interpolated(net, trainee.start_state, cfg.wise_alpha):
        save_checkpoint(net, trainee.tokenizer, run / "last.pt", extra=extra, trained_backbone=backbone)
        if standing.improved:
            save_checkpoint(net, trainee.tokenizer, run / "model.pt", extra=extra, trained_backbone=backbone)
    keep = set((backbone or {}).get("keys", ()))
    state = {**dataclasses.asdict(standing),
             "model": {k: v for k, v in net.state_dict().items() if "backbone" not in k or k in keep},
             "classifier": trainee.classifier.state_dict() if trainee.classifier is not None else {},
             "optimizer": trainee.opt.state_dict(), "scheduler": trainee.sched.state_dict()}
    atomic_write(run / "state.pt", lambda tmp: torch.save(state, tmp), durable=False)
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(m) + "\n" for m in history)


def load_train_cfg(path: str | Path | None) -> TrainCfg:
    """A named train config (``mmsearch/train/configs/<name>.json``), a JSON file, or the defaults."""
    if not path:
        return TrainCfg()
    from importlib import resources

    named = resources.files("mmsearch.train") / "configs" / f"{path}.json"
    target = Path(str(named)) if named.is_file() else Path(path)
    if not target.is_file():
        raise TrainError(f"no train config {path!r} (a name in mmsearch/train/configs/ or a JSON file)")
    try:
        return TrainCfg.from_json_file(target)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise TrainError(f"bad train config {target}: {exc}") from None
