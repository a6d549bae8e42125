"""The index writer: a new snapshot = the live one + changed items - removed items, then published.

Embeddings are kept per snapshot, so changing the index type re-uses them, and a trained FAISS index is
updated in place (remove + add) while its type still fits. Item ids (``fid``) are assigned once and
never reused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from .._version import __version__
from ..errors import disk_errors
from ..fsutil import crash_point
from . import ann, annbuild, ondisk
from .ann import IndexSpec
from .options import IndexCfg
from .quiet import quiet_stdout
from .snapshot import INDEX_FORMAT, INDEX_FORMAT_VERSION, METRIC, ChannelData, State, publish, snapshot_name
from .store import ItemStore

log = logging.getLogger(__name__)


def _merge(old: ChannelData | None, drop: np.ndarray, new_ids: np.ndarray, new_vecs: np.ndarray,
           dim: int) -> tuple[np.ndarray, np.ndarray]:
    """old rows minus ``drop`` fids, plus new rows; sorted by fid. -> (ids (n,), float16 (n, dim))."""
    if old is not None and len(old.ids):
        keep = ~np.isin(old.ids, drop)
        ids = np.concatenate([old.ids[keep], new_ids.astype(np.int64)])
        vecs = np.concatenate([np.asarray(old.vectors[keep], np.float16), new_vecs.astype(np.float16)])
    else:
        ids, vecs = new_ids.astype(np.int64), new_vecs.astype(np.float16, copy=False).reshape(-1, dim)
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


def _channel_index(name: str, cfg: IndexCfg, old: ChannelData | None, prev_cfg: dict | None, ids: np.ndarray,
                   vecs: np.ndarray, drop: np.ndarray, added: np.ndarray, snap: Path | None, tmp: Path,
                   adder: ondisk.Adder | None = None) -> tuple[faiss.Index, IndexSpec]:
    """Re-use the previous trained index (remove + add) when the choice still holds, else build anew.

    IVF lists stay where they were: an index with lists on disk is copied into ``tmp`` and updated
    there. A new IVF index is built with its lists on disk (index/ondisk.py) when ``adder`` is
    given (a distributed job: the ranks add the parts) or the previous index had them on disk.
    ``vecs`` may stay float16: every FAISS call below converts chunks to float32 (exactly).
    """
    fresh = annbuild.choose(len(ids), vecs.shape[1], cfg)
    was_ondisk = old is not None and old.spec is not None and old.spec.ondisk is not None
    reuse = (old is not None and old.spec is not None and prev_cfg == cfg.to_dict() and snap is not None
             and old.spec.kind not in ("flat",) and old.spec.factory == _same_family(fresh, old.spec)
             and len(ids) <= 4 * max(1, old.spec.trained_on))
    if reuse:
        if was_ondisk:
            index = ondisk.open_copy(snap, name, old.spec, tmp)
        else:
            index = ann.read(str(snap / f"{name}.faiss"), old.spec, mmap=False)
        if len(drop) and not annbuild.supports_remove(index):
            reuse = False
        else:
            mask = np.isin(ids, added)
            with quiet_stdout() if was_ondisk else contextlib.nullcontext():
                annbuild.remove(index, drop)
                annbuild.add(index, vecs[mask], ids[mask])
            spec = IndexSpec(old.spec.kind, old.spec.factory, dict(old.spec.params), trained_on=old.spec.trained_on,
                             ondisk=old.spec.ondisk)
            spec = annbuild.tune(index, spec, vecs, ids, cfg.target_recall, seed=cfg.seed)
            log.info("%s: updated the %s index in place (%d removed, %d added)", name, spec.kind, len(drop),
                     int(mask.sum()))
            return index, spec
    if (adder is not None or was_ondisk) and ondisk.supports(fresh, vecs.shape[1]):
        local = adder is None
        adder = adder or ondisk.LocalAdder(tmp / ".parts")
        try:
            index, spec = ondisk.build(name, fresh, tmp, vecs, adder, seed=cfg.seed)
        finally:
            if local:
                shutil.rmtree(tmp / ".parts", ignore_errors=True)
        return index, annbuild.tune(index, spec, vecs, ids, cfg.target_recall, seed=cfg.seed)
    return annbuild.build_tuned(cfg, vecs, ids)


def _same_family(fresh: IndexSpec, old: IndexSpec) -> str:
    """The old factory string if ``fresh`` is the same kind (cell counts may differ), else ``fresh``'s."""
    return old.factory if fresh.kind == old.kind else fresh.factory


@dataclass
class Change:
    """One item to write: its store row and, if (re-)encoded, its vectors per channel."""

    row: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # channel -> (dim,)
    drop_text: bool = False  # the item no longer has text: remove its text vector


def commit(out: Path, state: State | None, manifest: dict[str, Any], changes: list[Change], removed: Sequence[int],
           cfg: IndexCfg, dims: dict[str, int], checkpoint: Path | None = None, next_fid: int | None = None,
           adder: ondisk.Adder | None = None) -> Path:
    """Write a new snapshot = ``state`` + ``changes`` - ``removed`` and make it live (caller holds the lock).

    adder: builds new IVF indexes with their lists on disk, its processes adding the vectors (see
    :func:`_channel_index`). A failure removes the half-written snapshot folder.
    """
    snaps = out / "snapshots"
    tmp = snaps / f".tmp-{snapshot_name()}"
    with disk_errors(f"index {out}", "the index is unchanged"):
        snaps.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        try:
            return _write_snapshot(out, tmp, state, manifest, changes, removed, cfg, dims, checkpoint, next_fid,
                                   adder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write_snapshot(out: Path, tmp: Path, state: State | None, manifest: dict[str, Any], changes: list[Change],
                    removed: Sequence[int], cfg: IndexCfg, dims: dict[str, int], checkpoint: Path | None,
                    next_fid: int | None, adder: ondisk.Adder | None) -> Path:
    store = ItemStore.create(tmp / "items.sqlite", copy_from=state.snapshot / "items.sqlite" if state else None)
    gone = np.asarray(sorted(set(int(f) for f in removed)), np.int64)
    store.delete(gone.tolist())
    store.upsert(c.row for c in changes)
    if next_fid is not None:
        store.set_next_fid(next_fid)
    store.commit()
    count = store.count()
    store.close()
    crash_point("after-store")

    manifest["channels"] = {}
    prev_cfg = state.manifest.get("index_cfg") if state else None
    for name, dim in dims.items():
        old = state.channels.get(name) if state else None
        new = [(c.row["fid"], c.vectors[name]) for c in changes if name in c.vectors]
        new_ids = np.asarray([f for f, _ in new], np.int64)
        new_vecs = np.stack([v for _, v in new]) if new else np.zeros((0, dim), np.float32)
        replaced = [c.row["fid"] for c in changes if name in c.vectors or (c.drop_text and name == "text")]
        drop = np.unique(np.concatenate([gone, np.asarray(replaced, np.int64)])) if len(replaced) else gone
        if old is not None:
            drop = drop[np.isin(drop, old.ids)]
        ids, vecs = _merge(old, drop, new_ids, new_vecs, dim)
        if not len(ids) and name == "text":
            continue
        np.save(tmp / f"{name}.f16.npy", vecs)
        np.save(tmp / f"{name}.ids.npy", ids)
        index, spec = _channel_index(name, cfg, old, prev_cfg, ids, vecs, drop, new_ids,
                                     state.snapshot if state else None, tmp, adder)
        (ondisk.write if spec.ondisk else faiss.write_index)(index, str(tmp / f"{name}.faiss"))
        del index  # unmaps on-disk lists before the snapshot is checksummed
        manifest["channels"][name] = {"dim": int(dim), "count": int(len(ids)), "index": spec.kind,
                                      "spec": spec.to_dict(), "faiss": f"{name}.faiss",
                                      "embeddings": f"{name}.f16.npy", "ids": f"{name}.ids.npy"}
        if spec.ondisk:  # the inverted lists: a file of the snapshot, opened beside the .faiss file
            manifest["channels"][name]["ivfdata"] = spec.ondisk
    crash_point("after-faiss")
    if checkpoint is not None:
        shutil.copyfile(checkpoint, tmp / "model.pt")
    elif state is not None and (state.snapshot / "model.pt").is_file():
        shutil.copyfile(state.snapshot / "model.pt", tmp / "model.pt")
    manifest["count"] = count
    manifest["index_cfg"] = cfg.to_dict()
    manifest["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return publish(out, tmp, manifest)


def base_manifest(model, model_ref: str, catalog: str | None, state: State | None) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "mmsearch_version": __version__,
        "created": state.manifest.get("created", now) if state else now,
        "catalog": catalog if catalog is not None else (state.manifest.get("catalog") if state else None),
        "model": {"name": model.cfg.name, "ref": model_ref, "fingerprint": model.fingerprint(),
                  "fusion": model.cfg.fusion},
        "dim": model.embed_dim,
        "metric": METRIC,
        "skipped": [],
    }


def channel_dims(model) -> dict[str, int]:
    dims = {"image": model.embed_dim, "text": model.embed_dim}
    if model.visual_dim is not None:
        dims["visual"] = model.visual_dim
    return dims


def cfg_for(index: IndexCfg | None, state: State | None) -> IndexCfg:
    if index is not None:
        return index
    if state is not None and state.manifest.get("index_cfg"):
        return IndexCfg(**state.manifest["index_cfg"])
    return IndexCfg()
