"""Index encoding without torch: the model's ONNX graphs in onnxruntime, images decoded by PIL in threads.

Used by an update on CPU when the model's graphs exist (shipped with the package for the built-in models,
``models/graphs.py``, or exported earlier into the ONNX cache, ``models/onnx.py``): only the towers the
plan needs are opened (adding photos opens the image tower alone), and torch is never imported. The
images get the same preprocessing as the torch pipeline's fast path (JPEG draft decode at 2x the resize
size, PIL resize with reducing_gap 3, crop or pad, uint8 -> normalised float32).
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..catalog.images import load_image
from ..cpus import available_cpus
from ..errors import ImageDecodeError
from ..models import graphs, onnx
from ..models.crop import resize_crop_pil
from ..progress import bar

log = logging.getLogger(__name__)


@dataclass
class LeanImages:
    """What ``encode.pipeline.encode_image_files`` returns: rows of ``channels`` (float16, as the index
    stores them: half the memory of float32 for a large catalog) are the ``ok`` positions."""

    ok: list[int]
    channels: dict[str, np.ndarray]
    failed: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class LeanTowers:
    towers: Any  # graphs.ShippedTowers or onnx.OrtTowers
    tokenizer: Any  # numpy tokenizer (None without the text tower)
    source: str  # "shipped" or "export cache"


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU may be there, without importing torch (``device="auto"`` then keeps torch)."""
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")


def open_towers(fingerprint: str, device: str, towers: tuple[str, ...], runtime: str | None = None) -> LeanTowers | None:
    """onnxruntime sessions for ``towers`` of the model ``fingerprint``, or None when torch must encode
    (a GPU device, ``runtime`` / ``$MMSEARCH_RUNTIME`` = torch, no graphs for this model, no onnxruntime)."""
    if not towers:
        return None
    if str(device).startswith("cuda") or (str(device) == "auto" and importlib.util.find_spec("torch") is not None
                                          and gpu_visible()):
        return None
    if onnx.resolve_runtime(runtime, "cpu") != "onnx":
        return None
    try:
        entry = graphs.entry_for(fingerprint)
        if entry is not None:
            return LeanTowers(graphs.ShippedTowers(entry, towers),
                              graphs.tokenizer_for(entry) if "text" in towers else None, "shipped")
        parts = onnx.lean_parts(fingerprint)  # both towers exported earlier, with a Hugging Face tokenizer
        if parts is not None:
            return LeanTowers(onnx.OrtTowers(onnx.export_dir(fingerprint), towers), parts[1], "export cache")
    except Exception as exc:  # a damaged graph: torch encodes instead (and re-exports)
        log.warning("cannot open the ONNX graphs of model %s (%s); using torch", fingerprint, exc)
    return None


def _decode(path: str, icfg: Any) -> np.ndarray | str:
    """(3, S, S) uint8, or the reason the file cannot be used."""
    try:
        im = load_image(path, draft_size=int(2.0 * icfg.resize_size))
        im = resize_crop_pil(im, icfg.resize_size, icfg.image_size, 3.0, icfg.geometry, tuple(icfg.pad_color))
        arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # never let one file stop a run
        return f"unreadable image: {type(exc).__name__}: {exc}"


def _batches(paths: list[str], icfg: Any, batch_size: int, pool: ThreadPoolExecutor,
             ahead: int = 2) -> Iterator[tuple[int, list[np.ndarray | str]]]:
    """(start, decoded batch) in order, decoding up to ``ahead`` batches ahead of the one being encoded."""
    starts = iter(range(0, len(paths), batch_size))
    queue: collections.deque[tuple[int, list[Future]]] = collections.deque()

    def submit() -> None:
        s = next(starts, None)
        if s is not None:
            queue.append((s, [pool.submit(_decode, p, icfg) for p in paths[s:s + batch_size]]))

    for _ in range(ahead + 1):
        submit()
    while queue:
        s, futures = queue.popleft()
        submit()
        yield s, [f.result() for f in futures]


def encode_images(lean: LeanTowers, icfg: Any, paths: list[str], batch_size: int = 32, workers: int | None = None,
                  progress: bool = False, desc: str = "encoding images") -> LeanImages:
    chunks: dict[str, list[np.ndarray]] = {}
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    progress_bar = bar(len(paths), desc, unit="img") if progress else None
    with ThreadPoolExecutor(max_workers=max(1, workers or available_cpus())) as pool:
        for start, decoded in _batches(paths, icfg, batch_size, pool):
            good = [(start + i, x) for i, x in enumerate(decoded) if not isinstance(x, str)]
            failed += [(start + i, x) for i, x in enumerate(decoded) if isinstance(x, str)]
            if good:
                u8 = np.stack([x for _, x in good])  # (B, 3, S, S)
                out = lean.towers.image_channels(onnx.normalize_u8(u8, icfg.mean, icfg.std))
                for name, v in out.items():  # float16, as the index stores them (and the torch path's chunks)
                    chunks.setdefault(name, []).append(np.asarray(v, np.float16))
                ok += [pos for pos, _ in good]
            if progress_bar is not None:
                progress_bar.update(len(decoded))
    if progress_bar is not None:
        progress_bar.close()
    for pos, reason in failed:
        log.info("skipping %s: %s", paths[pos], reason)
    channels = {name: np.concatenate(parts) for name, parts in chunks.items()}
    return LeanImages(ok=ok, channels=channels, failed=failed)


def encode_texts(lean: LeanTowers, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 unit rows; texts of similar length are batched together (less padding)."""
    order = np.argsort(np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    rows: list[np.ndarray] = [np.zeros(0)] * len(texts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = onnx.tokenize_numpy(lean.tokenizer, [texts[i] for i in idx])
        out = lean.towers.text(ids, mask)
        for r, i in enumerate(idx):
            rows[i] = out[r]
    return np.stack(rows).astype(np.float32) if texts else np.zeros((0, 0), np.float32)
