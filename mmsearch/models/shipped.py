"""Artifacts the package ships so that a first run computes nothing it could have been given.

- ``weights/imagenet_text_<key>.npy``: the ImageNet class-name embeddings of every built-in config with a
  bridge head, float16 (1000, D), named by :func:`mmsearch.models.classnames.class_embedding_key` (a hash of
  the prompts and the text backbone). Without it a fresh cache spends minutes computing them.

- ``weights/fingerprints.json``: each built-in model's fingerprint, config and widths, by the hash of its
  sources (``models/known.py``): an update that finds nothing to do never loads the model to learn them.
- ``weights/onnx/`` + ``weights/tokenizers/``: the built-in models as ONNX graphs (``models/graphs.py``),
  what indexing and searching run without torch.

They are a deterministic function of the configs (templates, synonyms), the packaged backbones and the
checkpoints in ``weights/``. After changing any of these, regenerate them with ONE command::

    python -m mmsearch.models.shipped --write

``--check`` says what is stale (``tests/test_shipped.py`` fails with the command to run). A stale or missing
file is never used for a wrong answer: its key no longer matches, and the model computes (and caches) what
it needs as before.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from ..config import ModelCfg
from .classnames import class_embeddings_path
from .registry import list_models, weights_dir

log = logging.getLogger(__name__)

REGENERATE = "python -m mmsearch.models.shipped --write"
BRIDGE_HEADS = ("imagenet_bridge", "bridge_residual")


def shipped_dir() -> Path:
    """``mmsearch/models/weights/`` inside the package (also where built-in checkpoints live)."""
    return weights_dir()


def builtin_config(name: str) -> ModelCfg:
    return ModelCfg.from_json_file(str(resources.files("mmsearch.models") / "configs" / f"{name}.json"))


# ------------------------------------------------------------------------------- class-name embeddings
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
        atomic_write(path, functools.partial(_save_npy, emb), durable=False)
        written.append(path)
    for old in shipped_dir().glob("imagenet_text_*.npy"):
        if old not in written:
            old.unlink()
            print(f"removed the stale {old.name}", file=sys.stderr)
    return written


# ------------------------------------------------------------------------ fingerprints and graphs
def exportable(name: str) -> bool:
    """Built-ins whose towers have ONNX graphs (the tiny model's LSTM text tower does not export)."""
    cfg = builtin_config(name)
    return cfg.text.backbone == "minilm" and cfg.image.backbone == "efficientnet_lite0"


def write_models() -> None:
    """(Re)write fingerprints.json, the graphs and the tokenizer files of every built-in model."""
    import json
    import shutil

    from ..fsutil import atomic_write
    from . import graphs, known
    from .encoders import minilm_path
    from .factory import create_model

    records: dict[str, dict] = {}
    entries: dict[str, dict] = {}
    for name in list_models():
        model, _, _ = create_model(name, device="cpu")
        records[str(known.source_key(name))] = known.describe(model).to_json()
        if exportable(name):
            print(f"{name}: exporting its ONNX graphs", file=sys.stderr)
            entries[name] = graphs.export_model(model, name)
    atomic_write(known.shipped_records_path(), json.dumps(records, indent=1, sort_keys=True) + "\n", durable=False)
    folder = graphs.graphs_dir()
    atomic_write(folder / "models.json", json.dumps(entries, indent=1, sort_keys=True) + "\n", durable=False)
    used = {f"{g}.onnx" for e in entries.values() for g in e["graphs"].values()}
    for old in folder.glob("*.onnx"):
        if old.name not in used:
            old.unlink()
            print(f"removed the stale graph {old.name}", file=sys.stderr)
    tok = shipped_dir() / "tokenizers" / "minilm"
    tok.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(minilm_path()) / "tokenizer.json", tok / "tokenizer.json")


def stale_models() -> list[str]:
    """Built-in models whose shipped fingerprint record or graphs do not match their config and weights."""
    from . import graphs, known

    out = []
    entries = graphs.read_models()
    records = known.read_records(known.shipped_records_path())
    for name in list_models():
        raw = records.get(known.source_key(name) or "")
        rec = known.Known.from_json(raw) if raw else None
        if rec is None:
            out.append(f"{name}: no shipped fingerprint record for its config and weights")
            continue
        if not exportable(name):
            continue
        entry = entries.get(name)
        if entry is None or entry.get("fingerprint") != rec.fingerprint:
            out.append(f"{name}: its shipped ONNX graphs are not those of fingerprint {rec.fingerprint}")
        elif graphs.entry_for(rec.fingerprint) is None:
            out.append(f"{name}: a graph file of its shipped ONNX graphs is missing")
    if not (shipped_dir() / "tokenizers" / "minilm" / "tokenizer.json").is_file():
        out.append("the MiniLM tokenizer files are not shipped")
    return out


def stale() -> list[str]:
    """What ``--write`` would change, one line each (empty: everything shipped is current)."""
    out = stale_models()
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
        write_models()
    problems = stale()
    for line in problems:
        print(line)
    if not problems:
        print("shipped artifacts are current")
    return 1 if problems else 0


def _save_npy(array: np.ndarray, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        np.save(f, array)


if __name__ == "__main__":
    sys.exit(main())
