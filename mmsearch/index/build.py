"""Public index writes: build a folder into an index or bring it up to date, upsert, remove, re-index.

Every write runs the same phases under the writer lock (:func:`mmsearch.index.snapshot.writer_lock`)::

    scan_update   the catalog folder (or items given in memory), less --exclude patterns (before the lock)
    open_update   the live snapshot, the model, the indexed rows (mmsearch/index/update.py)
    plan_update   what is new, changed, metadata-only, gone (mmsearch/index/plan.py)
    encode_update images and texts the plan names -> Embeddings (here in-process; a torchrun job runs
                  the same plan on every rank instead, mmsearch/dist/runner.py)
    commit_update a new snapshot, published atomically (mmsearch/index/writer.py)

How a build runs (model, device, batches, index type, lock timeout ...) is one :class:`BuildOptions`
(mmsearch/index/options.py); ``build_index`` also takes its fields as keyword arguments.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..catalog.exclude import Excluder
from ..catalog.exclude import normalise as normalise_excludes
from ..catalog.scan import CatalogItem
from ..catalog.storable import display_name, problem
from ..errors import IndexIncompatibleError, IndexNotFoundError, MMSearchError
from .backend import is_milvus, location_text
from .modelref import StaleRecord, model_path
from .ondisk import Adder
from .options import BuildKw, BuildOptions, IndexCfg
from .plan import BuildReport, Embeddings, UpdatePlan, hash_items, next_free_fid, plan_update, resolve
from .scanning import Scanned, items_from_dicts, scan_update
from .snapshot import State, load_state, read_manifest, writer_lock
from .statcache import StatCache
from .store import ItemStore
from .update import (
    UpdateContext,
    encode_plan,
    encode_update,
    handle_for,
    nothing_readable,
    open_update,
    unknown_ids,
    update_manifest,
)
from .writer import cfg_for, channel_dims, commit

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

ENCODE_DIR = ".encoding"  # <out>/.encoding: embedding chunks of the build in progress


def commit_update(out: Path, ctx: UpdateContext, plan: UpdatePlan, emb: Embeddings, *, scanned: Scanned,
                  opts: BuildOptions, distributed: dict[str, Any] | None = None,
                  adder: Adder | None = None) -> tuple[Path, BuildReport]:
    """Resolve the plan against its embeddings and write the new snapshot (caller holds the lock).

    ``scanned``: what the catalog scan left out is reported first, and its --exclude patterns are
    recorded in the manifest; ``opts``: the index config (None: the live one) and the batch size the
    manifest records; ``distributed``: recorded as the manifest's ``build.distributed``; ``adder``: see
    :func:`mmsearch.index.writer.commit`. -> (the live snapshot, the report)
    """
    state = ctx.state
    exclude = list(scanned.patterns)
    report, changes, removed, next_fid = resolve(plan, emb)
    report.exclude = exclude
    report.skipped = list(scanned.skipped) + report.skipped
    if state is None and report.skipped and report.encoded == 0:
        raise nothing_readable(report, len(scanned.items), scanned.catalog)
    cfg = cfg_for(opts.index, state)
    report.seconds = time.perf_counter() - scanned.started
    nothing = (state is not None and not changes and not removed
               and state.manifest.get("index_cfg") == cfg.to_dict()
               and state.manifest.get("skipped") == report.skipped  # skipped files are remembered (with hashes)
               and live_excludes(state) == exclude)
    if nothing:
        return state.snapshot, report  # type: ignore[union-attr]
    manifest = update_manifest(ctx.model, ctx.ref, str(scanned.catalog.resolve()), state.manifest if state else None,
                               report, plan.previous, (it.id for it in plan.items), opts.batch_size)
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
def build_index(catalog: str | Path | None = None, out: str | Path = "index", *, options: BuildOptions | None = None,
                items: Iterable[dict[str, Any]] | None = None, **overrides: Unpack[BuildKw]) -> BuildReport:
    """Index every image of ``catalog`` into ``out``, or bring an existing index there up to date.

    On an existing index (same model) only new and changed files (by content hash) are encoded, files
    gone from the folder are removed, and metadata-only changes re-encode at most the item's text.

    Args:
        catalog: folder of images (see README "Catalog format"); or None with ``items``.
        out: index folder; the new state replaces the old one atomically when complete.
        options: a :class:`BuildOptions` (model, device, batch_size, num_workers, progress, encode, index,
            rebuild, lock_timeout, exclude, reset_exclude; each documented there). Default: ``BuildOptions()``.
        items: instead of a folder, the items themselves: ``{"id", "image": path, "title", "text",
            "metadata"}`` dicts (the whole set, as a catalog would be: ids not given are removed).
        **overrides: any field of :class:`BuildOptions` by name, over ``options``: ``model="tiny"``,
            ``device="cpu"``, ``index=IndexCfg(index_type="hnsw")``, ``exclude=["private/**"]`` ...

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
    opts = (options or BuildOptions()).replace(**overrides)
    if is_milvus(out):  # a Milvus collection (index/milvus/build.py): the same plan, written as rows
        from .milvus.build import build_milvus

        return build_milvus(catalog, location_text(out), opts, items)
    out = Path(out)
    model = opts.model if opts.model is not None else index_model(out)  # keep the index's own model, as its type
    scanned = scan_update(out, exclude_patterns(out, opts.exclude, opts.reset_exclude), catalog, items)
    with writer_lock(out, opts.lock_timeout):
        stats = StatCache.open(out)
        hashes = stats.hash_items(scanned.items)  # size + mtime unchanged since the last run: the recorded hash
        ctx, plan, emb = _plan_and_encode(out, scanned.items, hashes, model, opts)
        snap, report = commit_update(out, ctx, plan, emb, scanned=scanned, opts=opts)
        keep = set(ctx.state.manifest.get("api_items", [])) if ctx.state is not None else set()
        unwanted = Excluder(scanned.patterns)
        report.excluded = sum(1 for iid in ctx.previous if iid not in keep and unwanted(iid))
        stats.save(scanned.items, hashes)
    return finish_report(report, out, snap)


def _plan_and_encode(out: Path, wanted: list[CatalogItem], hashes: dict[str, str], model: str | Path,
                     opts: BuildOptions) -> tuple[UpdateContext, UpdatePlan, Embeddings]:
    """open -> plan -> encode under the writer lock; planned again once if the model's recorded
    fingerprint proved wrong when it was loaded (:class:`StaleRecord`)."""
    for attempt in range(2):
        ctx = open_update(out, model, opts.device, opts.rebuild, lazy=True)
        live = ctx.state.manifest if ctx.state is not None else {}
        plan = plan_update(wanted, ctx.previous, hashes, ctx.next_fid, skipped=live.get("skipped"),
                           keep=live.get("api_items", []))
        work = out / ENCODE_DIR  # float16 embedding chunks of this build (mmsearch/encode/chunks.py)
        shutil.rmtree(work, ignore_errors=True)  # left by a killed build: we hold the lock, it is stale
        try:
            return ctx, plan, encode_update(plan, ctx, opts, chunks=work)
        except StaleRecord:
            if attempt:
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise AssertionError("unreachable")


def index_model(out: str | Path) -> str:
    """The model the index at ``out`` was built with (a name, or its snapshot's model.pt), else ``default``."""
    if is_milvus(out):
        return "default"  # a Milvus update takes the model its manifest names (index/milvus/build.py)
    try:
        m = read_manifest(out)
    except MMSearchError:
        return "default"
    ref = m["model"]["ref"]
    return model_path(ref, Path(m["_snapshot"]))


def _locked_state(out: Path) -> State:
    state = load_state(out)
    if state is None:
        raise IndexNotFoundError(f"{out} holds no built index: run `mmsearch index CATALOG --out {out}`")
    return state


def remove_items(index: str | Path, ids: Sequence[str], lock_timeout: float = 0.0) -> BuildReport:
    """Remove items by id. Every id must exist; otherwise nothing is removed and the error names them."""
    if is_milvus(index):
        from .milvus.build import remove_milvus

        return remove_milvus(location_text(index), ids, lock_timeout)
    out = Path(index)
    t0 = time.perf_counter()
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            fids = st.fids_of(list(ids))
            next_fid = st.next_fid()
        missing = [i for i in ids if i not in fids]
        if missing:
            raise unknown_ids(missing, out)
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
    if is_milvus(index):
        raise MMSearchError(f"adding single items to a Milvus index ({location_text(index)}) is not supported yet: "
                            f"index the catalog folder with `mmsearch index CATALOG -i {location_text(index)}`")
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
        handle, ref, _ = handle_for(state, None, device)
        plan = plan_update(wanted, previous, hash_items(wanted, known=hashes), next_free_fid(previous, state),
                           complete=False)
        if handle.fingerprint() != state.manifest["model"]["fingerprint"]:  # never mix two models' embeddings
            raise IndexIncompatibleError(f"index {out} was built with another version of model {ref!r}; rebuild "
                                         f"it (mmsearch index CATALOG -i {out} --rebuild) before adding items")
        ctx = UpdateContext(state=state, model=handle, preprocess=None, tokenizer=None, ref=ref, checkpoint=None,
                            previous=previous, next_fid=plan.next_fid)
        opts = BuildOptions(device=device, batch_size=batch_size, num_workers=0, progress=progress)
        try:  # the shipped ONNX graphs when the model has them (no torch), else the torch model
            emb = encode_update(plan, ctx, opts)
        except StaleRecord:  # the recorded fingerprint was wrong: the model is loaded now, encode with it
            if handle.fingerprint() != state.manifest["model"]["fingerprint"]:
                raise IndexIncompatibleError(f"index {out} was built with another version of model {ref!r}; "
                                             f"rebuild it before adding items") from None
            emb = encode_plan(plan, *handle.loaded, opts)
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
    if is_milvus(index):
        raise MMSearchError(f"{location_text(index)}: Milvus builds its own indexes; to change their type, rebuild "
                            f"(mmsearch index CATALOG -i {location_text(index)} --rebuild --index-type hnsw)")
    out = Path(index)
    with writer_lock(out, lock_timeout):
        state = _locked_state(out)
        for ch in state.channels.values():
            ch.spec = None  # force a fresh build
        manifest = {k: v for k, v in state.manifest.items() if not k.startswith("_")}
        dims = {name: int(meta["dim"]) for name, meta in state.manifest["channels"].items()}
        return commit(out, state, manifest, [], [], cfg, dims)
