"""One training epoch: the trainable step module, its optimizer and schedule, the batches of an epoch."""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..catalog.images import load_image
from ..config import TrainCfg
from ..dist.env import DistEnv, all_gather_objects
from ..models.device import autocast
from ..models.dual_encoder import DualEncoder
from ..models.encoders import l2n
from ..models.factory import Tokenizer, image_preprocess
from ..ranges import even_ranges
from .augment import AugmentedPreprocess, Policy, policy_for
from .loss import classification_loss, composed_loss, contrastive_loss
from .splits import Split
from .unfreeze import set_train_mode


def lr_lambda(total_steps: int, warmup_frac: float):
    warmup = max(1, int(round(warmup_frac * total_steps)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(net: DualEncoder, classifier: nn.Module | None, cfg: TrainCfg) -> list[dict]:
    """AdamW parameter groups: heads/fusion/classifier with and without weight decay, then unfrozen
    backbone blocks (if any) at ``cfg.backbone_lr_scale`` times the learning rate."""
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
    return groups


def build_optimizer(net: DualEncoder, classifier: nn.Module | None, cfg: TrainCfg, total_steps: int):
    """(AdamW over :func:`param_groups`, warm-up + cosine LambdaLR over ``total_steps``)."""
    opt = torch.optim.AdamW(param_groups(net, classifier, cfg), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, cfg.warmup_frac))
    return opt, sched


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
                                   find_unused_parameters=not all_used,
                                   **{no_sync: False})  # type: ignore[arg-type]


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


class EpochInputs:
    """The step inputs of one epoch: pair/triplet images (cached features, a cached augmented view, or
    pixels with unfrozen backbones) and texts (cached features or tokens)."""

    def __init__(self, net: DualEncoder, tr: Split, cfg: TrainCfg, dev: torch.device, gen: torch.Generator,
                 tokenizer: Tokenizer | None):
        self.tr, self.dev, self.tokenizer = tr, dev, tokenizer
        self.raw_images = RawImages(net, cfg) if tr.raw else None
        self.view_pick = torch.randint(0, tr.views.shape[1] + 1, (len(tr.items),), generator=gen) \
            if tr.views is not None else None  # per item: 0 = the plain image, v = cached view v - 1

    def images(self, idx: torch.Tensor, extra: list[Policy] | None = None) -> torch.Tensor:
        """Pair or triplet images at item positions ``idx`` (B,): backbone features or pixels."""
        tr, dev = self.tr, self.dev
        if self.raw_images is not None:
            pols = [tr.policies[int(i)] & (extra[k] if extra else Policy()) for k, i in enumerate(idx)]
            return self.raw_images([tr.items[int(i)].path for i in idx], pols).to(dev)
        if self.view_pick is None:
            return tr.img[idx].to(dev)
        v = self.view_pick[idx]
        if extra:
            v = torch.where(torch.tensor([p != Policy() for p in extra]), 0, v)
        return torch.where((v > 0)[:, None], tr.views[idx, (v - 1).clamp(min=0)], tr.img[idx]).to(dev)

    def texts(self, strings: list[str], feats: torch.Tensor | None, rows: torch.Tensor):
        if self.tr.raw:
            return {k: t.to(self.dev) for k, t in self.tokenizer([strings[int(r)] for r in rows]).items()}
        return feats[rows].to(self.dev)


def rank_rows(n: int, env: DistEnv) -> tuple[slice, list[int]]:
    """This rank's rows of an n-row global batch, and every rank's row count."""
    a, b = even_ranges(n, env.world_size)[env.rank]
    return slice(a, b), [hi - lo for lo, hi in even_ranges(n, env.world_size)]


def step_losses(emb: dict[str, torch.Tensor], tr: Split, cfg: TrainCfg, dev: torch.device, env: DistEnv,
                pos: torch.Tensor, part: slice, sizes: list[int], pick: torch.Tensor | None,
                tsizes: list[int] | None, classify: bool,
                text_ids: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(each weighted loss term, their weighted sum) of one step, scaled for DDP's mean over ranks.
    ``text_ids`` (global batch,): pairs sharing an id are not each other's contrastive negatives."""
    scale = emb["scale"]
    losses = {}
    if cfg.loss_contrastive > 0:
        losses["contrastive"] = contrastive_loss(emb["img"], emb["txt"], scale, sizes, text_ids.to(dev)
                                                 if text_ids is not None else None)
    if pick is not None:
        losses["composed"] = composed_loss(emb["fused"], emb["tgt"], scale, tr.triplets.tgt[pick].to(dev), tsizes)
    if classify:
        labels = tr.labels[pos]
        kept, kept_here = int((labels >= 0).sum()), int((labels[part] >= 0).sum())
        # the mean over the global batch's labelled items, split into per-rank shares
        losses["classify"] = classification_loss(emb["logits"].float(), labels[part].to(dev)) \
            * (kept_here * env.world_size / max(1, kept))
    weights = {"contrastive": cfg.loss_contrastive, "composed": cfg.loss_composed, "classify": cfg.loss_classify}
    loss = sum(weights[k] * v.float() for k, v in losses.items())
    return losses, loss  # type: ignore[return-value]


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    sched.step()


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
    inputs = EpochInputs(net, tr, cfg, dev, gen, tokenizer)
    # A modifier that names a colour or a direction keeps its triplet's images unaugmented / within policy.
    mod_policy = [policy_for([t]) for t in tr.triplets.texts]
    order = tr.pair_pos[torch.randperm(len(tr.pair_pos), generator=gen)]
    variant_pick = torch.rand(len(tr.pair_pos), generator=gen)
    pair_row = {int(p): r for r, p in enumerate(tr.pair_pos)}
    trip_order = torch.randperm(len(tr.triplets), generator=gen) if len(tr.triplets) else None
    use_composed = cfg.loss_composed > 0 and len(tr.triplets) >= 2
    classify = getattr(step_model, "module", step_model).classifier is not None
    sums: dict[str, float] = {}
    steps = math.ceil(len(order) / cfg.batch_size)
    t0, seen = time.perf_counter(), 0

    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
    for step in bar:
        pos = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]  # the global batch
        if len(pos) < 2:  # a one-item batch has no negatives
            continue
        rows = [pair_row[int(p)] for p in pos]
        var = torch.tensor([tr.variants[r][int(variant_pick[r] * len(tr.variants[r]))] for r in rows])
        # pairs whose items share their first text (the title) are not each other's negatives
        same_ids = torch.tensor([tr.variants[r][0] for r in rows]) if cfg.mask_same_text else None
        part, sizes = rank_rows(len(pos), env)
        feats = {"img": inputs.images(pos[part]), "txt": inputs.texts(tr.strings, tr.txt, var[part])}
        pick, tsizes = None, None
        if use_composed:
            n = len(tr.triplets)
            pick = trip_order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % n][:min(n, cfg.batch_size)]
            tpart, tsizes = rank_rows(len(pick), env)
            local = pick[tpart]
            pols = [mod_policy[int(i)] for i in local]
            feats.update(ref=inputs.images(tr.triplets.ref[local], pols),
                         mod=inputs.texts(tr.triplets.texts, tr.mod, local),
                         tgt=inputs.images(tr.triplets.tgt[local], pols))
        with autocast(dev):
            emb = step_model(**feats)
            losses, loss = step_losses(emb, tr, cfg, dev, env, pos, part, sizes, pick, tsizes, classify, same_ids)
        optimizer_step(opt, sched, loss, cfg.grad_clip)
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
