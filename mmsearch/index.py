"""Build, update and open index folders: embeddings, FAISS indexes, an SQLite item store, a manifest.

On-disk layout (documented in index/README.md)::

    <out>/CURRENT                  name of the live snapshot (replaced atomically)
    <out>/.lock                    held (flock) by the one process writing this index
    <out>/.encoding/               float16 embedding shards of the build in progress (mmsearch/shards.py)
    <out>/snapshots/<name>/        one complete, self-describing, immutable index
        manifest.json  items.sqlite  <channel>.faiss  <channel>.f16.npy  <channel>.ids.npy  [model.pt]

Every write (build, update, remove) makes a new snapshot beside the live one, fsyncs it, renames it
into place and only then swaps ``CURRENT``: a kill at any moment leaves the old or the new index.
Embeddings are kept per snapshot, so an update re-encodes only new or changed files, and changing the
index type re-uses them. Item ids (``fid``) are assigned once and never reused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from . import __version__
from . import ann, ondisk
from .ann import IndexCfg, IndexSpec
from .data import CatalogItem, scan_catalog
from .embed import EncodeCfg, ImageEmbeddings, encode_image_files, encode_texts
from .errors import CatalogError, IndexIncompatibleError, IndexNotFoundError, MMSearchError
from .factory import create_model, list_models
from .storable import display_name, problem
from .store import ItemStore
from .tarshards import read_member

log = logging.getLogger(__name__)

INDEX_FORMAT = "mmsearch-index"
INDEX_FORMAT_VERSION = 2
METRIC = "inner_product"
IMAGE_CHANNELS = ("image", "visual")
ENCODE_DIR = ".encoding"  # <out>/.encoding: embedding shards of the build in progress


class IndexLockedError(MMSearchError):
    """Another process is writing this index."""


@dataclass
class BuildReport:
    out: Path
    snapshot: Path
    indexed: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    with_text: int = 0
    seconds: float = 0.0
    added: int = 0
    updated: int = 0  # image content changed: re-encoded under the same id
    metadata_updated: int = 0  # same image, new title/text/metadata: no image re-encoding
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0  # images actually run through the image tower

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


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
    if not os.path.isfile(path):
        member = read_member(path)  # a tar shard's member (mmsearch/tarshards.py)
        if member is not None:
            h.update(member)
            return h.hexdigest()
        if os.path.exists(path):  # a FIFO or /dev/zero would block or spin forever: regular files only
            raise OSError(f"not a regular file: {path}")
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def crash_point(name: str) -> None:
    """Test hook: ``MMSEARCH_CRASH_AT=name`` kills this process with SIGKILL here (crash-safety tests)."""
    if os.environ.get("MMSEARCH_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
    from .store import ItemStore

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


def _snapshot_name() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _publish(out: Path, tmp: Path, manifest: dict[str, Any]) -> Path:
    """Checksum, fsync and rename ``tmp`` into place, then point CURRENT at it (caller holds the lock)."""
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    crash_point("before-rename")
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    os.rename(tmp, final)
    _fsync_dir(tmp.parent)
    crash_point("before-current")
    previous = current_snapshot(out)
    atomic_write_text(out / "CURRENT", final.name + "\n")
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
    there. A new IVF index is built with its lists on disk (mmsearch/ondisk.py) when ``adder`` is
    given (a distributed job: the ranks add the parts) or the previous index had them on disk.
    ``vecs`` may stay float16: every FAISS call below converts chunks to float32 (exactly).
    """
    fresh = ann.choose(len(ids), vecs.shape[1], cfg)
    was_ondisk = old is not None and old.spec is not None and old.spec.ondisk is not None
    reuse = (old is not None and old.spec is not None and prev_cfg == cfg.to_dict() and snap is not None
             and old.spec.kind not in ("flat",) and old.spec.factory == _same_family(fresh, old.spec)
             and len(ids) <= 4 * max(1, old.spec.trained_on))
    if reuse:
        if was_ondisk:
            index = ondisk.open_copy(snap, name, old.spec, tmp)
        else:
            index = ann.read(str(snap / f"{name}.faiss"), old.spec, mmap=False)
        if len(drop) and not ann.supports_remove(index):
            reuse = False
        else:
            mask = np.isin(ids, added)
            with ondisk.quiet_stdout() if was_ondisk else contextlib.nullcontext():
                ann.remove(index, drop)
                ann.add(index, vecs[mask], ids[mask])
            spec = IndexSpec(old.spec.kind, old.spec.factory, dict(old.spec.params), trained_on=old.spec.trained_on,
                             ondisk=old.spec.ondisk)
            spec = ann.tune(index, spec, vecs, ids, cfg.target_recall, seed=cfg.seed)
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
        return index, ann.tune(index, spec, vecs, ids, cfg.target_recall, seed=cfg.seed)
    return ann.build_tuned(cfg, vecs, ids)


def _same_family(fresh: IndexSpec, old: IndexSpec) -> str:
    """The old factory string if ``fresh`` is the same kind (cell counts may differ), else ``fresh``'s."""
    return old.factory if fresh.kind == old.kind else fresh.factory


# ------------------------------------------------------------------------------------------ the writer
@dataclass
class Precomputed:
    """Content hashes and embeddings computed outside the writer (by the ranks of a distributed run).

    ``image_rows`` / ``text_rows`` map an item id to its row in ``images[channel]`` / ``texts``.
    """

    hashes: dict[str, str]  # id -> image sha256, for every item of the catalog
    image_rows: dict[str, int]
    images: dict[str, np.ndarray]  # channel -> (n, dim) float32 unit rows
    failed: dict[str, str]  # id -> reason the image could not be read
    text_rows: dict[str, int] = field(default_factory=dict)
    texts: np.ndarray | None = None  # (m, D) embeddings of the items' full text
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest's "build" section
    adder: ondisk.Adder | None = None  # new IVF indexes: lists on disk, vectors added by these processes

    def image_embeddings(self, items: list[CatalogItem]) -> ImageEmbeddings:
        """The same result :func:`encode_image_files` would give for ``items``."""
        ok = [p for p, it in enumerate(items) if it.id in self.image_rows]
        failed = [(p, self.failed[it.id]) for p, it in enumerate(items) if it.id in self.failed]
        missing = [it.id for it in items if it.id not in self.image_rows and it.id not in self.failed]
        if missing:
            raise MMSearchError(f"{len(missing)} item(s) have no precomputed embedding (first: {missing[0]}); "
                                f"re-run the build")
        rows = np.asarray([self.image_rows[items[p].id] for p in ok], np.int64)
        return ImageEmbeddings(ok=ok, channels={name: arr[rows] for name, arr in self.images.items()},
                               failed=failed)


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
    snaps.mkdir(parents=True, exist_ok=True)
    tmp = snaps / f".tmp-{_snapshot_name()}"
    tmp.mkdir()
    try:
        return _write_snapshot(out, tmp, state, manifest, changes, removed, cfg, dims, checkpoint, next_fid, adder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_snapshot(out: Path, tmp: Path, state: State | None, manifest: dict[str, Any], changes: list[Change],
                    removed: Sequence[int], cfg: IndexCfg, dims: dict[str, int], checkpoint: Path | None,
                    next_fid: int | None, adder: ondisk.Adder | None) -> Path:
    store = ItemStore.create(tmp / "items.sqlite", copy_from=state.snapshot / "items.sqlite" if state else None)
    removed = np.asarray(sorted(set(int(f) for f in removed)), np.int64)
    store.delete(removed.tolist())
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
        drop = np.unique(np.concatenate([removed, np.asarray(replaced, np.int64)])) if len(replaced) else removed
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
    return _publish(out, tmp, manifest)


def _base_manifest(net, model_ref: str, catalog: str | None, state: State | None) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "mmsearch_version": __version__,
        "created": state.manifest.get("created", now) if state else now,
        "catalog": catalog if catalog is not None else (state.manifest.get("catalog") if state else None),
        "model": {"name": net.cfg.name, "ref": model_ref, "fingerprint": net.fingerprint(), "fusion": net.cfg.fusion},
        "dim": net.embed_dim,
        "metric": METRIC,
        "skipped": [],
    }


def _channel_dims(net) -> dict[str, int]:
    dims = {"image": net.embed_dim, "text": net.embed_dim}
    if net.visual_dim is not None:
        dims["visual"] = net.visual_dim
    return dims


def _model_for(state: State | None, model: str | Path | None, device: str):
    """(net, preprocess, tokenizer, manifest model ref, checkpoint to copy) for a new build or an update."""
    if model is None:
        if state is None:
            raise MMSearchError("no model given and no existing index to take it from")
        ref = state.manifest["model"]["ref"]
        model = str(state.snapshot / ref) if ref not in list_models() else ref
    is_checkpoint = str(model) not in list_models()
    net, preprocess, tokenizer = create_model(model, device=device)
    ref = "model.pt" if is_checkpoint else str(model)
    ckpt = Path(model) if is_checkpoint and not (state and Path(model).parent == state.snapshot) else None
    return net, preprocess, tokenizer, ref, ckpt


def _cfg_for(index: IndexCfg | None, state: State | None) -> IndexCfg:
    if index is not None:
        return index
    if state is not None and state.manifest.get("index_cfg"):
        return IndexCfg(**state.manifest["index_cfg"])
    return IndexCfg()


# --------------------------------------------------------------------------------------- public writes
def build_index(catalog: str | Path, out: str | Path = "index", model: str | Path | None = None,
                device: str = "auto", batch_size: int = 32, num_workers: int | None = None,
                progress: bool = True, encode: EncodeCfg | None = None, index: IndexCfg | None = None,
                rebuild: bool = False, lock_timeout: float = 0.0,
                precompute: Callable[..., Precomputed] | None = None) -> BuildReport:
    """Index every image of ``catalog`` into ``out``, or bring an existing index there up to date.

    On an existing index (same model) only new and changed files (by content hash) are encoded, files
    gone from the folder are removed, and metadata-only changes re-encode at most the item's text.

    Args:
        catalog: folder of images (see README "Catalog format").
        out: index folder; the new state replaces the old one atomically when complete.
        model: a built-in model name (``default``, ``tiny`` ...) or a checkpoint path; None: the existing
            index's own model, else ``default``. A different model than the existing index's re-encodes
            everything.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: images per forward pass.
        num_workers: image-decoding worker processes (default: sized to the machine and device).
        encode: further image-pipeline options (:class:`mmsearch.embed.EncodeCfg`: decoder, torch.compile ...);
            ``batch_size`` and ``num_workers`` above override its fields.
        index: index type, memory budget and recall target (:class:`IndexCfg`); default: the existing
            index's, else ``auto``. A new type is built from the stored embeddings, without re-encoding.
        rebuild: ignore the existing index and encode everything again.
        lock_timeout: seconds to wait for another writer of ``out`` before failing.
        precompute: called under the writer lock as ``precompute(items, previous_rows, state, net,
            preprocess, tokenizer)``; the :class:`Precomputed` hashes and embeddings it returns replace
            hashing and encoding here (distributed indexing, see mmsearch/dist_index.py).

    Returns:
        A :class:`BuildReport`: counts of added / updated / metadata-updated / removed / unchanged items,
        skipped files with reasons, timing.

    Example:
        >>> from mmsearch import build_index                                  # doctest: +SKIP
        >>> report = build_index("mmsearch/sample/catalog", out="index")      # doctest: +SKIP
        >>> report.indexed, report.added                                      # doctest: +SKIP
        (60, 60)
    """
    out = Path(out)
    if model is None:  # keep the index's own model, as the index type is kept
        model = index_model(out)
    scan_skipped: list[dict[str, str]] = []  # files, shards and rows that cannot be read or stored
    items = scan_catalog(catalog, exclude=[out], skipped=scan_skipped)  # raises before anything is written
    t0 = time.perf_counter()
    with writer_lock(out, lock_timeout):
        state = None if rebuild else _try_state(out)
        net, preprocess, tokenizer, ref, ckpt = _model_for(None, model, device)
        if state is not None and state.manifest["model"]["fingerprint"] != net.fingerprint():
            log.info("index %s was built with another model; re-encoding everything", out)
            state = None
        store = ItemStore.open(state.snapshot / "items.sqlite") if state else None
        previous = store.all_rows() if store else {}
        if store:
            store.close()
        wanted = {it.id: it for it in items}
        removed = [row["fid"] for iid, row in previous.items() if iid not in wanted]
        pre = precompute(items, previous, state, net, preprocess, tokenizer) if precompute else None
        work = out / ENCODE_DIR  # float16 embedding shards of this build (mmsearch/shards.py)
        shutil.rmtree(work, ignore_errors=True)  # left by a killed build: we hold the lock, it is stale
        try:
            report, changes, next_fid, failed = _diff_and_encode(list(wanted.values()), previous, net, preprocess,
                                                                 tokenizer, state, batch_size, num_workers, progress,
                                                                 encode=encode, precomputed=pre, shards=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report.removed = len(removed) + len(failed)
        removed += failed
        report.skipped = scan_skipped + report.skipped
        if state is None and report.skipped and report.encoded == 0:
            reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in report.skipped[:5])
            raise CatalogError(f"none of the {len(items)} images in {catalog} could be read ({reasons})")
        cfg = _cfg_for(index, state)
        report.seconds = time.perf_counter() - t0
        nothing = (state is not None and not changes and not removed
                   and state.manifest.get("index_cfg") == cfg.to_dict())
        if nothing:
            snap = state.snapshot  # type: ignore[union-attr]
        else:
            manifest = _base_manifest(net, ref, str(Path(catalog).resolve()), state)
            manifest["skipped"] = report.skipped
            manifest["build"] = {"seconds": round(report.seconds, 3), "encoded": report.encoded,
                                 "images_per_s": round(report.images_per_s, 2) or None,
                                 "device": str(next(net.parameters()).device), "batch_size": batch_size,
                                 "added": report.added, "updated": report.updated,
                                 "metadata_updated": report.metadata_updated, "removed": report.removed,
                                 "unchanged": report.unchanged}
            if pre is not None and pre.info:
                manifest["build"]["distributed"] = pre.info
            snap = commit(out, state, manifest, changes, removed, cfg, _channel_dims(net), checkpoint=ckpt,
                          next_fid=next_fid, adder=pre.adder if pre is not None else None)
    report.out, report.snapshot = out, snap
    final = read_manifest(snap)
    report.indexed = final["count"]
    report.with_text = final["channels"].get("text", {}).get("count", 0)
    if report.indexed == 0:
        log.warning("index %s is empty: none of the catalog's images could be read", out)
    log.info("indexed %d items (+%d ~%d m%d -%d =%d, %d skipped) into %s", report.indexed, report.added,
             report.updated, report.metadata_updated, report.removed, report.unchanged, len(report.skipped), snap)
    return report


def index_model(out: str | Path) -> str:
    """The model the index at ``out`` was built with (a name, or its snapshot's model.pt), else ``default``."""
    try:
        m = read_manifest(out)
    except MMSearchError:
        return "default"
    ref = m["model"]["ref"]
    return ref if ref in list_models() else str(Path(m["_snapshot"]) / ref)


def _try_state(out: Path) -> State | None:
    try:
        return load_state(out)
    except IndexIncompatibleError as exc:
        log.warning("existing index at %s cannot be updated (%s); rebuilding it", out, exc)
        return None


def _diff_and_encode(items: list[CatalogItem], previous: dict[str, dict], net, preprocess, tokenizer,
                     state: State | None, batch_size: int | None, num_workers: int | None, progress: bool,
                     image_hashes: dict[str, str] | None = None, precomputed: Precomputed | None = None,
                     encode: EncodeCfg | None = None, shards: Path | None = None
                     ) -> tuple[BuildReport, list[Change], int, list[int]]:
    """Compare wanted items with the previous rows; encode what is new or changed (or take the
    hashes and embeddings from ``precomputed``). ``shards``: a folder for the image embeddings' shards
    (bounded memory while encoding); None keeps them in memory.

    -> (report, changes, next fid, fids of previously indexed items whose changed file no longer reads)
    """
    report = BuildReport(out=Path(), snapshot=Path(), indexed=0)
    next_fid = max([r["fid"] + 1 for r in previous.values()] + [0])
    if state is not None:
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            next_fid = max(next_fid, st.next_fid())
    if precomputed is not None:
        image_hashes = precomputed.hashes
    to_encode: list[CatalogItem] = []
    hashes: dict[str, str] = {}
    changes: list[Change] = []
    for it in items:
        try:
            h = image_hashes[it.id] if image_hashes and it.id in image_hashes else sha256_file(Path(it.path))
        except OSError as exc:
            h = f"unreadable:{exc}"
        hashes[it.id] = h
        prev = previous.get(it.id)
        if prev is None or prev["image_sha256"] != h:
            to_encode.append(it)
    if precomputed is not None:
        emb = precomputed.image_embeddings(to_encode) if to_encode else None
    else:
        emb = encode_image_files(net, preprocess, [it.path for it in to_encode], batch_size=batch_size,
                                 num_workers=num_workers, progress=progress, cfg=encode,
                                 shards=shards) if to_encode else None
    report.encoded = len(emb.ok) if emb else 0
    encoded: dict[str, dict[str, np.ndarray]] = {}
    failed_fids: list[int] = []
    if emb is not None:
        for r, pos in enumerate(emb.ok):
            encoded[to_encode[pos].id] = {name: vecs[r] for name, vecs in emb.channels.items()}
        for pos, reason in emb.failed:
            it = to_encode[pos]
            report.skipped.append({"id": it.id, "reason": reason})
            if it.id in previous:  # changed into something unreadable: it leaves the index
                failed_fids.append(previous[it.id]["fid"])
    # texts: (re-)encode where the embedded text changed; texts are cheap next to images
    need_text: list[tuple[Change, str]] = []
    for it in items:
        prev = previous.get(it.id)
        if it.id not in encoded and (prev is None or prev["image_sha256"] != hashes[it.id]):
            continue  # unreadable file
        full = it.full_text
        th = sha256_text(full) if full else None
        row = {"fid": prev["fid"] if prev else next_fid, "id": it.id, "path": it.path, "title": it.title,
               "text": it.text, "metadata": it.metadata, "image_sha256": hashes[it.id], "text_sha256": th}
        if prev is None:
            next_fid += 1
            report.added += 1
        elif it.id in encoded:
            report.updated += 1
        elif (prev["title"], prev["text"], prev["metadata"], prev["path"]) != (it.title, it.text, it.metadata, it.path):
            report.metadata_updated += 1
        else:
            report.unchanged += 1
            continue
        change = Change(row=row, vectors=dict(encoded.get(it.id, {})))
        if th is not None and (prev is None or prev["text_sha256"] != th):
            need_text.append((change, full))
        elif th is None and prev is not None and prev["text_sha256"] is not None:
            change.drop_text = True
        changes.append(change)
    if need_text and precomputed is not None and precomputed.texts is not None:
        rows = precomputed.text_rows
        for change, _ in need_text:
            if change.row["id"] in rows:
                change.vectors["text"] = precomputed.texts[rows[change.row["id"]]]
        need_text = [(c, t) for c, t in need_text if "text" not in c.vectors]
    if need_text:
        tv = encode_texts(net, tokenizer, [t for _, t in need_text], progress=progress)
        for (change, _), v in zip(need_text, tv):
            change.vectors["text"] = v
    return report, changes, next_fid, failed_fids


def _locked_state(out: Path) -> State:
    state = load_state(out)
    if state is None:
        raise IndexNotFoundError(f"{out} holds no built index: run `mmsearch index CATALOG --out {out}`")
    return state


def remove_items(index: str | Path, ids: Sequence[str], lock_timeout: float = 0.0) -> BuildReport:
    """Remove items by id. Every id must exist; otherwise nothing is removed and the error names them."""
    out = Path(index)
    t0 = time.perf_counter()
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            fids = st.fids_of(list(ids))
            next_fid = st.next_fid()
        missing = [i for i in ids if i not in fids]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MMSearchError(f"no item with id {shown} in {out}; nothing was removed")
        manifest = {k: v for k, v in state.manifest.items() if not k.startswith("_")}
        dims = {name: int(meta["dim"]) for name, meta in state.manifest["channels"].items()}
        dims.setdefault("text", int(state.manifest["dim"]))
        snap = commit(out, state, manifest, [], list(fids.values()), _cfg_for(None, state), dims,
                      next_fid=next_fid)
    return BuildReport(out=out, snapshot=snap, indexed=read_manifest(snap)["count"], removed=len(fids),
                       seconds=time.perf_counter() - t0)


def upsert_items(index: str | Path, items: Iterable[dict[str, Any]], device: str = "auto", batch_size: int = 32,
                 lock_timeout: float = 0.0, progress: bool = False) -> BuildReport:
    """Add or update items by id with the index's own model.

    Each item is ``{"id": ..., "image": path, "title": ..., "text": ..., "metadata": {...}}``; ``image``
    is required for a new id and optional for an existing one (then only title/text/metadata change).
    A later ``mmsearch index CATALOG`` on this index removes items that are not files of the catalog.
    """
    out = Path(index)
    t0 = time.perf_counter()
    given = list(items)
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            previous = st.all_rows()
        wanted, hashes = [], {}
        for n, spec in enumerate(given, 1):
            if not isinstance(spec, dict) or not isinstance(spec.get("id"), str) or not spec["id"]:
                raise MMSearchError(f"item {n}: needs a non-empty string \"id\"")
            prev = previous.get(spec["id"])
            image = spec.get("image")
            if image is None and prev is None:
                raise MMSearchError(f"item {spec['id']!r} is new and needs an \"image\" path")
            path = str(Path(image).resolve()) if image is not None else prev["path"]
            if image is None:
                hashes[spec["id"]] = prev["image_sha256"]
            elif not Path(path).is_file():
                raise MMSearchError(f"item {spec['id']!r}: image {image} does not exist")
            meta = spec.get("metadata", prev["metadata"] if prev else {})
            if not isinstance(meta, dict):
                raise MMSearchError(f"item {spec['id']!r}: \"metadata\" must be an object")
            wanted.append(CatalogItem(id=spec["id"], path=path,
                                      title=str(spec.get("title", prev["title"] if prev else "") or ""),
                                      text=str(spec.get("text", prev["text"] if prev else "") or ""), metadata=meta))
            why = problem(wanted[-1].id, path, wanted[-1].title, wanted[-1].text, meta)
            if why is not None:
                raise MMSearchError(f"item {display_name(spec['id'])!r}: {why}; nothing was changed")
        net, preprocess, tokenizer, ref, _ = _model_for(state, None, device)
        report, changes, next_fid, _ = _diff_and_encode(wanted, previous, net, preprocess, tokenizer, state,
                                                        batch_size, 0, progress, image_hashes=hashes)
        if report.skipped:
            bad = report.skipped[0]
            raise MMSearchError(f"item {bad['id']!r}: {bad['reason']}; nothing was changed")
        manifest = {k: v for k, v in state.manifest.items() if not k.startswith("_")}
        snap = commit(out, state, manifest, changes, [], _cfg_for(None, state), _channel_dims(net),
                      next_fid=next_fid) if changes else state.snapshot
    report.out, report.snapshot, report.seconds = out, snap, time.perf_counter() - t0
    report.indexed = read_manifest(snap)["count"]
    return report


def reindex(index: str | Path, cfg: IndexCfg, lock_timeout: float = 0.0) -> Path:
    """Rebuild the FAISS indexes with another type or budget from the stored embeddings (no encoding)."""
    out = Path(index)
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        for ch in state.channels.values():
            ch.spec = None  # force a fresh build
        manifest = {k: v for k, v in state.manifest.items() if not k.startswith("_")}
        dims = {name: int(meta["dim"]) for name, meta in state.manifest["channels"].items()}
        return commit(out, state, manifest, [], [], cfg, dims)
