"""The prompts that stand for the ImageNet-1k classes in the bridge heads, and the key their embeddings
are stored under (models/shipped.py ships them; models/factory.py computes other prompts)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .registry import weights_dir

log = logging.getLogger(__name__)


def bridge_prompts(templates: tuple[str, ...] | list[str], synonyms: bool = False) -> list[list[str]]:
    """Per ImageNet-1k class, the prompts whose mean embedding stands for it: every template filled with the
    class's first name (or, with ``synonyms``, with each of its comma-separated WordNet synonyms)."""
    import timm.data

    out = []
    for desc in timm.data.ImageNetInfo().label_descriptions():
        names = [n.strip() for n in desc.split(",") if n.strip()]
        names = list(dict.fromkeys(names if synonyms else names[:1]))
        out.append(list(dict.fromkeys(t.format(n) for t in templates for n in names)))
    return out


CLASS_EMB_SCHEME = "imagenet-text-v2"  # bump when the way class embeddings are computed changes


def class_embedding_key(per_class: list[list[str]], backbone: str) -> str:
    """What the class-name embeddings are a function of: the prompts of every class, the text backbone
    (a packaged, pinned MiniLM) and how they are combined. The shipped file and the cache are named by it."""
    if all(len(ps) == 1 for ps in per_class):
        key_text = "\n".join(ps[0] for ps in per_class)
    else:
        key_text = "\n".join("\t".join(ps) for ps in per_class)
    return hashlib.sha256(f"{CLASS_EMB_SCHEME}\n{backbone}\n{key_text}".encode()).hexdigest()[:16]


def class_embeddings_path(key: str) -> Path:
    return weights_dir() / f"imagenet_text_{key}.npy"


def class_embeddings(key: str, n_classes: int) -> np.ndarray | None:
    """The shipped (n_classes, D) float16 class-name embeddings named ``key``, or None (not shipped, or
    not readable: the caller computes them)."""
    path = class_embeddings_path(key)
    if not path.is_file():
        return None
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("ignoring the shipped class-name embeddings %s: %s", path, exc)
        return None
    return emb if emb.ndim == 2 and emb.shape[0] == n_classes else None
