"""Query fusion: (image embedding, text embedding) -> one query embedding in the shared space.

``fuse_sum`` is a pure function on unit vectors, re-normalised after mixing. Learned fusions are
``nn.Module``s with the same call shape ``fusion(img, txt, image_weight) -> (B, D)`` unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError


def fuse_sum(img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
    """normalize(w * img + (1 - w) * txt) for unit vectors (B, D), w in [0, 1].

    w = 1 returns the image embedding, w = 0 the text embedding. If the mix cancels out exactly
    (opposite vectors at w = 0.5) the result is the zero vector, which scores every item 0.
    """
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    return F.normalize(image_weight * img.float() + (1.0 - image_weight) * txt.float(), dim=-1)


class SumFusion(nn.Module):
    """Parameter-free weighted sum (the default, and the baseline the learned fusions must beat)."""

    def forward(self, img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
        return fuse_sum(img, txt, image_weight)


FUSIONS: dict[str, type[nn.Module]] = {"sum": SumFusion}


def build_fusion(kind: str, embed_dim: int) -> nn.Module:
    try:
        cls = FUSIONS[kind]
    except KeyError:
        raise ModelError(f"unknown fusion {kind!r} (known: {', '.join(sorted(FUSIONS))})") from None
    return cls() if cls is SumFusion else cls(embed_dim)  # type: ignore[call-arg]
