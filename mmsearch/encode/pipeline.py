"""Reader -> encoder -> arrays: turn image files and texts into unit embeddings, batch by batch.

Image pipeline (``EncodeCfg(pipeline="fast")``, the default; every step is measured in
benchmarks/bench_encode.py against the ``reference`` pipeline that typical tools use):

    DataLoader workers: read + decode (JPEG at reduced size via DCT scaling) + resize + crop -> uint8
        or, with device decode, plain JPEGs travel as raw bytes and are decoded by
        ``torchvision.io.decode_jpeg`` on the model's device (nvJPEG on CUDA), resized there
    main process: host-to-device copy (pinned, on a side stream, one batch ahead)
        -> normalise the whole batch in one op, channels_last -> one forward (bf16 autocast on CUDA)
        -> device-to-host copy of the previous batch's embeddings while this one computes
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..catalog.images import CatalogDataset, ImageBatch, collate_batch, load_image
from ..config import EncodeCfg
from ..cpus import available_cpus
from ..errors import ImageDecodeError
from ..models.device import autocast, default_num_workers, prefetch_to_device
from ..models.dual_encoder import DualEncoder
from ..models.factory import Preprocess, Tokenizer
from ..models.preprocess import ResizeCropU8, normalize_batch, resize_crop_tensor
from .chunks import ChunkWriter, assemble

log = logging.getLogger(__name__)

@dataclass
class ImageEmbeddings:
    """Embeddings of the images that loaded, per channel, and the reasons for the ones that did not."""

    ok: list[int]  # positions (into the input list) of encoded images, ascending
    channels: dict[str, np.ndarray]  # channel -> (len(ok), dim) unit rows: float32, float16 from chunks
    failed: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


_compiled: "weakref.WeakKeyDictionary[DualEncoder, object]" = weakref.WeakKeyDictionary()


def image_forward(model: DualEncoder, cfg: EncodeCfg):
    """The callable that maps a normalised batch to ``encode_image_channels`` output."""
    # Weights' memory layout only; values (and so the fingerprint) stay the same.
    channels_last = cfg.pipeline == "fast" and cfg.channels_last
    model.image_tower.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.pipeline == "fast" and not cfg.compile:
        from ..models.onnx import image_forward as ort_forward

        fwd = ort_forward(model, cfg.runtime)  # onnxruntime on CPU (models/onnx.py); None: torch
        if fwd is not None:
            return fwd
    if not (cfg.compile and cfg.pipeline == "fast"):
        return model.encode_image_channels
    if model not in _compiled:
        _compiled[model] = torch.compile(model.encode_image_channels, dynamic=False)
    return _compiled[model]


def decode_on_device(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | Exception]:
    """Raw JPEG bytes -> (3, H, W) uint8 on ``device``, batched; per-file results so one bad file only
    fails itself."""
    from torchvision.io import ImageReadMode, decode_jpeg  # imported here: torchvision costs seconds

    try:
        out = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
        return list(out)
    except Exception:  # at least one bad file: retry one by one to isolate it
        results: list[torch.Tensor | Exception] = []
        for data in jpegs:
            try:
                results.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except Exception as exc:
                results.append(exc)
        return results


class _Encoder:
    """State of one ``encode_image_files`` run: turns loader batches into embedding chunks."""

    def __init__(self, model: DualEncoder, cfg: EncodeCfg, paths: list[str], device: torch.device,
                 writer: ChunkWriter | None = None):
        self.model, self.cfg, self.paths, self.device = model, cfg, paths, device
        self.writer = writer  # None: keep the embeddings in memory
        self.icfg = model.cfg.image
        self.forward = image_forward(model, cfg)
        self.fast = cfg.pipeline == "fast"
        self.ok: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.chunks: dict[str, list[np.ndarray]] = {}

    def move(self, batch: ImageBatch):
        """Host -> device copy of the CPU-decoded images (runs one batch ahead on CUDA)."""
        images = batch.images.to(self.device, non_blocking=True) if batch.images is not None else None
        return batch, images

    def device_images(self, batch: ImageBatch) -> tuple[list[int], list[torch.Tensor]]:
        """Decode the batch's raw JPEGs on the device; a file the device decoder refuses goes to PIL."""
        positions, images = [], []
        for pos, img in zip(batch.jpeg_positions, decode_on_device(batch.jpegs, self.device)):
            if isinstance(img, Exception):
                try:  # PIL either decodes it or says why not
                    img = ResizeCropU8(self.icfg)(load_image(self.paths[pos])).to(self.device)
                except ImageDecodeError as exc:
                    self.failed.append((pos, str(exc)))
                    continue
            else:
                img = resize_crop_tensor(img, self.icfg.resize_size, self.icfg.image_size, self.icfg.geometry,
                                         tuple(self.icfg.pad_color))
            positions.append(pos)
            images.append(img)
        return positions, images

    def step(self, batch: ImageBatch, images: torch.Tensor | None):
        """One forward for everything in the batch; returns (positions, device outputs) or None."""
        self.failed.extend(batch.failed)
        positions = list(batch.positions)
        if batch.jpegs:
            dpos, dimgs = self.device_images(batch)
            if dimgs:
                stacked = torch.stack(dimgs)
                images = stacked if images is None else torch.cat([images, stacked])
                positions += dpos
        if images is None:
            return None
        if self.fast:
            images = normalize_batch(images, self.icfg.mean, self.icfg.std, channels_last=self.cfg.channels_last)
        n = images.shape[0]
        if self.fast and self.cfg.compile and n < self.cfg.batch_size:  # one static shape: no recompiles
            images = torch.cat([images, images[-1:].expand(self.cfg.batch_size - n, *images.shape[1:])])
        out = self.forward(images)
        # Start the device-to-host copy now (into pinned memory); it is waited for one step later, while
        # the next batch computes.
        host = {k: v[:n].float().to("cpu", non_blocking=True) for k, v in out.items()}
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return positions, host, done

    def collect(self, result) -> None:
        if result is None:
            return
        positions, out, done = result
        if done is not None:
            done.synchronize()
        if self.writer is not None:
            self.writer.put(positions, {name: emb.numpy() for name, emb in out.items()})
            return
        for name, emb in out.items():
            self.chunks.setdefault(name, []).append(emb.numpy())
        self.ok.extend(positions)

    def dims(self) -> dict[str, int]:
        dims = {"image": self.model.embed_dim, "visual": self.model.visual_dim}
        return {name: dim for name, dim in dims.items() if dim is not None}

    def result(self) -> ImageEmbeddings:
        for pos, reason in self.failed:
            log.info("skipping %s: %s", self.paths[pos], reason)  # once: the build report lists skipped files
        if self.writer is not None:
            ok, channels = assemble(self.writer.folder, self.writer.close(), self.dims())
            return ImageEmbeddings(ok=ok.tolist(), channels=channels, failed=sorted(self.failed))
        order = np.argsort(np.asarray(self.ok, dtype=np.int64), kind="stable")
        channels = {}
        for name, dim in self.dims().items():
            arr = np.concatenate(self.chunks[name]) if name in self.chunks else np.zeros((0, dim), np.float32)
            channels[name] = np.ascontiguousarray(arr[order]) if len(arr) else arr
        return ImageEmbeddings(ok=[self.ok[i] for i in order], channels=channels, failed=sorted(self.failed))


JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def resolve_decode(decode: str, device: torch.device, paths: Sequence[str]) -> str:
    """``auto`` -> ``device`` (nvJPEG) on CUDA when at least half the files are JPEGs by name, else ``pil``.

    A mostly non-JPEG catalog on CUDA decodes with PIL in the workers: the device path would decode those
    files one by one in the main process.
    """
    if decode != "auto":
        return decode
    if device.type != "cuda" or not paths:
        return "pil"
    jpegs = sum(str(p).lower().endswith(JPEG_SUFFIXES) for p in paths)
    return "device" if 2 * jpegs >= len(paths) else "pil"


def loader_workers(num_workers: int | None, decode: str, device: torch.device) -> int:
    """DataLoader processes: an explicit count wins; device decoding reads the files in the main process.

    With ``decode="device"`` workers only read bytes, and handing each batch's variable-sized byte tensors
    through worker shared memory and pinning cost more than the read itself: on an H200 the default model
    ran at 2,546 images/s with 0 workers against 197-327 with 15 (benchmarks/results/encode_cuda.md).
    """
    if num_workers is not None:
        return num_workers
    return 0 if decode == "device" else default_num_workers(device)


def make_loader(model: DualEncoder, preprocess: Preprocess, paths: list[str], cfg: EncodeCfg,
                device: torch.device) -> torch.utils.data.DataLoader:
    """The reader: a DataLoader whose workers read, decode and (on the fast path) resize to uint8."""
    icfg = model.cfg.image
    decode = "pil"
    if cfg.pipeline == "reference":
        dataset = CatalogDataset(paths, preprocess, draft_size=None)
    else:
        decode = resolve_decode(cfg.decode, device, paths)
        dataset = CatalogDataset(paths, ResizeCropU8(icfg, cfg.reducing_gap),
                                 draft_size=int(cfg.draft * icfg.resize_size) if cfg.draft else None,
                                 raw_jpeg=decode == "device")
    workers = loader_workers(cfg.num_workers, decode, device)
    workers = min(workers, max(0, (len(paths) + cfg.batch_size - 1) // cfg.batch_size))  # no idle processes
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, collate_fn=collate_batch,
        pin_memory=device.type == "cuda", prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=False,
    )


def encode_image_files(model: DualEncoder, preprocess: Preprocess, paths: list[str], batch_size: int | None = None,
                       num_workers: int | None = None, progress: bool = True, desc: str = "encoding images",
                       cfg: EncodeCfg | None = None, shards: str | Path | None = None) -> ImageEmbeddings:
    """Decode, preprocess and encode ``paths``; bad files are skipped with a reason, never fatal.

    ``batch_size`` / ``num_workers`` override the same fields of ``cfg`` (an :class:`EncodeCfg`).
    ``shards``: a folder for float16 embedding chunks (encode/chunks.py), written by a background thread as
    batches complete and read back at the end (channels are then float16); None keeps float32 embeddings in
    memory.
    """
    cfg = cfg or EncodeCfg()
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    if num_workers is not None:
        cfg = replace(cfg, num_workers=num_workers)
    device = next(model.parameters()).device
    writer = ChunkWriter(shards, cfg.shard_rows, cfg.write_queue) if shards is not None else None
    try:
        return _encode(model, preprocess, paths, cfg, device, writer, progress, desc)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _encode(model: DualEncoder, preprocess: Preprocess, paths: list[str], cfg: EncodeCfg, device: torch.device,
            writer: ChunkWriter | None, progress: bool, desc: str) -> ImageEmbeddings:
    enc = _Encoder(model, cfg, paths, device, writer)
    loader = make_loader(model, preprocess, paths, cfg, device)
    log.info("encoding %d images: %s pipeline, batch %d, %d workers of %d CPUs, device %s", len(paths),
             cfg.pipeline, cfg.batch_size, loader.num_workers, available_cpus(), device)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    pending = None
    with torch.inference_mode(), autocast(device, enabled=cfg.pipeline == "fast"):
        for batch, images in prefetch_to_device(loader, device, enc.move):
            result = enc.step(batch, images)
            enc.collect(pending)  # the previous batch's copy finished while this one was queued
            pending = result
            bar.update(len(batch.positions) + len(batch.jpeg_positions) + len(batch.failed))
        enc.collect(pending)
    bar.close()
    return enc.result()


def encode_texts(model: DualEncoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 64,
                 progress: bool = False, bucket: bool = True, chunk: int = 4096) -> np.ndarray:
    """(N, D) float32 unit embeddings, row i for ``texts[i]``.

    Length-bucketed (``bucket``): texts are ordered by character length, tokenized once per ``chunk``,
    ordered within it by token count, and each batch is cut to its own longest text, so a batch of short
    titles never pays for one long description; rows go back to the input order. ``bucket=False``
    encodes batches in input order, each padded to its longest (the baseline of
    benchmarks/bench_text_encode.py). Both give the same embeddings (tests/test_text_buckets.py).
    """
    device = next(model.parameters()).device
    out = np.zeros((len(texts), model.embed_dim), np.float32)
    if bucket:
        order = np.argsort(np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    else:
        order, chunk = np.arange(len(texts)), batch_size
    bar = tqdm(total=len(texts), desc="encoding texts", unit="text", disable=not progress)
    with torch.inference_mode(), autocast(device):
        for c in range(0, len(order), chunk):
            idx = order[c:c + chunk]
            tokens = tokenizer([texts[i] for i in idx])  # (n, L) padded to the chunk's longest
            lengths = tokens["attention_mask"].sum(1)  # tokenizers pad on the right
            within = torch.argsort(lengths, stable=True) if bucket else torch.arange(len(idx))
            for s in range(0, len(within), batch_size):
                rows = within[s:s + batch_size]
                width = int(lengths[rows].max())
                batch = {k: v[rows, :width].to(device) for k, v in tokens.items()}
                out[idx[rows.numpy()]] = model.encode_text(batch).float().cpu().numpy()
                bar.update(len(rows))
    bar.close()
    return out
