"""Training losses on unit embeddings, one implementation for 1..N processes.

Like open_clip's ``ClipLoss``, each loss gathers the features of the global batch when a process group
is running (``torch.distributed``) and is the plain single-process loss when not (world size 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dist.env import gather_features, rank_world


def same_text_mask(text_ids: torch.Tensor | None, rows: int, offset: int = 0) -> torch.Tensor | None:
    """(rows, total) True where row i and column j are different pairs with the same text (``text_ids``:
    (total,) one id per pair of the global batch; row i is pair ``offset + i``). Such a column is a false
    negative: many items share a class name or an emoji label."""
    if text_ids is None:
        return None
    mine = text_ids[offset:offset + rows]
    same = mine[:, None] == text_ids[None, :]
    same[torch.arange(rows, device=same.device), torch.arange(rows, device=same.device) + offset] = False
    return same


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                     sizes: list[int] | None = None, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the *global* batch, computed locally on each rank.

    image, text: (B, D) unit embeddings of this rank's pairs (row i matches row i); scale: the logit
    multiplier (``logit_scale.exp()``). Without a process group (world size 1) this is the plain
    single-process loss: the mean of CE(scale * img @ txt.T, arange(B)) and CE(scale * txt @ img.T,
    arange(B)). With one, each rank scores its B rows against all columns of the global batch
    ((B, total) logits, not the full square). The result is scaled so that its mean over ranks (what
    DistributedDataParallel does with gradients) is the single-process loss on the concatenated global
    batch, also when ``sizes`` are uneven; ``tests/test_distributed.py`` checks this with 2 processes.
    ``text_ids`` (total,): the global batch's text ids; pairs sharing a text are not negatives (masked out
    of both directions).
    """
    rank, world = rank_world()
    sizes = sizes or [image.shape[0]] * world
    all_image, all_text = gather_features(image, sizes), gather_features(text, sizes)  # (total, D)
    labels = torch.arange(image.shape[0], device=image.device) + sum(sizes[:rank])
    ce = F.cross_entropy
    same = same_text_mask(text_ids, image.shape[0], sum(sizes[:rank]))
    i2t, t2i = scale * image @ all_text.T, scale * text @ all_image.T  # (B, total) logits each way
    if same is not None:
        i2t, t2i = i2t.masked_fill(same, float("-inf")), t2i.masked_fill(same, float("-inf"))
    summed = ce(i2t, labels, reduction="sum") + ce(t2i, labels, reduction="sum")
    return summed / 2 * world / sum(sizes)


def composed_loss(fused: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float,
                  target_ids: torch.Tensor | None = None, sizes: list[int] | None = None) -> torch.Tensor:
    """fuse(reference, modifier) (B, D) -> target image (B, D), contrastive against the targets of the
    global batch (CLIP4Cir): this rank's fused queries against the targets of all ranks. ``target_ids``
    are the ids of the *global* batch's targets (total,), the same on every rank; when two rows share a
    target, the duplicate column is masked out of the other row's denominator so the same image is not
    both positive and negative. Scaled like :func:`contrastive_loss` (mean over ranks = global loss;
    world size 1: the single-process loss)."""
    rank, world = rank_world()
    sizes = sizes or [fused.shape[0]] * world
    all_target = gather_features(target, sizes)  # (total, D)
    labels = torch.arange(fused.shape[0], device=fused.device) + sum(sizes[:rank])
    logits = scale * fused @ all_target.T  # (B, total)
    if target_ids is not None:
        same = target_ids[labels][:, None] == target_ids[None, :]
        same[torch.arange(len(labels), device=same.device), labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels, reduction="sum") * world / sum(sizes)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy over items that have a category (label >= 0); 0 when none has one."""
    keep = labels >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])
