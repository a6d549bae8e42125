"""QueryEncoder: the model that built an index, opened for queries: photos and texts -> unit embeddings.

The exported ONNX towers run in onnxruntime when they exist (no torch model load, search/runtime.py);
otherwise the torch model, checked against the index's fingerprint. ``lazy``: nothing opens until the
first encode (tools that only read items never load a model).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageDecodeError, IndexIncompatibleError, QueryError
from ..index.modelref import model_path
from ..models.crop import resize_crop_pil
from ..models.onnx import normalize_u8, tokenize_numpy
from ..models.registry import list_models
from . import runtime as _runtime

if TYPE_CHECKING:
    import torch

    from ..models.dual_encoder import DualEncoder

ImageInput = str | Path | bytes | Image.Image


def model_ref_of(manifest: dict[str, Any], home: Path | None) -> str:
    """The model an index names, as create_model takes it: a built-in name, or the checkpoint file
    (relative to ``home``, the snapshot folder, when the index keeps its own copy)."""
    ref = manifest["model"]["ref"]
    path = model_path(ref, home)
    if ref not in list_models() and not Path(path).is_file():
        raise IndexIncompatibleError(f"index {manifest.get('_snapshot', '')} was built with model {ref!r}, which "
                                     f"this mmsearch does not have (known: {', '.join(list_models())}); "
                                     f"rebuild the index")
    return path


class QueryEncoder:
    """Encodes query photos and texts with the index's model (``key``: (model ref, fingerprint))."""

    def __init__(self, model_ref: str, manifest: dict[str, Any], device: str = "auto", runtime: str | None = None,
                 lazy: bool = False, location: str = "index"):
        self.key = (model_ref, manifest["model"]["fingerprint"])
        self.device, self.runtime, self.location = device, runtime, location
        self._manifest = manifest
        self._lock = threading.Lock()
        self._opened = False
        self.model: DualEncoder | Any = None
        self.preprocess: Any = None
        self.tokenizer: Any = None
        self.ort: Any = None
        if not lazy:
            self.open()

    def open(self) -> "QueryEncoder":
        """Open the towers (once; later calls return at once)."""
        with self._lock:
            if not self._opened:
                self._open()
                self._opened = True
        return self

    def _open(self) -> None:
        # the exported towers alone when they exist (no torch model load); else the torch model
        lean = _runtime.lean(self.key[1], self.runtime, self.device, self._torch_model)
        if lean is not None:
            self.model, self.preprocess, self.tokenizer, self.ort = lean
        else:
            self.model, self.preprocess, self.tokenizer = self._torch_model(with_parts=True)
            self.ort = _runtime.ort_towers(self.model, self.key[1], self.runtime, self.device, self.tokenizer)

    def _torch_model(self, with_parts: bool = False) -> Any:
        """The torch model that built the index (checked by fingerprint); with its preprocess and tokenizer."""
        import torch  # torch, transformers and the weights: only when the torch model is needed

        from ..models.factory import create_model

        model, preprocess, tokenizer = create_model(self.key[0], device=self.device)
        m = self._manifest["model"]
        if model.fingerprint() != m["fingerprint"]:
            raise IndexIncompatibleError(
                f"index {self._manifest.get('_snapshot', self.location)} was built with a different {m['name']!r} "
                f"model (fingerprint {m['fingerprint']}, this install has {model.fingerprint()}); "
                f"rebuild it with `mmsearch index CATALOG --out {self.location}`")
        # the batched query path feeds channels_last batches (layout only: same weights, same fingerprint)
        model.image_tower.to(memory_format=torch.channels_last)
        return (model, preprocess, tokenizer) if with_parts else model

    # ------------------------------------------------------------------------------------ encoding
    def torch_device(self) -> "torch.device":
        return next(self.open().model.parameters()).device

    def _load_query_image(self, image: ImageInput) -> Image.Image:
        try:
            from ..catalog.images import load_image

            return load_image(image, draft_size=2 * self.model.cfg.image.resize_size)
        except ImageDecodeError as exc:
            where = f" {image}" if isinstance(image, (str, Path)) else ""
            raise QueryError(f"cannot read query image{where}: {exc}") from None

    def image_channels(self, images: Sequence[ImageInput]) -> dict[str, np.ndarray]:
        """Per-channel unit embeddings of query images: ``image`` (n, D) and, if present, ``visual``."""
        self.open()
        cfg = self.model.cfg.image
        if self.ort is not None and "image" in self.ort.sessions:
            u8n = np.stack([np.asarray(resize_crop_pil(self._load_query_image(im).convert("RGB"), cfg.resize_size,
                                                       cfg.image_size, geometry=cfg.geometry, pad_color=cfg.pad_color))
                            .transpose(2, 0, 1) for im in images])  # (B, 3, S, S)
            return self.ort.image_channels(normalize_u8(u8n, cfg.mean, cfg.std))
        # the batched fast path: uint8 crops, one normalise, channels_last, autocast
        import torch

        from ..models.device import autocast
        from ..models.preprocess import ResizeCropU8, normalize_batch

        dev = self.torch_device()
        u8 = torch.stack([ResizeCropU8(cfg)(self._load_query_image(im)) for im in images]).to(dev)
        batch = normalize_batch(u8, cfg.mean, cfg.std, channels_last=True)
        with torch.inference_mode(), autocast(dev):
            return {k: v.float().cpu().numpy() for k, v in self.model.encode_image_channels(batch).items()}

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space."""
        self.open()
        if self.ort is not None and "text" in self.ort.sessions and len(texts):
            return self.ort.text(*tokenize_numpy(self.tokenizer, list(texts)))
        from ..encode.pipeline import encode_texts

        return encode_texts(self.model, self.tokenizer, list(texts))

    def learned_fusion(self) -> bool:
        """True when the model fuses a photo and a text with a learned module (not a weighted sum)."""
        return self.open().model.cfg.fusion != "sum"

    def fuse(self, image: np.ndarray, text: np.ndarray, w: float) -> np.ndarray:
        """The model's fused query embeddings of (B, D) photo and text embeddings at photo weight ``w``."""
        import torch

        dev = self.torch_device()
        with torch.inference_mode():
            return self.model.fuse(torch.from_numpy(image).to(dev), torch.from_numpy(text).to(dev), w).float().cpu().numpy()
