"""Index snapshots: the writer lock, the manifest, checksums, publishing a snapshot, reading the live one.

On-disk layout (documented in index/README.md)::

    <out>/CURRENT                  name of the live snapshot (replaced atomically)
    <out>/.lock                    held (flock) by the one process writing this index
    <out>/.encoding/               float16 embedding chunks of the build in progress (mmsearch/encode/chunks.py)
    <out>/.filestat.json           catalog files' size + mtime -> content hash of the last update (index/statcache.py)
    <out>/snapshots/<name>/        one complete, self-describing, immutable index
        manifest.json  items.sqlite  <channel>.faiss  <channel>.f16.npy  <channel>.ids.npy  [model.pt]

Every write (build, update, remove) makes a new snapshot beside the live one, fsyncs it, renames it
into place and only then swaps ``CURRENT``: a kill at any moment leaves the old or the new index.
The reader side (search, server) needs only :func:`resolve_snapshot`, :func:`read_manifest` and
:func:`verify_snapshot`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from .._version import __version__
from ..errors import IndexIncompatibleError, IndexNotFoundError, MMSearchError, disk_errors
from ..fsutil import atomic_write, crash_point, fsync_dir, fsync_file, sha256_file
from .ann import IndexSpec
from .store import ItemStore

INDEX_FORMAT = "mmsearch-index"
INDEX_FORMAT_VERSION = 2
METRIC = "inner_product"


class IndexLockedError(MMSearchError):
    """Another process is writing this index."""


@contextlib.contextmanager
def writer_lock(out: Path, timeout: float = 0.0) -> Iterator[None]:
    """Exclusive writer lock on ``<out>/.lock`` (flock: released by the kernel if the writer dies).

    Waits up to ``timeout`` seconds, then raises :class:`IndexLockedError`.
    """
    import fcntl

    if out.exists() and not out.is_dir():
        raise MMSearchError(f"{out} exists and is not a folder; give --out a folder (new or an index)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MMSearchError(f"cannot create index folder {out}: {exc.strerror or exc}") from None
    with disk_errors(f"index {out}", "the index is unchanged"):
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                    raise IndexLockedError(f"index {out} is being written by {holder}; wait for it to finish "
                                           f"(or pass --wait SECONDS)") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


# ------------------------------------------------------------------------------------------- snapshots
def current_snapshot(out: str | Path) -> Path | None:
    out = Path(out)
    try:
        name = (out / "CURRENT").read_text(encoding="utf-8").strip()
    except (OSError, ValueError):  # ValueError: a damaged, binary CURRENT
        return None
    if not name or "/" in name or "\x00" in name or name.startswith("."):
        return None
    path = out / "snapshots" / name
    return path if path.is_dir() else None


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
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexIncompatibleError(f"{snap} is not an mmsearch index; rebuild it with `mmsearch index`")
    if manifest.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise IndexIncompatibleError(
            f"{snap} uses index format {manifest.get('format_version')}, newer than this mmsearch "
            f"({__version__}) reads; upgrade mmsearch or rebuild the index")
    if manifest.get("format_version", 0) < INDEX_FORMAT_VERSION:
        raise IndexIncompatibleError(f"{snap} uses an old index format; rebuild it with `mmsearch index`")
    missing = manifest_problems(manifest)
    if missing:
        raise IndexIncompatibleError(f"{snap}/manifest.json is damaged ({missing}); rebuild the index with "
                                     f"`mmsearch index CATALOG --out {Path(path)} --rebuild`")
    manifest["_snapshot"] = str(snap)
    return manifest


MANIFEST_KEYS = {"count": int, "dim": int, "metric": str, "model": dict, "channels": dict, "files": dict}
MODEL_KEYS = ("name", "ref", "fingerprint")
CHANNEL_KEYS = ("dim", "count", "index", "spec", "faiss", "embeddings", "ids")


def manifest_problems(manifest: dict[str, Any]) -> str:
    """What a manifest that parses as JSON still lacks (``""`` when nothing): read before it is used."""
    bad = [k for k, t in MANIFEST_KEYS.items() if not isinstance(manifest.get(k), t)]
    if isinstance(manifest.get("model"), dict):
        bad += [f"model.{k}" for k in MODEL_KEYS if not isinstance(manifest["model"].get(k), str)]
    if isinstance(manifest.get("channels"), dict):
        if "image" not in manifest["channels"]:
            bad.append("channels.image")
        for name, ch in manifest["channels"].items():
            if not isinstance(ch, dict) or any(k not in ch for k in CHANNEL_KEYS):
                bad.append(f"channels.{name}")
    return f"missing or malformed: {', '.join(bad)}" if bad else ""


def channel_vectors(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """Item id -> float32 vector of one channel (``image``, ``text``, ...) of the live index (or a snapshot)."""
    snap = resolve_snapshot(path)
    ids = np.load(snap / f"{name}.ids.npy")
    vecs = np.load(snap / f"{name}.f16.npy").astype(np.float32)
    store = ItemStore.open(snap / "items.sqlite")
    try:
        rows = store.rows(ids.tolist())
    finally:
        store.close()
    return {rows[int(f)]["id"]: v for f, v in zip(ids, vecs)}


def verify_snapshot(snap: Path, manifest: dict[str, Any]) -> None:
    """Check every file against the manifest's SHA-256; a damaged file is a clear error."""
    for name, digest in manifest.get("files", {}).items():
        if not (snap / name).is_file() or sha256_file(snap / name) != digest:
            raise IndexIncompatibleError(f"index file {snap / name} is missing or damaged (checksum mismatch); "
                                         f"rebuild the index with `mmsearch index --rebuild`")


def snapshot_name() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def publish(out: Path, tmp: Path, manifest: dict[str, Any]) -> Path:
    """Checksum, fsync and rename ``tmp`` into place, then point CURRENT at it (caller holds the lock)."""
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    for p in tmp.iterdir():
        fsync_file(p)
    fsync_dir(tmp)
    crash_point("before-rename")
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    os.rename(tmp, final)
    fsync_dir(tmp.parent)
    crash_point("before-current")
    previous = current_snapshot(out)
    atomic_write(out / "CURRENT", final.name + "\n")
    crash_point("before-gc")
    _collect_garbage(out, keep={final.name, previous.name if previous else ""})
    return final


def _collect_garbage(out: Path, keep: set[str]) -> None:
    """Delete snapshots other than ``keep`` (the new one and its predecessor) and stale temp folders.

    The predecessor stays so a SearchEngine opened on it keeps working until it reloads.
    """
    for p in (out / "snapshots").iterdir():
        if p.name not in keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# -------------------------------------------------------------------------------------- in-memory state
@dataclass
class ChannelData:
    ids: np.ndarray  # (n,) int64 fids, ascending
    vectors: np.ndarray  # (n, dim) float16 or float32, unit rows
    index: faiss.Index | None = None  # the previous snapshot's index, re-used when possible
    spec: IndexSpec | None = None


@dataclass
class State:
    """What an update starts from: the live snapshot's manifest, store path and channels."""

    snapshot: Path
    manifest: dict[str, Any]
    channels: dict[str, ChannelData]


def load_state(out: Path, verify: bool = True) -> State | None:
    """The live snapshot of ``out`` for updating, or None when there is none."""
    if current_snapshot(out) is None:
        return None
    manifest = read_manifest(out)
    snap = Path(manifest["_snapshot"])
    if verify:
        verify_snapshot(snap, manifest)
    channels = {}
    for name, meta in manifest["channels"].items():
        channels[name] = ChannelData(ids=np.load(snap / meta["ids"]), vectors=np.load(snap / meta["embeddings"],
                                                                                      mmap_mode="r"),
                                     spec=IndexSpec.from_dict(meta["spec"]))
    return State(snapshot=snap, manifest=manifest, channels=channels)
