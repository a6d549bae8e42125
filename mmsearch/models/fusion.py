"""Query fusion: (image embedding, text embedding) -> one query embedding in the shared space.

``fuse_sum`` is a pure function on unit vectors, re-normalised after mixing. Learned fusions are
``nn.Module``s with the same call shape ``fusion(img, txt, image_weight) -> (B, D)`` unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError


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


class ConcatFusion(nn.Module):
    """The classic design: concatenate image and text (input width = image dim + text dim), MLP, project.

    ``image_weight`` is ignored: the MLP learns how much each side counts.
    """

    def __init__(self, embed_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or embed_dim
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
        return F.normalize(self.mlp(torch.cat([img.float(), txt.float()], dim=-1)), dim=-1)


class GatedFusion(nn.Module):
    """TIRG (Vo et al. 2019): a gate keeps part of the image, a residual adds what the text changes.

    out = normalize(w_g * sigmoid(gate([img, txt])) * img + w_r * residual([img, txt])).
    Starts close to the image itself (gate ~ 1, small residual), which is the right prior for edits.
    """

    def __init__(self, embed_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or embed_dim
        self.gate = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.residual = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.w_gate = nn.Parameter(torch.tensor(1.0))
        self.w_res = nn.Parameter(torch.tensor(0.1))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
        img, txt = img.float(), txt.float()
        x = torch.cat([img, txt], dim=-1)  # (B, 2D)
        out = self.w_gate * torch.sigmoid(self.gate(x)) * img + self.w_res * self.residual(x)
        return F.normalize(out, dim=-1)


class CombinerFusion(nn.Module):
    """CLIP4Cir's Combiner (Baldrati et al. 2022): project both sides, mix them with an MLP, and add a
    learned, per-query convex blend of the raw image and text embeddings.

    out = normalize(mlp([p(img), p(txt)]) + lam * txt + (1 - lam) * img), lam = sigmoid(g([p(img), p(txt)])).
    """

    def __init__(self, embed_dim: int, proj_dim: int | None = None, hidden: int | None = None):
        super().__init__()
        proj_dim = proj_dim or embed_dim
        hidden = hidden or embed_dim
        self.img_proj = nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.ReLU(), nn.Dropout(0.1))
        self.txt_proj = nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.ReLU(), nn.Dropout(0.1))
        self.mix = nn.Sequential(nn.Linear(2 * proj_dim, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, embed_dim))
        self.scalar = nn.Sequential(nn.Linear(2 * proj_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
        img, txt = img.float(), txt.float()
        x = torch.cat([self.img_proj(img), self.txt_proj(txt)], dim=-1)  # (B, 2P)
        lam = torch.sigmoid(self.scalar(x))  # (B, 1)
        return F.normalize(self.mix(x) + lam * txt + (1.0 - lam) * img, dim=-1)


FUSIONS: dict[str, type[nn.Module]] = {"sum": SumFusion, "concat": ConcatFusion, "gated": GatedFusion,
                                       "combiner": CombinerFusion}


def build_fusion(kind: str, embed_dim: int) -> nn.Module:
    try:
        cls = FUSIONS[kind]
    except KeyError:
        raise ModelError(f"unknown fusion {kind!r} (known: {', '.join(sorted(FUSIONS))})") from None
    return cls() if cls is SumFusion else cls(embed_dim)  # type: ignore[call-arg]
