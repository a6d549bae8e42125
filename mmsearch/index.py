"""Build and open index folders: embeddings, FAISS indexes, item metadata and a manifest.

On-disk layout (documented in index/README.md)::

    <out>/CURRENT                  name of the live snapshot (replaced atomically)
    <out>/snapshots/<name>/        one complete, self-describing index
        manifest.json  items.jsonl  <channel>.faiss  <channel>.f16.npy  [<channel>.ids.npy]  [model.pt]

A build writes a new snapshot beside the old one and swaps ``CURRENT`` only when it is complete, so
an interrupted build leaves the previous index usable.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import __version__
from .data import CatalogItem, scan_catalog
from .embed import EncodeCfg, encode_image_files, encode_texts
from .errors import CatalogError, IndexIncompatibleError, IndexNotFoundError
from .factory import create_model, list_models

log = logging.getLogger(__name__)

INDEX_FORMAT = "mmsearch-index"
INDEX_FORMAT_VERSION = 1
METRIC = "inner_product"


@dataclass
class BuildReport:
    out: Path
    snapshot: Path
    indexed: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    with_text: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return (self.indexed + len(self.skipped)) / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------ file helpers
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flat_index(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Exact inner-product index over unit vectors, with explicit int64 ids (never positions)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def write_snapshot(out: Path, manifest: dict[str, Any], items: list[dict], channels: dict[str, tuple[np.ndarray, np.ndarray]],
                   checkpoint: Path | None = None) -> Path:
    """Write a complete snapshot into a temporary folder, then rename it and point CURRENT at it.

    channels: name -> (ids (n,), unit vectors (n, dim)); ids index into ``items``.
    """
    snaps = out / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    name = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    tmp = snaps / f".tmp-{name}"
    tmp.mkdir()
    with open(tmp / "items.jsonl", "w", encoding="utf-8") as fh:
        for row in items:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest["channels"] = {}
    for ch, (ids, vecs) in channels.items():
        np.save(tmp / f"{ch}.f16.npy", vecs.astype(np.float16))
        np.save(tmp / f"{ch}.ids.npy", ids.astype(np.int64))
        faiss.write_index(flat_index(vecs, ids), str(tmp / f"{ch}.faiss"))
        manifest["channels"][ch] = {"dim": int(vecs.shape[1]), "count": int(len(ids)), "index": "Flat",
                                    "faiss": f"{ch}.faiss", "embeddings": f"{ch}.f16.npy", "ids": f"{ch}.ids.npy"}
    if checkpoint is not None:
        shutil.copyfile(checkpoint, tmp / "model.pt")
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    final = snaps / name
    os.rename(tmp, final)
    _fsync_dir(snaps)
    previous = current_snapshot(out)
    atomic_write_text(out / "CURRENT", name + "\n")
    _collect_garbage(out, keep={name, previous.name if previous else ""})
    return final


def _collect_garbage(out: Path, keep: set[str]) -> None:
    """Delete snapshots other than ``keep`` (the new one and its predecessor) and stale temp folders."""
    for p in (out / "snapshots").iterdir():
        if p.name not in keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def current_snapshot(out: str | Path) -> Path | None:
    out = Path(out)
    try:
        name = (out / "CURRENT").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = out / "snapshots" / name
    return path if name and path.is_dir() else None


def resolve_snapshot(path: str | Path) -> Path:
    """An index folder (with CURRENT) or a snapshot folder (with manifest.json) -> the snapshot folder."""
    path = Path(path)
    if not path.exists():
        raise IndexNotFoundError(f"no index at {path}: build one with `mmsearch index CATALOG --out {path}`")
    if (path / "manifest.json").is_file():
        return path
    snap = current_snapshot(path)
    if snap is None:
        raise IndexNotFoundError(f"{path} holds no built index: run `mmsearch index CATALOG --out {path}`")
    return snap


def read_manifest(path: str | Path) -> dict[str, Any]:
    snap = resolve_snapshot(path)
    try:
        manifest = json.loads((snap / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexIncompatibleError(f"{snap}/manifest.json is unreadable ({exc}); rebuild the index") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexIncompatibleError(f"{snap} is not an mmsearch index; rebuild it with `mmsearch index`")
    if manifest.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise IndexIncompatibleError(
            f"{snap} uses index format {manifest.get('format_version')}, newer than this mmsearch "
            f"({__version__}) reads; upgrade mmsearch or rebuild the index")
    if manifest.get("format_version", 0) < INDEX_FORMAT_VERSION:
        raise IndexIncompatibleError(f"{snap} uses an old index format; rebuild it with `mmsearch index`")
    manifest["_snapshot"] = str(snap)
    return manifest


# ---------------------------------------------------------------------------------------------- build
def item_row(item: CatalogItem) -> dict[str, Any]:
    return {"id": item.id, "path": item.path, "title": item.title, "text": item.text, "metadata": item.metadata}


def build_index(catalog: str | Path, out: str | Path = "index", model: str | Path = "default",
                device: str = "auto", batch_size: int = 32, num_workers: int | None = None,
                progress: bool = True, encode: EncodeCfg | None = None) -> BuildReport:
    """Encode every image of ``catalog`` and write a searchable index to ``out``.

    Args:
        catalog: folder of images (see README "Catalog format").
        out: index folder; an existing index there is replaced atomically when the build completes.
        model: a built-in model name (``default``, ``tiny`` ...) or a checkpoint path.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: images per forward pass.
        num_workers: image-decoding worker processes (default: sized to the machine and device).
        encode: further image-pipeline options (:class:`mmsearch.embed.EncodeCfg`: decoder, torch.compile ...);
            ``batch_size`` and ``num_workers`` above override its fields.

    Returns:
        A :class:`BuildReport` with counts, skipped items and their reasons, and timing.

    Example:
        >>> from mmsearch import build_index                                  # doctest: +SKIP
        >>> report = build_index("mmsearch/sample/catalog", out="index")      # doctest: +SKIP
        >>> report.indexed                                                    # doctest: +SKIP
        60
    """
    out = Path(out)
    items = scan_catalog(catalog, exclude=[out])  # raises before anything is written
    t0 = time.perf_counter()
    net, preprocess, tokenizer = create_model(model, device=device)
    emb = encode_image_files(net, preprocess, [it.path for it in items], batch_size=batch_size,
                             num_workers=num_workers, progress=progress, cfg=encode)
    skipped = [{"id": items[pos].id, "reason": reason} for pos, reason in emb.failed]
    if not emb.ok:
        reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:5])
        raise CatalogError(f"none of the {len(items)} images in {catalog} could be read ({reasons})")
    kept = [items[pos] for pos in emb.ok]
    ids = np.arange(len(kept), dtype=np.int64)
    channels = {name: (ids, vecs) for name, vecs in emb.channels.items()}
    with_text = [i for i, it in enumerate(kept) if it.full_text]
    if with_text:
        text_vecs = encode_texts(net, tokenizer, [kept[i].full_text for i in with_text], progress=progress)
        channels["text"] = (np.asarray(with_text, np.int64), text_vecs)
    seconds = time.perf_counter() - t0

    is_checkpoint = str(model) not in list_models()
    manifest = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "mmsearch_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "catalog": str(Path(catalog).resolve()),
        "model": {"name": net.cfg.name, "ref": "model.pt" if is_checkpoint else str(model),
                  "fingerprint": net.fingerprint(), "fusion": net.cfg.fusion},
        "dim": net.embed_dim,
        "metric": METRIC,
        "count": len(kept),
        "skipped": skipped,
        "build": {"seconds": round(seconds, 3), "images_per_s": round(len(items) / seconds, 2) if seconds else None,
                  "device": str(next(net.parameters()).device), "batch_size": batch_size},
    }
    snap = write_snapshot(out, manifest, [item_row(it) for it in kept], channels,
                          checkpoint=Path(model) if is_checkpoint else None)
    log.info("indexed %d items (%d skipped) into %s", len(kept), len(skipped), snap)
    return BuildReport(out=out, snapshot=snap, indexed=len(kept), skipped=skipped, with_text=len(with_text),
                       seconds=seconds)
