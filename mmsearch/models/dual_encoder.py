"""The dual encoder: ``encode_image`` / ``encode_text`` are the only contract with the index code."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..config import ModelCfg
from .encoders import ImageTower, TextTower, l2n
from .fusion import build_fusion


class DualEncoder(nn.Module):
    """Image tower + text tower + fusion, all projecting into one space of ``cfg.embed_dim``."""

    def __init__(self, cfg: ModelCfg, text_tower: TextTower, image_tower: ImageTower):
        super().__init__()
        self.cfg = cfg
        self.text_tower = text_tower
        self.image_tower = image_tower
        self.fusion = build_fusion(cfg.fusion, cfg.embed_dim)
        # CLIP-style learnable temperature, used by the contrastive loss (log of 1 / 0.07).
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def visual_dim(self) -> int | None:
        """Width of the raw visual channel stored per item, or None if this model has none."""
        return self.image_tower.num_features if self.cfg.visual_channel else None

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) shared-space embeddings."""
        _, emb = self.image_tower(images)
        return l2n(emb) if normalize else emb

    def encode_image_channels(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the index stores per image: ``image`` (B, D) and, if enabled, ``visual`` (B, F)."""
        feats, emb = self.image_tower(images)
        out = {"image": l2n(emb)}
        if self.cfg.visual_channel:
            out["visual"] = l2n(feats)
        return out

    def encode_text(self, batch: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """Tokenizer output -> (B, D) shared-space embeddings."""
        emb = self.text_tower(batch)
        return l2n(emb) if normalize else emb

    def fuse(self, img: torch.Tensor, txt: torch.Tensor, image_weight: float = 0.5) -> torch.Tensor:
        """(B, D) unit image and text query embeddings -> (B, D) unit query embedding."""
        return self.fusion(img, txt, image_weight)

    def fingerprint(self) -> str:
        """sha256 over the config and every parameter and buffer: two models with the same
        fingerprint embed identically, so an index records which model built it."""
        h = hashlib.sha256(self.cfg.to_json().encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
