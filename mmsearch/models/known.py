"""What is known about a model without loading it: its fingerprint, config and embedding widths.

An index update compares the index's model fingerprint with the model it is asked to use before deciding
anything, and an update with nothing to encode must not pay for importing torch and loading weights just
to compute that fingerprint. So fingerprints are recorded by the model's *sources*:

- a built-in name: its config (as parsed, defaults included) and the SHA-256 of its weights file. The
  package ships these records for its built-in models (``weights/fingerprints.json``, written by
  ``python -m mmsearch.models.shipped --write``); the packaged backbones are pinned in pyproject.toml.
- a checkpoint file: the SHA-256 of the file.

Any model loaded by an index build is recorded in ``$MMSEARCH_CACHE/fingerprints.json`` (default
``~/.cache/mmsearch``) the same way. A record is only a shortcut: when the model is loaded anyway its real
fingerprint is compared with the record (``index/modelref.py``), and a wrong record is replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import ModelCfg, from_dict, to_dict
from ..fsutil import atomic_write, sha256_file
from .registry import list_models

log = logging.getLogger(__name__)

KEY_SCHEME = "mmsearch-model-sources-v1"


@dataclass
class Known:
    fingerprint: str
    cfg: ModelCfg
    dims: dict[str, int] = field(default_factory=dict)  # channel -> width: image, text [, visual]

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "cfg": to_dict(self.cfg), "dims": self.dims}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Known":
        return cls(fingerprint=str(d["fingerprint"]), cfg=from_dict(ModelCfg, d["cfg"]),
                   dims={k: int(v) for k, v in d["dims"].items()})


def cache_home() -> Path:
    """``$MMSEARCH_CACHE``, else ``~/.cache/mmsearch`` (the same folder models/factory.py caches in)."""
    return Path(os.environ.get("MMSEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmsearch"))


def shipped_records_path() -> Path:
    return Path(str(resources.files("mmsearch.models") / "weights" / "fingerprints.json"))


def source_key(model_ref: str | Path) -> str | None:
    """A hash of what the model named ``model_ref`` is made from, or None when it names nothing readable."""
    name = str(model_ref)
    h = hashlib.sha256(KEY_SCHEME.encode())
    try:
        if name in list_models():
            folder = resources.files("mmsearch.models")
            cfg = ModelCfg.from_json_file(str(folder / "configs" / f"{name}.json"))
            h.update(b"\nnamed\n" + cfg.to_json().encode())
            if cfg.weights:
                h.update(b"\n" + sha256_file(Path(str(folder / "weights" / cfg.weights))).encode())
        elif Path(name).is_file():
            h.update(b"\nfile\n" + sha256_file(name).encode())
        else:
            return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.debug("no source key for %s: %s", name, exc)
        return None
    return h.hexdigest()[:32]


def read_records(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup(model_ref: str | Path) -> Known | None:
    """The recorded fingerprint, config and widths of ``model_ref``, or None (load the model to know)."""
    key = source_key(model_ref)
    if key is None:
        return None
    for path in (shipped_records_path(), cache_home() / "fingerprints.json"):
        entry = read_records(path).get(key)
        if entry is not None:
            try:
                return Known.from_json(entry)
            except (KeyError, TypeError, ValueError):
                continue
    return None


def describe(model: Any) -> Known:
    """The record of a loaded DualEncoder."""
    dims = {"image": int(model.embed_dim), "text": int(model.embed_dim)}
    if model.visual_dim is not None:
        dims["visual"] = int(model.visual_dim)
    return Known(fingerprint=model.fingerprint(), cfg=model.cfg, dims=dims)


def remember(model_ref: str | Path, known: Known, path: Path | None = None) -> None:
    """Record ``known`` for ``model_ref``'s sources (the user cache unless ``path``); never fatal."""
    key = source_key(model_ref)
    if key is None:
        return
    path = path or cache_home() / "fingerprints.json"
    data = read_records(path)
    if data.get(key) == known.to_json():
        return
    data[key] = known.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n", durable=False)
    except OSError as exc:
        log.warning("could not record the model fingerprint in %s: %s", path, exc)
