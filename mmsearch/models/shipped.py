"""Artifacts the package ships so that a first run computes nothing it could have been given.

- ``weights/imagenet_text_<key>.npy``: the ImageNet class-name embeddings of every built-in config with a
  bridge head, float16 (1000, D), named by :func:`mmsearch.models.classnames.class_embedding_key` (a hash of
  the prompts and the text backbone). Without it a fresh cache spends minutes computing them.

They are a deterministic function of the configs (templates, synonyms), the packaged backbones and the
checkpoints in ``weights/``. After changing any of these, regenerate them with ONE command::

    python -m mmsearch.models.shipped --write

``--check`` says what is stale (``tests/test_shipped.py`` fails with the command to run). A stale or missing
file is never used for a wrong answer: its key no longer matches, and the model computes (and caches) what
it needs as before.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from ..config import ModelCfg
from .registry import list_models

log = logging.getLogger(__name__)

REGENERATE = "python -m mmsearch.models.shipped --write"
BRIDGE_HEADS = ("imagenet_bridge", "bridge_residual")


def shipped_dir() -> Path:
    """``mmsearch/models/weights/`` inside the package (also where built-in checkpoints live)."""
    return Path(str(resources.files("mmsearch.models") / "weights"))


def builtin_config(name: str) -> ModelCfg:
    return ModelCfg.from_json_file(str(resources.files("mmsearch.models") / "configs" / f"{name}.json"))


# ------------------------------------------------------------------------------- class-name embeddings
def class_embeddings_path(key: str) -> Path:
    return shipped_dir() / f"imagenet_text_{key}.npy"


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


def bridge_models() -> list[str]:
    """Built-in configs whose image head needs the class-name embeddings."""
    return [n for n in list_models() if builtin_config(n).image.head in BRIDGE_HEADS]


def class_embedding_keys() -> dict[str, str]:
    """config name -> the key of the class-name embeddings it needs (imports timm for the class names)."""
    from .classnames import bridge_prompts, class_embedding_key

    keys = {}
    for name in bridge_models():
        cfg = builtin_config(name)
        per_class = bridge_prompts(tuple(cfg.image.bridge_templates) or (cfg.image.bridge_template,),
                                   cfg.image.bridge_synonyms)
        keys[name] = class_embedding_key(per_class, cfg.text.backbone)
    return keys


def compute_class_embeddings(name: str, classes: list[int] | None = None) -> np.ndarray:
    """Compute config ``name``'s class-name embeddings as ``build_model`` would on a fresh cache (rows
    ``classes`` only when given: the test recomputes a few). float32 (n, D)."""
    import torch

    from .classnames import bridge_prompts
    from .encoders import TextTower, l2n, minilm_path
    from .tokenizer import HFTokenizer

    cfg = builtin_config(name)
    if cfg.text.backbone != "minilm":
        raise SystemExit(f"{name}: class-name embeddings are shipped for the minilm text backbone only")
    per_class = bridge_prompts(tuple(cfg.image.bridge_templates) or (cfg.image.bridge_template,),
                               cfg.image.bridge_synonyms)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)  # as build_model: the fresh text tower (its head starts at identity)
        tokenizer = HFTokenizer(minilm_path(), cfg.text.context_length)
        tower = TextTower(cfg.text, cfg.embed_dim).eval()
    rows = []
    with torch.inference_mode():
        for c in (classes if classes is not None else range(len(per_class))):
            rows.append(l2n(l2n(tower(tokenizer(per_class[c]))).mean(0, keepdim=True)))
    return torch.cat(rows).numpy()


def write_class_embeddings() -> list[Path]:
    """(Re)write the shipped class-name embeddings of every bridge config; remove ones no config uses."""
    from ..fsutil import atomic_write

    keys = class_embedding_keys()
    written = []
    for name, key in keys.items():
        path = class_embeddings_path(key)
        if path.is_file():
            log.info("%s: %s is current", name, path.name)
            written.append(path)
            continue
        print(f"{name}: computing the class-name embeddings (minutes on a CPU) -> {path.name}", file=sys.stderr)
        emb = compute_class_embeddings(name).astype(np.float16)
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), emb), durable=False)
        written.append(path)
    for old in shipped_dir().glob("imagenet_text_*.npy"):
        if old not in written:
            old.unlink()
            print(f"removed the stale {old.name}", file=sys.stderr)
    return written


def stale() -> list[str]:
    """What ``--write`` would change, one line each (empty: everything shipped is current)."""
    out = []
    keys = class_embedding_keys()
    for name, key in keys.items():
        if not class_embeddings_path(key).is_file():
            out.append(f"{name}: no shipped class-name embeddings for its prompts (imagenet_text_{key}.npy)")
    wanted = {class_embeddings_path(k).name for k in keys.values()}
    out += [f"{p.name} is used by no config" for p in shipped_dir().glob("imagenet_text_*.npy") if p.name not in wanted]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmsearch.models.shipped", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="regenerate what is stale (needs torch)")
    ap.add_argument("--check", action="store_true", help="list what is stale; exit 1 if anything is")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.write:
        write_class_embeddings()
    problems = stale()
    for line in problems:
        print(line)
    if not problems:
        print("shipped artifacts are current")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
