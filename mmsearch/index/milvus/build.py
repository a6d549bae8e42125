"""Index builds into Milvus: the folder backend's plan -> encode -> resolve, committed by MilvusWriter.

:func:`build_milvus` is what ``build_index(..., out="milvus-lite:shop.db")`` runs: the update is planned
against the content hashes stored in Milvus (a stateless process needs nothing else), only new and
changed images are encoded, and the rows are written whole (writer.py). :func:`remove_milvus` removes
items by id; :func:`copy_folder` copies a folder index into Milvus without re-encoding
(``mmsearch index --from-index FOLDER -i milvus://...``).

Writers: a Milvus Lite file is guarded by a lock file beside it (``FILE.db.lock/``), as a folder index
is; a server has no lock to take here, so run one writer per collection at a time (README).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ...catalog.exclude import normalise as normalise_excludes
from ...errors import IndexIncompatibleError, IndexNotFoundError, MMSearchError
from ...models.registry import list_models
from ..modelref import ModelHandle, StaleRecord
from ..options import BuildOptions
from ..plan import BuildReport, hash_items, plan_update, resolve
from ..scanning import scan_update
from ..snapshot import load_state, writer_lock
from ..store import ItemStore
from ..update import UpdateContext, encode_update, nothing_readable, unknown_ids, update_manifest
from ..writer import Change, channel_dims
from .location import MilvusLocation, parse_location
from .writer import MilvusWriter

log = logging.getLogger(__name__)


@contextlib.contextmanager
def milvus_lock(loc: MilvusLocation, timeout: float = 0.0) -> Iterator[None]:
    """One writer at a time: a lock folder beside a Milvus Lite file; nothing for a server (see module doc)."""
    if not loc.lite:
        yield
        return
    with writer_lock(Path(loc.uri + ".lock"), timeout):
        yield


def model_ref_for(model: str | Path) -> str:
    """The model as a Milvus index's manifest names it: a built-in name, or the checkpoint's absolute path
    (a Milvus index has no folder to keep a copy in: keep the checkpoint where it is)."""
    if str(model) in list_models():
        return str(model)
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise MMSearchError(f"model {model} is neither a built-in model ({', '.join(list_models())}) nor a file")
    return str(path)


def finish_report(report: BuildReport, loc: MilvusLocation, committed: dict[str, Any] | None) -> BuildReport:
    report.out = report.snapshot = loc.text  # type: ignore[assignment]
    report.indexed = int((committed or {}).get("count", 0))
    report.with_text = int((committed or {}).get("channels", {}).get("text", {}).get("count", 0))
    log.info("indexed %d items (+%d ~%d m%d -%d =%d, %d skipped) into %s", report.indexed, report.added,
             report.updated, report.metadata_updated, report.removed, report.unchanged, len(report.skipped), loc)
    return report


def update_input(writer: MilvusWriter, opts: BuildOptions, catalog: str | Path | None,
                 items: Iterable[dict[str, Any]] | None = None) -> tuple[Any, str | Path]:
    """(the scanned catalog less the --exclude patterns in force, the model to encode with: the given one,
    else the index's own, else ``default``) for an update of ``writer``'s index; raises before any write."""

    live = writer.manifest
    remembered = [] if opts.reset_exclude or live is None else list(live.get("exclude", []))
    patterns = normalise_excludes([*remembered, *(opts.exclude or [])])
    scanned = scan_update(Path(writer.loc.uri) if writer.loc.lite else Path("/"), patterns, catalog, items)
    model = opts.model if opts.model is not None else (live["model"]["ref"] if live else "default")
    return scanned, model


def adopt_model(writer: MilvusWriter, model: Any) -> dict[str, Any] | None:
    """The index's live manifest if ``model`` (a model or a handle) built it; otherwise the index is dropped
    (another model's vectors cannot mix) and None. Sets the writer's channel dimensions to the model's."""
    live = writer.manifest
    if live is not None and live["model"]["fingerprint"] != model.fingerprint():
        log.info("%s was built with another model; re-encoding everything", writer.loc)
        writer.drop()
        live = None
    writer.dims = channel_dims(model)
    if live is not None:
        writer.check_dims(writer.dims)
    return live


def build_milvus(catalog: str | Path | None, location: str, opts: BuildOptions,
                 items: Iterable[dict[str, Any]] | None = None) -> BuildReport:
    """Index ``catalog`` (or ``items``) into the Milvus index at ``location``, or bring it up to date."""
    loc = parse_location(location)
    with milvus_lock(loc, opts.lock_timeout):
        writer = MilvusWriter(loc, cfg=opts.index)
        if opts.rebuild:
            writer.drop()
        scanned, model = update_input(writer, opts, catalog, items)
        handle = ModelHandle(model, opts.device)
        live = adopt_model(writer, handle)
        previous = writer.previous()  # rows of an interrupted first build count too: the plan keeps them
        ctx = UpdateContext(state=None, model=handle, preprocess=None, tokenizer=None, ref=model_ref_for(model),
                            checkpoint=None, previous=previous, next_fid=writer.next_fid(previous))
        plan = plan_update(scanned.items, previous, hash_items(scanned.items), ctx.next_fid,
                           skipped=(live or {}).get("skipped"), keep=(live or {}).get("api_items", []))
        try:
            emb = encode_update(plan, ctx, opts)
        except StaleRecord:  # the model's recorded fingerprint was wrong: it is loaded now
            emb = encode_update(plan, ctx, opts)
        report, changes, removed, next_fid = resolve(plan, emb)
        report.exclude = scanned.patterns
        report.skipped = list(scanned.skipped) + report.skipped
        if live is None and report.skipped and report.encoded == 0 and not previous:
            raise nothing_readable(report, len(scanned.items), scanned.catalog)
        report.seconds = time.perf_counter() - scanned.started
        nothing = (live is not None and not changes and not removed and live.get("skipped") == report.skipped
                   and list(live.get("exclude", [])) == scanned.patterns and writer.meta.dirty() is None)
        committed = live
        if not nothing:
            manifest = update_manifest(handle, ctx.ref, str(scanned.catalog.resolve()), live, report, previous,
                                       (it.id for it in plan.items), opts.batch_size)
            committed = writer.apply(changes, removed, manifest, next_fid)
    return finish_report(report, loc, committed)


def remove_milvus(location: str, ids: Sequence[str], lock_timeout: float = 0.0) -> BuildReport:
    """Remove items by id from a Milvus index; every id must exist, else nothing is removed."""
    loc = parse_location(location)
    t0 = time.perf_counter()
    with milvus_lock(loc, lock_timeout):
        writer = MilvusWriter(loc)
        live = writer.manifest
        if live is None:
            raise IndexNotFoundError(f"no index at {loc}: build one with `mmsearch index CATALOG --out {loc}`")
        previous = writer.previous()
        missing = [i for i in ids if i not in previous]
        if missing:
            raise unknown_ids(missing, loc)
        manifest = {k: v for k, v in live.items() if not k.startswith("_")}
        gone = set(ids)
        if manifest.get("api_items"):
            manifest["api_items"] = [i for i in manifest["api_items"] if i not in gone]
        committed = writer.apply([], [previous[i]["fid"] for i in dict.fromkeys(ids)], manifest)
    report = BuildReport(out=Path(), snapshot=Path(), indexed=0, removed=len(set(ids)),
                         seconds=time.perf_counter() - t0)
    return finish_report(report, loc, committed)


def copy_folder(folder: str | Path, location: str, lock_timeout: float = 0.0) -> BuildReport:
    """Copy the folder index at ``folder`` into Milvus (``location``) with its stored embeddings: nothing is
    re-encoded. The Milvus index must be new or empty (``--rebuild`` drops it first)."""
    loc = parse_location(location)
    t0 = time.perf_counter()
    state = load_state(Path(folder))
    if state is None:
        raise IndexNotFoundError(f"{folder} holds no built index to copy")
    fm = state.manifest
    ref = fm["model"]["ref"]
    if ref not in list_models():
        ref = model_ref_for(state.snapshot / ref)
        log.warning("the index's model is a checkpoint: the Milvus index names %s; keep that file", ref)
    with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
        rows = st.all_rows()
        next_fid = st.next_fid()
    with milvus_lock(loc, lock_timeout):
        writer = MilvusWriter(loc, dims={n: int(ch["dim"]) for n, ch in fm["channels"].items()} | (
            {"text": int(fm["dim"])} if "text" not in fm["channels"] else {}))
        if writer.exists:
            raise IndexIncompatibleError(f"{loc} already holds an index; copy into a new one (or drop it first "
                                         f"with `mmsearch index --rebuild`)")
        by_fid = {r["fid"]: Change(row=r) for r in rows.values()}
        for name, ch in state.channels.items():
            for fid, vec in zip(ch.ids.tolist(), ch.vectors):
                if fid in by_fid:
                    by_fid[fid].vectors[name] = vec.astype("float32")
        manifest = {k: v for k, v in fm.items() if not k.startswith("_") and k not in ("channels", "count")}
        manifest["model"] = dict(fm["model"], ref=ref)
        committed = writer.apply(list(by_fid.values()), [], manifest, next_fid)
    report = BuildReport(out=Path(), snapshot=Path(), indexed=0, added=len(rows), seconds=time.perf_counter() - t0)
    return finish_report(report, loc, committed)
