"""The first phases of an index update, before its commit: open what the update starts from (the live
snapshot, the model, the indexed rows) and encode what its plan names, in this process.

``index/build.py`` runs them for a single-process write; ``dist/runner.py`` runs ``open_update`` on rank 0
and :func:`encode_plan` on every rank's shards. Encoding uses the model's shipped ONNX graphs when they
exist and the device is a CPU (no torch), else the torch model, which is loaded only then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import CatalogError, IndexIncompatibleError, MMSearchError
from ..models.registry import list_models
from .modelref import ModelHandle, model_path
from .options import BuildOptions
from .plan import BuildReport, Embeddings, UpdatePlan, next_free_fid
from .snapshot import State, load_state
from .store import ItemStore
from .writer import base_manifest

log = logging.getLogger(__name__)


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
    handle, ref, ckpt = handle_for(state, model_ref, device)
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


def _try_state(out: Path) -> State | None:
    try:
        return load_state(out)
    except IndexIncompatibleError as exc:
        log.warning("existing index at %s cannot be updated (%s); rebuilding it", out, exc)
        return None


def handle_for(state: State | None, model_ref: str | Path | None, device: str) -> tuple[ModelHandle, str, Path | None]:
    """(model handle, manifest model ref, checkpoint to copy) for a new build or an update."""
    if model_ref is None:
        if state is None:
            raise MMSearchError("no model given and no existing index to take it from")
        ref = state.manifest["model"]["ref"]
        model_ref = model_path(ref, state.snapshot)
    is_checkpoint = str(model_ref) not in list_models()
    ref = "model.pt" if is_checkpoint else str(model_ref)
    ckpt = Path(model_ref) if is_checkpoint and not (state and Path(model_ref).parent == state.snapshot) else None
    return ModelHandle(model_ref, device), ref, ckpt


def device_of(model: Any) -> str:
    """The device a model (or a handle) runs on, as the manifest's ``build.device`` records it."""
    if isinstance(model, ModelHandle):
        return model.device_name()
    return str(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------ committing
def api_items_after(live: dict[str, Any] | None, previous: dict[str, dict], wanted: Iterable[str]) -> list[str]:
    """Ids added through the API (upsert_items) that a catalog sync keeps: the live manifest's, less those
    the catalog (``wanted``) now has itself (the catalog owns them from then on) and those no longer indexed."""
    wanted = set(wanted)
    return [i for i in (live or {}).get("api_items", []) if i not in wanted and i in previous]


def update_manifest(model: Any, ref: str, catalog: str, live: dict[str, Any] | None, report: BuildReport,
                    previous: dict[str, dict], wanted: Iterable[str], batch_size: int) -> dict[str, Any]:
    """The manifest a catalog update commits, on either backend: the model, the live one's creation time,
    the skipped files, the --exclude patterns, the API items a sync keeps and the build's counts."""
    manifest = base_manifest(model, ref, catalog, None)
    if live is not None:
        manifest["created"] = live.get("created", manifest["created"])
    manifest["skipped"] = report.skipped
    if report.exclude:
        manifest["exclude"] = list(report.exclude)
    manifest["api_items"] = api_items_after(live, previous, wanted)
    manifest["build"] = {"seconds": round(report.seconds, 3), "encoded": report.encoded,
                         "images_per_s": round(report.images_per_s, 2) or None,
                         "device": device_of(model), "batch_size": batch_size,
                         "added": report.added, "updated": report.updated,
                         "metadata_updated": report.metadata_updated, "removed": report.removed,
                         "unchanged": report.unchanged}
    return manifest


def unknown_ids(missing: list[str], index: Any) -> MMSearchError:
    """The error of a removal naming ids the index does not have (the first five named)."""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return MMSearchError(f"no item with id {shown} in {index}; nothing was removed")


def nothing_readable(report: BuildReport, n_items: int, catalog: Any) -> CatalogError:
    """The error of a first build none of whose images could be read (the first reasons named)."""
    reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in report.skipped[:5])
    return CatalogError(f"none of the {n_items} images in {catalog} could be read ({reasons})")


# ------------------------------------------------------------------------------------------ encoding
def encode_update(plan: UpdatePlan, ctx: UpdateContext, opts: BuildOptions, chunks: Path | None = None) -> Embeddings:
    """:func:`encode_plan` for a lazy context: nothing to encode loads nothing; otherwise the model is
    loaded (:class:`StaleRecord` when its recorded fingerprint was wrong: plan again)."""
    need = tuple(t for t, todo in (("image", plan.images), ("text", plan.texts({}))) if todo)
    if not need:
        return Embeddings()
    model, cfg = ctx.model, opts.encode
    plain = cfg is None or (cfg.pipeline == "fast" and not cfg.compile and cfg.decode in ("auto", "pil"))
    if isinstance(model, ModelHandle) and not model.is_loaded and plain:
        from ..encode import lean  # the model's ONNX graphs, no torch: opens only the towers the plan needs

        towers = lean.open_towers(model.fingerprint(), model.device, need, cfg.runtime if cfg else None)
        if towers is not None:
            log.info("encoding with the %s ONNX graphs (%s) of model %s", towers.source, "+".join(need),
                     model.fingerprint())
            return encode_plan_lean(plan, towers, model.cfg, opts)
    if isinstance(model, ModelHandle):
        model, ctx.preprocess, ctx.tokenizer = model.load()
    return encode_plan(plan, model, ctx.preprocess, ctx.tokenizer, opts, chunks=chunks)


def encode_plan(plan: UpdatePlan, model, preprocess, tokenizer, opts: BuildOptions, *, chunks: Path | None = None,
                desc: str = "encoding images", text_progress: bool | None = None) -> Embeddings:
    """Encode the images and texts ``plan`` names, in this process, with ``opts``' batch size, decode
    workers, progress and :class:`EncodeCfg`.

    ``chunks``: a folder for the image embeddings' chunks (bounded memory while encoding); None keeps
    them in memory. ``text_progress``: show a bar for texts too (default: ``opts.progress``).
    """
    todo = plan.images
    emb = Embeddings()
    if todo:
        out = encode_image_files(model, preprocess, [it.path for it in todo], batch_size=opts.batch_size,
                                 num_workers=opts.num_workers, progress=opts.progress, desc=desc, cfg=opts.encode,
                                 shards=chunks)
        for r, pos in enumerate(out.ok):
            emb.images[todo[pos].id] = {name: vecs[r] for name, vecs in out.channels.items()}
        emb.failed.update((todo[pos].id, reason) for pos, reason in out.failed)
    texts = plan.texts(emb.failed)  # texts are cheap next to images: (re-)encode where the text changed
    if texts:
        vecs = encode_texts(model, tokenizer, [t for _, t in texts],
                            progress=opts.progress if text_progress is None else text_progress)
        emb.texts.update((iid, v) for (iid, _), v in zip(texts, vecs))
    return emb


def encode_plan_lean(plan: UpdatePlan, towers: Any, cfg: Any, opts: BuildOptions) -> Embeddings:
    """:func:`encode_plan` with onnxruntime graphs (``encode/lean.py``) instead of the torch model
    (``cfg``: the model's :class:`ModelCfg`)."""
    from ..encode import lean

    todo = plan.images
    emb = Embeddings()
    if todo:
        out = lean.encode_images(towers, cfg.image, [it.path for it in todo], opts.batch_size, opts.num_workers,
                                 opts.progress)
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
