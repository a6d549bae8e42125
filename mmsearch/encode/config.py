"""How image files become embeddings (:class:`EncodeCfg`), importable without torch: a command that finds
nothing to encode never imports the pipeline (encode/pipeline.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MMSearchError

PIPELINES = ("fast", "reference")
DECODERS = ("auto", "pil", "device")


@dataclass
class EncodeCfg:
    """How image files become embeddings. The defaults are the choices the benchmark shows pay off.

    pipeline: ``fast`` or ``reference`` (full-size PIL decode, the model's per-image float transform,
        fp32 NCHW forward: what typical tools do; kept as the correctness and speed baseline).
    num_workers: decode processes; None sizes them to the machine and the decoder (:func:`loader_workers`).
    decode: ``pil`` (in the workers), ``device`` (plain JPEGs decoded by ``torchvision.io.decode_jpeg``
        on the model's device, other files by PIL), or ``auto`` (``device`` on CUDA for mostly-JPEG
        inputs, ``pil`` elsewhere: :func:`resolve_decode`).
    draft: decode JPEGs by DCT scaling (libjpeg) to at least ``draft * resize_size`` pixels on the short
        side (0: full size). 2.0 keeps nearest neighbours as the full-size decode has them (99% overlap
        measured); 1.0 decodes a 1600x1200 photo at 400x300, was 0-14% faster on CPU (where the model
        is the bottleneck) but moved 7-10% of nearest neighbours (benchmarks/results/encode_cpu.md).
    reducing_gap: Pillow's resize shortcut (box-reduce by an integer factor first); None: exact bicubic.
    channels_last: NHWC activations (1.6x faster forward on CPU here, and what tensor cores want).
    compile: ``torch.compile`` the image tower (pays off only for long runs; last batch is padded).
    runtime: the fast pipeline on CPU runs the image tower in onnxruntime (``auto``/``onnx``, exported
        once per model fingerprint) or torch; CUDA always runs torch (bf16 autocast).
    shard_rows, write_queue: when encoding into a folder of embedding chunks (index builds): rows per
        float16 chunk (the field keeps its old name), and batches the background writer may have queued
        before the encoder waits for it (encode/chunks.py); memory while encoding is bounded by these, not
        by the catalog's size.
    """

    batch_size: int = 32
    num_workers: int | None = None
    prefetch_factor: int = 4
    pipeline: str = "fast"
    decode: str = "auto"
    draft: float = 2.0
    reducing_gap: float | None = 3.0
    channels_last: bool = True
    compile: bool = False
    shard_rows: int = 4096
    write_queue: int = 8
    runtime: str | None = None  # image tower on CPU: auto | onnx | torch (models/onnx.py); None: $MMSEARCH_RUNTIME

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise MMSearchError(f"unknown pipeline {self.pipeline!r} (known: {', '.join(PIPELINES)})")
        if self.decode not in DECODERS:
            raise MMSearchError(f"unknown decoder {self.decode!r} (known: {', '.join(DECODERS)})")
        if self.batch_size < 1:
            raise MMSearchError(f"batch size must be at least 1, got {self.batch_size}")
