"""Reader -> encoder -> arrays: turn image files and texts into unit embeddings, batch by batch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import CatalogDataset, collate_images
from .device import autocast
from .factory import Preprocess, Tokenizer
from .model import DualEncoder

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    """Embeddings of the images that loaded, per channel, and the reasons for the ones that did not."""

    ok: list[int]  # positions (into the input list) of encoded images, ascending
    channels: dict[str, np.ndarray]  # channel -> (len(ok), dim) float32, unit rows
    failed: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def encode_image_files(model: DualEncoder, preprocess: Preprocess, paths: list[str], batch_size: int = 32,
                       num_workers: int | None = None, progress: bool = True, desc: str = "encoding images",
                       ) -> ImageEmbeddings:
    """Decode, preprocess and encode ``paths``; bad files are skipped with a reason, never fatal."""
    device = next(model.parameters()).device
    workers = default_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        CatalogDataset(paths, preprocess, draft_size=2 * model.cfg.image.resize_size),
        batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_images,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    ok: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {}
    failed: list[tuple[int, str]] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    with torch.inference_mode(), autocast(device):
        for positions, images, bad in loader:
            failed.extend(bad)
            for pos, reason in bad:
                log.warning("skipping %s: %s", paths[pos], reason)
            if images is not None:
                images = images.to(device, non_blocking=True)
                for name, emb in model.encode_image_channels(images).items():
                    chunks.setdefault(name, []).append(emb.float().cpu().numpy())
                ok.extend(positions)
            bar.update(len(positions) + len(bad))
    bar.close()
    dims = {"image": model.embed_dim, "visual": model.visual_dim}
    channels = {name: (np.concatenate(chunks[name]) if name in chunks else np.zeros((0, dims[name]), np.float32))
                for name in dims if dims[name] is not None}
    return ImageEmbeddings(ok=ok, channels=channels, failed=sorted(failed))


def encode_texts(model: DualEncoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 64,
                 progress: bool = False) -> np.ndarray:
    """(N, D) float32 unit embeddings. Texts are sorted by length so each batch pads little."""
    device = next(model.parameters()).device
    out = np.zeros((len(texts), model.embed_dim), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode(), autocast(device):
        for start in tqdm(range(0, len(order), batch_size), desc="encoding texts", disable=not progress):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in tokenizer([texts[i] for i in idx]).items()}
            out[idx] = model.encode_text(batch).float().cpu().numpy()
    return out
