"""Training losses on unit embeddings, one implementation for 1..N processes.

Like open_clip's ``ClipLoss``, each loss gathers the features of the global batch when a process group
is running (``torch.distributed``) and is the plain single-process loss when not (world size 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dist.env import gather_features, rank_world


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                     sizes: list[int] | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the *global* batch, computed locally on each rank.

    image, text: (B, D) unit embeddings of this rank's pairs (row i matches row i); scale: the logit
    multiplier (``logit_scale.exp()``). Without a process group (world size 1) this is the plain
    single-process loss: the mean of CE(scale * img @ txt.T, arange(B)) and CE(scale * txt @ img.T,
    arange(B)). With one, each rank scores its B rows against all columns of the global batch
    ((B, total) logits, not the full square). The result is scaled so that its mean over ranks (what
    DistributedDataParallel does with gradients) is the single-process loss on the concatenated global
    batch, also when ``sizes`` are uneven; ``tests/test_distributed.py`` checks this with 2 processes.
    """
    rank, world = rank_world()
    sizes = sizes or [image.shape[0]] * world
    all_image, all_text = gather_features(image, sizes), gather_features(text, sizes)  # (total, D)
    labels = torch.arange(image.shape[0], device=image.device) + sum(sizes[:rank])
    ce = F.cross_entropy
    summed = ce(scale * image @ all_text.T, labels, reduction="sum") \
        + ce(scale * text @ all_image.T, labels, reduction="sum")  # (B, total) logits each way
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
