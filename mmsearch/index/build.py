"""Public index writes: build a folder into an index or bring it up to date, upsert, remove, re-index.

Every write runs the same phases under the writer lock (:func:`mmsearch.index.snapshot.writer_lock`)::

    open_update   the live snapshot, the model, the indexed rows
    plan_update   what is new, changed, metadata-only, gone (mmsearch/index/plan.py)
    encode_plan   images and texts the plan names -> Embeddings (here in-process; a torchrun job runs
                  the same plan on every rank instead, mmsearch/dist/runner.py)
    commit        a new snapshot, published atomically (mmsearch/index/writer.py)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..catalog.exclude import Excluder
from ..catalog.exclude import normalise as normalise_excludes
from ..catalog.scan import CatalogItem, scan_catalog
from ..catalog.storable import display_name, problem
from ..encode.config import EncodeCfg
from ..errors import CatalogError, IndexIncompatibleError, IndexNotFoundError, MMSearchError
from ..models.registry import list_models
from .options import IndexCfg
from .modelref import ModelHandle, StaleRecord
from .plan import BuildReport, Embeddings, UpdatePlan, hash_items, next_free_fid, plan_update, resolve
from .statcache import StatCache
from .snapshot import State, load_state, read_manifest, writer_lock
from .store import ItemStore
from .writer import base_manifest, cfg_for, channel_dims, commit

log = logging.getLogger(__name__)

ENCODE_DIR = ".encoding"  # <out>/.encoding: embedding chunks of the build in progress


@dataclass
class UpdateContext:
    """What an update starts from, read under the writer lock."""

    state: State | None  # the live snapshot (None: build from scratch)
    model: Any  # DualEncoder, or a ModelHandle that loads it only when something must be encoded
    preprocess: Any
    tokenizer: Any
    ref: str  # the model as the manifest names it
    checkpoint: Path | None  # a checkpoint file to copy into the snapshot
    previous: dict[str, dict]  # id -> the live snapshot's row
    next_fid: int


def open_update(out: Path, model_ref: str | Path, device: str, rebuild: bool, lazy: bool = False) -> UpdateContext:
    """The live snapshot of ``out`` (unless ``rebuild``, or it was built with another model) and the model.

    ``lazy``: ``model`` is a :class:`ModelHandle` (fingerprint and widths from records, nothing loaded);
    the caller loads it if the plan has something to encode."""
    state = None if rebuild else _try_state(out)
    handle, ref, ckpt = _handle_for(state, model_ref, device)
    model, preprocess, tokenizer = (handle, None, None) if lazy else handle.load(replan=False)
    if state is not None and state.manifest["model"]["fingerprint"] != model.fingerprint():
        log.info("index %s was built with another model; re-encoding everything", out)
        state = None
    store = ItemStore.open(state.snapshot / "items.sqlite") if state else None
    previous = store.all_rows() if store else {}
    if store:
        store.close()
    return UpdateContext(state=state, model=model, preprocess=preprocess, tokenizer=tokenizer, ref=ref,
                         checkpoint=ckpt, previous=previous, next_fid=next_free_fid(previous, state))


def encode_update(plan: UpdatePlan, ctx: UpdateContext, batch_size: int | None, num_workers: int | None,
                  progress: bool, cfg: EncodeCfg | None = None, chunks: Path | None = None) -> Embeddings:
    """:func:`encode_plan` for a lazy context: nothing to encode loads nothing; otherwise the model is
    loaded (:class:`StaleRecord` when its recorded fingerprint was wrong: plan again)."""
    need = tuple(t for t, todo in (("image", plan.images), ("text", plan.texts({}))) if todo)
    if not need:
        return Embeddings()
    model = ctx.model
    plain = cfg is None or (cfg.pipeline == "fast" and not cfg.compile and cfg.decode in ("auto", "pil"))
    if isinstance(model, ModelHandle) and not model.is_loaded and plain:
        from ..encode import lean  # the model's ONNX graphs, no torch: opens only the towers the plan needs

        towers = lean.open_towers(model.fingerprint(), model.device, need, cfg.runtime if cfg else None)
        if towers is not None:
            log.info("encoding with the %s ONNX graphs (%s) of model %s", towers.source, "+".join(need),
                     model.fingerprint())
            return encode_plan_lean(plan, towers, model.cfg, batch_size or 32, num_workers, progress)
    if isinstance(model, ModelHandle):
        model, ctx.preprocess, ctx.tokenizer = model.load()
    return encode_plan(plan, model, ctx.preprocess, ctx.tokenizer, batch_size, num_workers, progress, cfg=cfg,
                       chunks=chunks)


def encode_plan(plan: UpdatePlan, model, preprocess, tokenizer, batch_size: int | None, num_workers: int | None,
                progress: bool, cfg: EncodeCfg | None = None, chunks: Path | None = None,
                desc: str = "encoding images", text_progress: bool | None = None) -> Embeddings:
    """Encode the images and texts ``plan`` names, in this process.

    ``chunks``: a folder for the image embeddings' chunks (bounded memory while encoding); None keeps
    them in memory. ``text_progress``: show a bar for texts too (default: ``progress``).
    """
    todo = plan.images
    emb = Embeddings()
    if todo:
        out = encode_image_files(model, preprocess, [it.path for it in todo], batch_size=batch_size,
                                 num_workers=num_workers, progress=progress, desc=desc, cfg=cfg, shards=chunks)
        for r, pos in enumerate(out.ok):
            emb.images[todo[pos].id] = {name: vecs[r] for name, vecs in out.channels.items()}
        emb.failed.update((todo[pos].id, reason) for pos, reason in out.failed)
    texts = plan.texts(emb.failed)  # texts are cheap next to images: (re-)encode where the text changed
    if texts:
        vecs = encode_texts(model, tokenizer, [t for _, t in texts],
                            progress=progress if text_progress is None else text_progress)
        emb.texts.update((iid, v) for (iid, _), v in zip(texts, vecs))
    return emb


def encode_plan_lean(plan: UpdatePlan, towers: Any, cfg: Any, batch_size: int, num_workers: int | None,
                     progress: bool) -> Embeddings:
    """:func:`encode_plan` with onnxruntime graphs (``encode/lean.py``) instead of the torch model."""
    from ..encode import lean

    todo = plan.images
    emb = Embeddings()
    if todo:
        out = lean.encode_images(towers, cfg.image, [it.path for it in todo], batch_size, num_workers, progress)
        for r, pos in enumerate(out.ok):
            emb.images[todo[pos].id] = {name: vecs[r] for name, vecs in out.channels.items()}
        emb.failed.update((todo[pos].id, reason) for pos, reason in out.failed)
    texts = plan.texts(emb.failed)
    if texts:
        vecs = lean.encode_texts(towers, [t for _, t in texts])
        emb.texts.update((iid, v) for (iid, _), v in zip(texts, vecs))
    return emb


def encode_image_files(*args: Any, **kw: Any) -> Any:
    """encode.pipeline.encode_image_files, imported (with torch) only when there is something to encode."""
    from ..encode import pipeline

    return pipeline.encode_image_files(*args, **kw)


def encode_texts(*args: Any, **kw: Any) -> Any:
    from ..encode import pipeline

    return pipeline.encode_texts(*args, **kw)


def commit_update(out: Path, catalog: str | Path, n_items: int, ctx: UpdateContext, plan: UpdatePlan,
                  emb: Embeddings, index: IndexCfg | None, batch_size: int, t0: float,
                  distributed: dict[str, Any] | None = None, adder=None,
                  skipped: list[dict[str, str]] | None = None,
                  exclude: list[str] | None = None) -> tuple[Path, BuildReport]:
    """Resolve the plan against its embeddings and write the new snapshot (caller holds the lock).

    ``distributed``: recorded as the manifest's ``build.distributed``; ``adder``: see
    :func:`mmsearch.index.writer.commit`; ``skipped``: what the catalog scan left out, reported first;
    ``exclude``: the --exclude patterns the scan used, recorded in the manifest (None: keep the live ones).
    -> (the live snapshot, the report)
    """
    state = ctx.state
    exclude = live_excludes(state) if exclude is None else list(exclude)
    report, changes, removed, next_fid = resolve(plan, emb)
    report.exclude = exclude
    report.skipped = list(skipped or []) + report.skipped
    if state is None and report.skipped and report.encoded == 0:
        reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in report.skipped[:5])
        raise CatalogError(f"none of the {n_items} images in {catalog} could be read ({reasons})")
    cfg = cfg_for(index, state)
    report.seconds = time.perf_counter() - t0
    nothing = (state is not None and not changes and not removed
               and state.manifest.get("index_cfg") == cfg.to_dict()
               and state.manifest.get("skipped") == report.skipped  # skipped files are remembered (with hashes)
               and live_excludes(state) == exclude)
    if nothing:
        return state.snapshot, report  # type: ignore[union-attr]
    manifest = base_manifest(ctx.model, ctx.ref, str(Path(catalog).resolve()), state)
    manifest["skipped"] = report.skipped
    if exclude:
        manifest["exclude"] = exclude
    manifest["api_items"] = api_items_after(state, plan)
    manifest["build"] = {"seconds": round(report.seconds, 3), "encoded": report.encoded,
                         "images_per_s": round(report.images_per_s, 2) or None,
                         "device": _device_of(ctx.model), "batch_size": batch_size,
                         "added": report.added, "updated": report.updated,
                         "metadata_updated": report.metadata_updated, "removed": report.removed,
                         "unchanged": report.unchanged}
    if distributed:
        manifest["build"]["distributed"] = distributed
    snap = commit(out, state, manifest, changes, removed, cfg, channel_dims(ctx.model), checkpoint=ctx.checkpoint,
                  next_fid=next_fid, adder=adder)
    return snap, report


def live_excludes(state: State | None) -> list[str]:
    """The --exclude patterns the live snapshot's manifest remembers."""
    return list(state.manifest.get("exclude", [])) if state is not None else []


def exclude_patterns(out: Path, given: Iterable[str] | None, reset: bool = False) -> list[str]:
    """The patterns an update of ``out`` scans with: those its manifest remembers (unless ``reset``) and
    then ``given`` (checked: a bad pattern raises CatalogError before anything is read)."""
    remembered: list[str] = []
    if not reset:
        with contextlib.suppress(MMSearchError):
            remembered = list(read_manifest(out).get("exclude", []))
    return normalise_excludes([*remembered, *(given or [])])


def api_items_after(state: State | None, plan: UpdatePlan) -> list[str]:
    """Ids added through the API (upsert_items) that a catalog sync keeps: the live manifest's, less those
    the catalog now has itself (the catalog owns them from then on)."""
    old = state.manifest.get("api_items", []) if state is not None else []
    wanted = {it.id for it in plan.items}
    return [i for i in old if i not in wanted and i in plan.previous]


def items_from_dicts(given: Iterable[dict[str, Any]], previous: dict[str, dict] | None = None,
                     hashes: dict[str, str] | None = None) -> list[CatalogItem]:
    """``{"id", "image", "title", "text", "metadata"}`` dicts -> CatalogItems (checked; image paths resolved).

    With ``previous`` (id -> live row) an existing id may leave out ``image`` (its hash goes to ``hashes``)
    and the fields it does not give keep their values."""
    previous = previous or {}
    wanted = []
    for n, spec in enumerate(given, 1):
        if not isinstance(spec, dict) or not isinstance(spec.get("id"), str) or not spec["id"]:
            raise MMSearchError(f"item {n}: needs a non-empty string \"id\"")
        prev = previous.get(spec["id"])
        image = spec.get("image")
        if image is None and prev is None:
            raise MMSearchError(f"item {spec['id']!r} is new and needs an \"image\" path")
        path = str(Path(image).resolve()) if image is not None else prev["path"]
        if image is None and hashes is not None:
            hashes[spec["id"]] = prev["image_sha256"]
        elif image is not None and not Path(path).is_file():
            raise MMSearchError(f"item {spec['id']!r}: image {image} does not exist")
        meta = spec.get("metadata", prev["metadata"] if prev else {})
        if not isinstance(meta, dict):
            raise MMSearchError(f"item {spec['id']!r}: \"metadata\" must be an object")
        wanted.append(CatalogItem(id=spec["id"], path=path,
                                  title=str(spec.get("title", prev["title"] if prev else "") or ""),
                                  text=str(spec.get("text", prev["text"] if prev else "") or ""), metadata=meta))
    return wanted


def finish_report(report: BuildReport, out: Path, snap: Path) -> BuildReport:
    """Fill in what the published snapshot holds, and log the summary."""
    report.out, report.snapshot = out, snap
    final = read_manifest(snap)
    report.indexed = final["count"]
    report.with_text = final["channels"].get("text", {}).get("count", 0)
    if report.indexed == 0:
        log.warning("index %s is empty: none of the catalog's images could be read", out)
    log.info("indexed %d items (+%d ~%d m%d -%d =%d, %d skipped) into %s", report.indexed, report.added,
             report.updated, report.metadata_updated, report.removed, report.unchanged, len(report.skipped), snap)
    return report


# --------------------------------------------------------------------------------------- public writes
def build_index(catalog: str | Path | None = None, out: str | Path = "index", model: str | Path | None = None,
                device: str = "auto", batch_size: int = 32, num_workers: int | None = None,
                progress: bool = True, encode: EncodeCfg | None = None, index: IndexCfg | None = None,
                rebuild: bool = False, lock_timeout: float = 0.0,
                items: Iterable[dict[str, Any]] | None = None, exclude: Sequence[str] | None = None,
                reset_exclude: bool = False) -> BuildReport:
    """Index every image of ``catalog`` into ``out``, or bring an existing index there up to date.

    On an existing index (same model) only new and changed files (by content hash) are encoded, files
    gone from the folder are removed, and metadata-only changes re-encode at most the item's text.

    Args:
        catalog: folder of images (see README "Catalog format"); or None with ``items``.
        out: index folder; the new state replaces the old one atomically when complete.
        model: a built-in model name (``default``, ``tiny`` ...) or a checkpoint path; None: the existing
            index's own model, else ``default``. A different model than the existing index's re-encodes
            everything.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: images per forward pass.
        num_workers: image-decoding worker processes (default: sized to the machine and device).
        encode: further image-pipeline options (:class:`mmsearch.encode.pipeline.EncodeCfg`: decoder,
            torch.compile ...); ``batch_size`` and ``num_workers`` above override its fields.
        index: index type, memory budget and recall target (:class:`IndexCfg`); default: the existing
            index's, else ``auto``. A new type is built from the stored embeddings, without re-encoding.
        rebuild: ignore the existing index and encode everything again.
        lock_timeout: seconds to wait for another writer of ``out`` before failing.
        items: instead of a folder, the items themselves: ``{"id", "image": path, "title", "text",
            "metadata"}`` dicts (the whole set, as a catalog would be: ids not given are removed).
        exclude: glob patterns of files and folders never to index, relative to the catalog root
            (``["private/**", "*.tmp.jpg"]``; see mmsearch/catalog/exclude.py). They are remembered in the
            manifest and added to the remembered ones, so a later update without them honours them too;
            indexed items they match are removed (the report's ``excluded``).
        reset_exclude: forget the remembered patterns first (only ``exclude`` applies).

    Files that could not be read are recorded in the manifest with their content hash and are not
    decoded again until they change. Items added with :func:`upsert_items` stay through a sync (the
    manifest's ``api_items``) until removed with :func:`remove_items` (or ``rebuild``).

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
    if (catalog is None) == (items is None):
        raise CatalogError("give a catalog folder or items, not both" if items is not None else
                           "give a catalog folder or items to index")
    if model is None:  # keep the index's own model, as the index type is kept
        model = index_model(out)
    scan_skipped: list[dict[str, str]] = []  # files, shards and rows that cannot be read or stored
    patterns = exclude_patterns(out, exclude, reset_exclude)
    unwanted = Excluder(patterns)
    if items is not None:
        wanted = [it for it in items_from_dicts(items) if not unwanted(it.id)]
        if not wanted:
            raise CatalogError("no items given")
        catalog = Path(os.path.commonpath([str(Path(it.path).parent) for it in wanted]))  # thumbnails served below
    else:  # raises before anything is written
        wanted = scan_catalog(catalog, exclude=[out], skipped=scan_skipped, exclude_globs=patterns)
    t0 = time.perf_counter()
    with writer_lock(out, lock_timeout):
        stats = StatCache.open(out)
        hashes = stats.hash_items(wanted)  # size + mtime unchanged since the last run: the recorded hash
        for attempt in range(2):
            ctx = open_update(out, model, device, rebuild, lazy=True)
            live = ctx.state.manifest if ctx.state is not None else {}
            plan = plan_update(wanted, ctx.previous, hashes, ctx.next_fid, skipped=live.get("skipped"),
                               keep=live.get("api_items", []))
            work = out / ENCODE_DIR  # float16 embedding chunks of this build (mmsearch/encode/chunks.py)
            shutil.rmtree(work, ignore_errors=True)  # left by a killed build: we hold the lock, it is stale
            try:
                emb = encode_update(plan, ctx, batch_size, num_workers, progress, cfg=encode, chunks=work)
                break
            except StaleRecord:
                if attempt:
                    raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        snap, report = commit_update(out, catalog, len(wanted), ctx, plan, emb, index, batch_size, t0,
                                     skipped=scan_skipped, exclude=patterns)
        keep = set(live.get("api_items", []))
        report.excluded = sum(1 for iid in ctx.previous if iid not in keep and unwanted(iid))
        stats.save(wanted, hashes)
    return finish_report(report, out, snap)


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
        if manifest.get("api_items"):  # removed on purpose: no longer kept through syncs
            manifest["api_items"] = [i for i in manifest["api_items"] if i not in fids]
        dims = {name: int(meta["dim"]) for name, meta in state.manifest["channels"].items()}
        dims.setdefault("text", int(state.manifest["dim"]))
        snap = commit(out, state, manifest, [], list(fids.values()), cfg_for(None, state), dims,
                      next_fid=next_fid)
    return BuildReport(out=out, snapshot=snap, indexed=read_manifest(snap)["count"], removed=len(fids),
                       seconds=time.perf_counter() - t0)


def upsert_items(index: str | Path, items: Iterable[dict[str, Any]], device: str = "auto", batch_size: int = 32,
                 lock_timeout: float = 0.0, progress: bool = False) -> BuildReport:
    """Add or update items by id with the index's own model.

    Each item is ``{"id": ..., "image": path, "title": ..., "text": ..., "metadata": {...}}``; ``image``
    is required for a new id and optional for an existing one (then only title/text/metadata change).
    New ids are recorded in the manifest (``api_items``): a later ``mmsearch index CATALOG`` keeps them,
    until :func:`remove_items` removes them (or the index is rebuilt with ``rebuild=True``).
    """
    out = Path(index)
    t0 = time.perf_counter()
    given = list(items)
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            previous = st.all_rows()
        hashes: dict[str, str] = {}
        wanted = items_from_dicts(given, previous, hashes)
        for it in wanted:
            why = problem(it.id, it.path, it.title, it.text, it.metadata)
            if why is not None:
                raise MMSearchError(f"item {display_name(it.id)!r}: {why}; nothing was changed")
        handle, ref, _ = _handle_for(state, None, device)
        plan = plan_update(wanted, previous, hash_items(wanted, known=hashes), next_free_fid(previous, state),
                           complete=False)
        if handle.fingerprint() != state.manifest["model"]["fingerprint"]:  # never mix two models' embeddings
            raise IndexIncompatibleError(f"index {out} was built with another version of model {ref!r}; rebuild "
                                         f"it (mmsearch index CATALOG -i {out} --rebuild) before adding items")
        ctx = UpdateContext(state=state, model=handle, preprocess=None, tokenizer=None, ref=ref, checkpoint=None,
                            previous=previous, next_fid=plan.next_fid)
        try:  # the shipped ONNX graphs when the model has them (no torch), else the torch model
            emb = encode_update(plan, ctx, batch_size, 0, progress)
        except StaleRecord:  # the recorded fingerprint was wrong: the model is loaded now, encode with it
            if handle.fingerprint() != state.manifest["model"]["fingerprint"]:
                raise IndexIncompatibleError(f"index {out} was built with another version of model {ref!r}; "
                                             f"rebuild it before adding items") from None
            emb = encode_plan(plan, *handle.loaded, batch_size, 0, progress)
        model = handle
        report, changes, _, next_fid = resolve(plan, emb)
        if report.skipped:
            bad = report.skipped[0]
            raise MMSearchError(f"item {bad['id']!r}: {bad['reason']}; nothing was changed")
        manifest = {k: v for k, v in state.manifest.items() if not k.startswith("_")}
        added = [it.id for it in wanted if it.id not in previous]  # a catalog sync keeps these (api_items)
        manifest["api_items"] = sorted(set(manifest.get("api_items", [])) | set(added))
        snap = commit(out, state, manifest, changes, [], cfg_for(None, state), channel_dims(model),
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


def _handle_for(state: State | None, model_ref: str | Path | None, device: str) -> tuple[ModelHandle, str, Path | None]:
    """(model handle, manifest model ref, checkpoint to copy) for a new build or an update."""
    if model_ref is None:
        if state is None:
            raise MMSearchError("no model given and no existing index to take it from")
        ref = state.manifest["model"]["ref"]
        model_ref = str(state.snapshot / ref) if ref not in list_models() else ref
    is_checkpoint = str(model_ref) not in list_models()
    ref = "model.pt" if is_checkpoint else str(model_ref)
    ckpt = Path(model_ref) if is_checkpoint and not (state and Path(model_ref).parent == state.snapshot) else None
    return ModelHandle(model_ref, device), ref, ckpt


def _model_for(state: State | None, model_ref: str | Path | None, device: str):
    """(model, preprocess, tokenizer, manifest model ref, checkpoint to copy) for a new build or an update."""
    handle, ref, ckpt = _handle_for(state, model_ref, device)
    model, preprocess, tokenizer = handle.load(replan=False)
    return model, preprocess, tokenizer, ref, ckpt


def _device_of(model: Any) -> str:
    if isinstance(model, ModelHandle):
        return model.device_name()
    return str(next(model.parameters()).device)
