"""Training losses on unit embeddings. Each is a pure function; ``FusedLoss`` weights and sums them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float,
                     text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric image<->text InfoNCE (CLIP): row i of ``img`` (B, D) matches row i of ``txt`` (B, D).

    mean of CE(scale * img @ txt.T, arange(B)) and CE(scale * txt @ img.T, arange(B)). With ``text_ids``
    (B,), pairs sharing a text are not each other's negatives (masked out of both directions).
    """
    logits = logit_scale * img @ txt.t()  # (B, B)
    same = same_text_mask(text_ids, len(img))
    if same is not None:
        logits = logits.masked_fill(same, float("-inf"))  # symmetric, so the transpose is masked too
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def composed_loss(fused: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor | float,
                  target_ids: torch.Tensor | None = None) -> torch.Tensor:
    """fuse(reference, modifier) (B, D) -> target image (B, D), contrastive against the batch's targets
    (CLIP4Cir). When two rows share a target (same ``target_ids``), the duplicate column is masked out
    of the other row's denominator so the same image is not both positive and negative."""
    logits = logit_scale * fused @ target.t()  # (B, B)
    if target_ids is not None:
        same = target_ids[:, None] == target_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(fused), device=fused.device))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy over items that have a category (label >= 0); 0 when none has one."""
    keep = labels >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])
