"""Distributed indexing: the ranks of a torchrun job encode shares of the catalog; rank 0 writes ONE index.

``torchrun --nproc-per-node N [--nnodes M ...] -m mmsearch index CATALOG --out OUT``::

    rank 0      scan, take OUT's writer lock, read the live snapshot  -> broadcast a Plan
    every rank  scan (the listing must match rank 0's digest), then for each piece it owns
                (piece i -> rank i % N; piece = a contiguous slice of the sorted listing):
                hash the files, plan its share (index.plan.plan_update: the same decisions as a
                single-process build) and encode what the plan names (index.update.encode_plan)
                -> OUT/.distributed/<plan>/piece-<i>.npz, then piece-<i>.json (the done marker)
    all ranks   exchange a status (ok or an error line)
    rank 0      read every piece -> the same plan_update / resolve / commit as index.build_index
                -> one snapshot, swapped in atomically; then delete the piece folder
                for a new IVF index (ivf, ivfpq, auto at scale), per channel: train once on a sample
                -> every rank adds its parts of the channel's rows to a copy of the trained index
                (OUT/.distributed/<plan>/ivf/<channel>/piece-<i>.ivf + .json done marker) -> rank 0
                merges the inverted lists on disk into the snapshot (mmsearch/ondisk.py)

A dead or failed rank stops the job before anything is written to the index (the live snapshot stays
as it was); completed pieces (and IVF parts) stay on disk, and re-running the same command skips every
piece whose marker exists and whose files are unchanged (size and mtime), and every IVF part whose
marker matches its vectors, on any number of ranks. OUT must be on a
file system every rank can read and write (one machine, or a shared mount across nodes).

OUT may be a Milvus server location (``milvus://HOST:PORT/COLLECTION``): then every rank writes its rows
into the collection and rank 0 commits, with no work files (dist/milvus.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..catalog.scan import CatalogItem, scan_catalog
from ..catalog.tar_shards import stat_path
from ..encode.chunks import chunk_paths, read_chunk, write_chunk
from ..errors import MMSearchError
from ..index.backend import is_milvus, location_text
from ..index.build import ENCODE_DIR, Scanned, commit_update, exclude_patterns, finish_report, index_model, scan_update
from ..index.ondisk import AddTask, PartsStatus, part_paths, run_parts
from ..index.options import BuildKw, BuildOptions
from ..index.plan import BuildReport, Embeddings, hash_items, plan_update
from ..index.snapshot import State, writer_lock
from ..index.store import ItemStore
from ..index.update import UpdateContext, encode_plan, open_update
from ..index.writer import channel_dims
from ..ranges import even_ranges, slices_of_rank
from .env import (
    DistEnv,
    DistributedError,
    all_gather_objects,
    broadcast_object,
    process_group,
    rank_device,
)
from .work import DistributedBuild, crash_hook, listing_digest, num_slices_for

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

WORK_DIR = ".distributed"
Encoder = tuple[Any, Any, Any]  # (model, preprocess, tokenizer), as create_model returns them
PLAN_VERSION = 1


@dataclass
class Plan:
    """What rank 0 decided under the writer lock; every rank works from it."""

    key: str = ""
    work: str = ""  # OUT/.distributed/<key>
    snapshot: str | None = None  # the live snapshot the update is diffed against (None: build from scratch)
    fingerprint: str = ""
    digest: str = ""  # of the sorted item ids
    count: int = 0
    num_slices: int = 0
    error: str | None = None  # rank 0 failed before encoding; the others stop


@dataclass
class RankStatus:
    rank: int
    pieces: int = 0
    resumed: int = 0
    encoded: int = 0  # images run through the image tower
    hashed: int = 0
    seconds: float = 0.0
    error: str | None = None
    device: str = ""


@dataclass
class Job:
    """One distributed build, as every rank runs it."""

    catalog: Path
    out: Path
    opts: BuildOptions  # model resolved (never None), device: this rank's
    env: DistEnv
    patterns: list[str]  # --exclude patterns, read by every rank before any collective

    @property
    def model_ref(self) -> str | Path:
        return self.opts.model  # type: ignore[return-value]


def make_plan(out: Path, items: list[CatalogItem], state: State | None, fingerprint: str, env: DistEnv,
              shard_size: int) -> Plan:
    n = len(items)
    plan = Plan(snapshot=str(state.snapshot) if state else None, fingerprint=fingerprint,
                digest=listing_digest(items), count=n, num_slices=num_slices_for(n, env.world_size, shard_size))
    basis = {k: v for k, v in asdict(plan).items() if k not in ("key", "work", "error", "snapshot")}
    basis["snapshot"] = Path(plan.snapshot).name if plan.snapshot else None
    basis["version"] = PLAN_VERSION
    plan.key = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
    root = out / WORK_DIR
    plan.work = str(root / plan.key)
    if root.is_dir():  # work of an earlier, different job can never be resumed by this one
        for p in root.iterdir():
            if p.name != plan.key:
                shutil.rmtree(p, ignore_errors=True)
    Path(plan.work).mkdir(parents=True, exist_ok=True)
    return plan


# ---------------------------------------------------------------------------------------- one slice
def slice_is_done(plan: Plan, piece: int, items: list[CatalogItem]) -> bool:
    """The slice's marker exists, lists these ids, and none of its files changed since it was written."""
    npz, marker = chunk_paths(plan.work, piece)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (npz.is_file() and meta.get("ids") == [it.id for it in items]
            and meta.get("stat") == [stat_path(it.path) for it in items])


def encode_slice(plan: Plan, piece: int, items: list[CatalogItem], previous: dict[str, dict], encoder: Encoder,
                 opts: BuildOptions) -> int:
    """Hash, plan, encode and write one piece; returns the number of images encoded.

    The piece's share of the update is decided by :func:`mmsearch.index.plan.plan_update` against
    ``previous`` (the live snapshot's rows), exactly as a single-process build decides it. ``encoder``:
    (model, preprocess, tokenizer).
    """
    model = encoder[0]
    stats = [stat_path(it.path) for it in items]  # before reading: a file changed meanwhile is redone next time
    hashes = hash_items(items)
    share = plan_update(items, previous, hashes, next_fid=0, complete=False)
    emb = encode_plan(share, *encoder, opts, desc=f"slice {piece + 1}/{plan.num_slices}", text_progress=False)
    arrays = {name: np.stack([vecs[name] for vecs in emb.images.values()]) if emb.images
              else np.zeros((0, dim), np.float32) for name, dim in channel_dims(model).items() if name != "text"}
    arrays["text"] = (np.stack(list(emb.texts.values())) if emb.texts
                      else np.zeros((0, model.embed_dim), np.float32))
    meta = {"shard": piece, "ids": [it.id for it in items], "hashes": [hashes[it.id] for it in items],
            "stat": stats, "encoded": list(emb.images), "failed": emb.failed, "texts": list(emb.texts)}
    write_chunk(*chunk_paths(plan.work, piece), arrays, meta)  # float16 npz, then the done marker
    return len(emb.images)


def run_slices(plan: Plan, items: list[CatalogItem], previous: dict[str, dict], encoder: Encoder, env: DistEnv,
               opts: BuildOptions) -> RankStatus:
    """Encode this rank's pieces (skipping completed ones) with ``encoder`` (model, preprocess, tokenizer);
    errors become the status's error line."""
    model = encoder[0]
    status = RankStatus(rank=env.rank, device=str(next(model.parameters()).device))
    t0 = time.perf_counter()
    try:
        if listing_digest(items) != plan.digest or len(items) != plan.count:
            raise DistributedError(f"rank {env.rank} sees {len(items)} catalog items, rank 0 sees {plan.count} "
                                   f"(or other ids): every rank must see the same catalog folder")
        if model.fingerprint() != plan.fingerprint:
            raise DistributedError(f"rank {env.rank} loaded a different model than rank 0 (fingerprint "
                                   f"{model.fingerprint()} != {plan.fingerprint}): use the same --model file "
                                   f"everywhere")
        ranges = even_ranges(len(items), plan.num_slices)
        crash_hook(env, "shard-start")
        for piece in slices_of_rank(plan.num_slices, env.rank, env.world_size):
            start, end = ranges[piece]
            part = items[start:end]
            status.pieces += 1
            status.hashed += len(part)
            if slice_is_done(plan, piece, part):
                status.resumed += 1
                log.info("rank %d: slice %d already done, skipping", env.rank, piece)
                continue
            status.encoded += encode_slice(plan, piece, part, previous, encoder, opts)
            crash_hook(env, "shard-done")
    except MMSearchError as exc:
        status.error = str(exc)
    status.seconds = round(time.perf_counter() - t0, 3)
    return status


def load_slices(plan: Plan, items: list[CatalogItem], dims: dict[str, int]) -> tuple[dict[str, str], Embeddings]:
    """Every slice's hashes and embeddings: (id -> image SHA-256, the plan's :class:`Embeddings`)."""
    ranges = even_ranges(len(items), plan.num_slices)
    hashes: dict[str, str] = {}
    emb = Embeddings()
    for piece, (start, end) in enumerate(ranges):
        try:
            arrays, meta = read_chunk(*chunk_paths(plan.work, piece))
        except (OSError, ValueError) as exc:
            raise DistributedError(f"slice {piece} is missing or unreadable ({exc}); re-run the same command "
                                   f"to redo it") from None
        if meta["ids"] != [it.id for it in items[start:end]]:
            raise DistributedError(f"slice {piece} was written for another listing; re-run the same command")
        hashes.update(zip(meta["ids"], meta["hashes"]))
        emb.failed.update(meta["failed"])
        images = [name for name in dims if name != "text" and name in arrays]
        for r, iid in enumerate(meta["encoded"]):
            emb.images[iid] = {name: arrays[name][r] for name in images}
        for r, iid in enumerate(meta["texts"]):
            emb.texts[iid] = arrays["text"][r]
    return hashes, emb


def _previous_rows(snapshot: str | None) -> dict[str, dict]:
    if snapshot is None:
        return {}
    with contextlib.closing(ItemStore.open(Path(snapshot) / "items.sqlite")) as st:
        return st.all_rows()


# ---------------------------------------------------------------------------------------- the job
def build_index_distributed(catalog: str | Path, out: str | Path = "index", *, options: BuildOptions | None = None,
                            env: DistEnv | None = None, timeout_s: float = 24 * 3600.0,
                            **overrides: Unpack[BuildKw]) -> DistributedBuild | None:
    """:func:`mmsearch.build_index` across the ranks of a torchrun job; call it on every rank.

    ``options`` and ``overrides`` are :func:`mmsearch.build_index`'s (a :class:`BuildOptions` and its
    fields by name; ``shard_size``: catalog items per work piece, the unit a re-run resumes from). Returns
    the result on rank 0 and None on the other ranks. ``timeout_s`` bounds how long a rank waits for a
    *slow* peer; a peer that dies is noticed at once.

    Example (``build.py``, run as ``torchrun --nproc-per-node 4 build.py``)::

        from mmsearch.dist.runner import build_index_distributed
        result = build_index_distributed("catalog", out="index", model="default")
        if result is not None:
            print(result.report.indexed, result.info["resumed_shards"])
    """
    opts = (options or BuildOptions()).replace(**overrides)
    env = env or DistEnv.from_env()
    if is_milvus(out):  # every rank writes its rows into the collection; rank 0 commits (dist/milvus.py)
        from .milvus import build_milvus_distributed

        return build_milvus_distributed(Path(catalog), location_text(out), opts, env, timeout_s)
    out = Path(out)
    dev = rank_device(opts.device, env)
    model = opts.model if opts.model is not None else index_model(out)  # as build_index: keep the index's own
    # every rank reads the remembered patterns the same way, before any collective: a bad one fails every rank
    job = Job(Path(catalog), out, opts.replace(model=model, device=str(dev)), env,
              exclude_patterns(out, opts.exclude, opts.reset_exclude))
    # The index job exchanges only small Python objects, so it always coordinates over gloo (also on
    # GPUs: no NCCL collective can hang on a dead peer, and each rank's model still runs on its GPU).
    with process_group(env, dev, timeout_s=timeout_s, backend="gloo"):
        if env.is_main:
            return _leader(job)
        _follower(job)
        return None


class Peers:
    """What the other ranks wait for from rank 0, so that a failure on rank 0 tells them to stop instead of
    leaving them waiting: first the plan; once every rank has finished its pieces, the merge's messages
    (an IVF add task, "stop" or "done")."""

    def __init__(self, env: DistEnv):
        self.env = env
        self.waiting_for = "plan"  # then "slices" (they encode and report), then "merge"

    def share_plan(self, plan: Plan) -> None:
        broadcast_object(asdict(plan), self.env, "sharing the plan")
        self.waiting_for = "shards"

    def merging(self) -> None:
        self.waiting_for = "merge"

    def stop(self, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            if self.waiting_for == "plan":
                broadcast_object(asdict(Plan(error=reason)), self.env, "sharing the plan")
            elif self.waiting_for == "merge" and not getattr(exc, "lost_rank", False):
                broadcast_object({"op": "stop", "error": reason}, self.env, "the index merge")

    def done(self) -> None:
        if self.waiting_for != "merge":
            return
        try:
            broadcast_object({"op": "done"}, self.env, "the index merge")
        except DistributedError as exc:  # the index is published; a rank that left early changes nothing
            log.warning("%s", exc)


def _leader(job: Job) -> DistributedBuild:
    """Rank 0: decide the plan under the writer lock and share it, encode its own pieces, then merge every
    rank's pieces into one snapshot; the other ranks hear of a failure at whatever they wait for."""
    peers = Peers(job.env)
    try:
        scanned = scan_update(job.out, job.patterns, job.catalog)  # raises before anything is written
        with writer_lock(job.out, job.opts.lock_timeout):
            ctx = open_update(job.out, job.model_ref, job.opts.device, job.opts.rebuild)
            work = make_plan(job.out, scanned.items, ctx.state, ctx.model.fingerprint(), job.env, job.opts.shard_size)
            peers.share_plan(work)
            log.info("distributed index: %d items in %d slices over %d ranks, work in %s", work.count,
                     work.num_slices, job.env.world_size, work.work)
            statuses = _run_and_gather(work, scanned.items, ctx, job)
            peers.merging()  # every rank now waits for add tasks until rank 0 says "done"
            gathered_at = time.perf_counter()
            snap, report, info = _merge(job, work, scanned, ctx, statuses)
        report = finish_report(report, job.out, snap)
    except BaseException as exc:
        peers.stop(exc)
        raise
    peers.done()
    # reading the slices + the writer (FAISS build, store, fsync), i.e. the serial part on rank 0
    info["merge_seconds"] = round(time.perf_counter() - gathered_at, 3)
    shutil.rmtree(work.work, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(work.work).parent.rmdir()  # only if no other job's work is there
    return DistributedBuild(report=report, info=info)


def _merge(job: Job, work: Plan, scanned: Scanned, ctx: UpdateContext,
           statuses: list[RankStatus]) -> tuple[Path, BuildReport, dict[str, Any]]:
    """Rank 0, under the writer lock: every piece's hashes and embeddings -> the same plan_update /
    commit_update as build_index (new IVF indexes filled by every rank). -> (snapshot, report, info)"""
    hashes, emb = load_slices(work, scanned.items, channel_dims(ctx.model))
    info: dict[str, Any] = {
        "world_size": job.env.world_size, "shards": work.num_slices, "shard_size": job.opts.shard_size,
        "resumed_shards": sum(s.resumed for s in statuses),
        "ranks": [{"rank": s.rank, "encoded": s.encoded, "seconds": s.seconds, "device": s.device} for s in statuses]}
    recorded = dict(info)  # the manifest's build.distributed (the adder adds ivf_ondisk to it)
    adder = RankAdder(work, job.env, job.out, job.opts.shard_size, recorded)
    plan = plan_update(scanned.items, ctx.previous, hashes, ctx.next_fid,  # the same planner as build_index
                       keep=ctx.state.manifest.get("api_items", []) if ctx.state is not None else [])
    shutil.rmtree(job.out / ENCODE_DIR, ignore_errors=True)  # left by a killed single-process build
    snap, report = commit_update(job.out, ctx, plan, emb, scanned=scanned, opts=job.opts, distributed=recorded,
                                 adder=adder)
    info.update({k: v for k, v in recorded.items() if k not in info})  # ivf_ondisk, for the caller's summary
    return snap, report, info


def _run_and_gather(plan: Plan, items: list[CatalogItem], ctx: UpdateContext, job: Job) -> list[RankStatus]:
    """Rank 0's slices, then every rank's status; a failed or lost rank stops the job here."""
    encoder = (ctx.model, ctx.preprocess, ctx.tokenizer)
    mine = run_slices(plan, items, ctx.previous, encoder, job.env, job.opts)
    env, out = job.env, job.out
    try:
        gathered = all_gather_objects(asdict(mine), env, "finishing its slices")
    except DistributedError as exc:
        raise _lost_ranks_error(plan, env, out, exc) from None
    statuses = [RankStatus(**s) for s in gathered]
    errors = [s for s in statuses if s.error]
    if errors:
        raise DistributedError("; ".join(f"rank {s.rank}: {s.error}" if not s.error.startswith("rank ")
                                         else s.error for s in errors)
                               + f" (nothing was written to {out}; completed slices are kept for a re-run)")
    return statuses


def _lost_ranks_error(plan: Plan, env: DistEnv, out: Path, exc: Exception) -> DistributedError:
    """Name the ranks whose slices have no done marker (the ones that died)."""
    log.debug("collective failed: %s", exc)
    missing = {r: [i for i in slices_of_rank(plan.num_slices, r, env.world_size)
                   if not chunk_paths(plan.work, i)[1].is_file()] for r in range(env.world_size)}
    lost = [r for r, pieces in missing.items() if pieces]
    done = plan.num_slices - sum(len(v) for v in missing.values())
    who = f"rank {', '.join(map(str, lost))}" if lost else "a rank"
    return DistributedError(f"{who} stopped before finishing its slices ({done} of {plan.num_slices} slices done); "
                            f"nothing was written to {out}: re-run the same command to resume from the "
                            f"completed slices")


class RankAdder:
    """:class:`mmsearch.index.ondisk.Adder` over the ranks of the job: rank 0 sends each channel's add task,
    every rank adds its parts (part i -> rank i % N) and reports; kept in the plan's work folder, so a
    re-run resumes from the parts that completed."""

    def __init__(self, plan: Plan, env: DistEnv, out: Path, shard_size: int, info: dict[str, Any]):
        self.plan, self.env, self.out, self.shard_size, self.info = plan, env, out, shard_size, info

    def work_dir(self, channel: str) -> Path:
        return Path(self.plan.work) / "ivf" / channel

    def num_parts(self, n: int) -> int:
        return num_slices_for(n, self.env.world_size, self.shard_size)

    def __call__(self, task: AddTask) -> None:
        env = self.env
        broadcast_object({"op": "add", "task": asdict(task)}, env, "the index merge")
        mine = run_parts(task, env.rank, env.world_size, after_part=lambda: crash_hook(env, "ivf-part-done"))
        try:
            gathered = all_gather_objects(asdict(mine), env, "finishing its IVF parts")
        except DistributedError as exc:
            raise _lost_parts_error(task, env, self.out, exc) from None
        statuses = [PartsStatus(**s) for s in gathered]
        errors = [s.error for s in statuses if s.error]
        if errors:
            raise DistributedError("; ".join(errors) + f" (nothing was written to {self.out}; completed parts are "
                                   f"kept for a re-run)")
        self.info.setdefault("ivf_ondisk", {})[task.channel] = {
            "parts": len(task.parts), "resumed_parts": sum(s.resumed for s in statuses),
            "ranks": [{"rank": s.rank, "added": s.added, "seconds": s.seconds} for s in statuses]}


def _lost_parts_error(task: AddTask, env: DistEnv, out: Path, exc: Exception) -> DistributedError:
    log.debug("collective failed: %s", exc)
    missing = {r: [i for i in range(r, len(task.parts), env.world_size) if not part_paths(task, i)[1].is_file()]
               for r in range(env.world_size)}
    lost = [r for r, parts in missing.items() if parts]
    done = len(task.parts) - sum(len(v) for v in missing.values())
    who = f"rank {', '.join(map(str, lost))}" if lost else "a rank"
    err = DistributedError(f"{who} stopped before adding its {task.channel} vectors to the IVF index ({done} of "
                           f"{len(task.parts)} parts done); nothing was written to {out}: re-run the same command "
                           f"to resume from the completed slices and parts")
    err.lost_rank = True  # the process group is broken: nobody is left to tell
    return err


def _follower(job: Job) -> None:
    """Every rank but 0: encode its slices of rank 0's plan, then help fill new IVF indexes until told "done"."""
    from ..models.factory import create_model

    env = job.env
    plan = Plan(**broadcast_object(None, env, "sharing the plan"))
    if plan.error is not None:
        raise DistributedError(f"rank {env.rank}: stopped because rank 0 failed: {plan.error}")
    status = RankStatus(rank=env.rank)
    try:  # rank 0 reports what the scan skips
        items = scan_catalog(job.catalog, exclude=[job.out], skipped=[], exclude_globs=job.patterns)
        encoder = create_model(job.model_ref, device=job.opts.device)
        status = run_slices(plan, items, _previous_rows(plan.snapshot), encoder, env, job.opts.replace(progress=False))
    except MMSearchError as exc:
        status.error = f"rank {env.rank}: {exc}"
    statuses = all_gather_objects(asdict(status), env, "finishing its slices")
    if status.error:
        raise DistributedError(status.error)
    log.info("rank %d: %d slices (%d resumed), %d images encoded in %.1f s", env.rank, status.pieces,
             status.resumed, status.encoded, status.seconds)
    if any(s["error"] for s in statuses):
        return  # rank 0 reports the failure
    while True:  # rank 0 writes the index; new IVF indexes need every rank to add vectors
        msg = broadcast_object(None, env, "the index merge")
        if msg["op"] == "done":
            return
        if msg["op"] == "stop":
            raise DistributedError(f"rank {env.rank}: stopped because rank 0 failed: {msg['error']}")
        task = AddTask(**msg["task"])
        mine = run_parts(task, env.rank, env.world_size, after_part=lambda: crash_hook(env, "ivf-part-done"))
        all_gather_objects(asdict(mine), env, "finishing its IVF parts")
