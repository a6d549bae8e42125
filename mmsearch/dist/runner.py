"""Distributed indexing: the ranks of a torchrun job encode shares of the catalog; rank 0 writes ONE index.

``torchrun --nproc-per-node N [--nnodes M ...] -m mmsearch index CATALOG --out OUT``::

    rank 0      scan, take OUT's writer lock, read the live snapshot  -> broadcast a Plan
    every rank  scan (the listing must match rank 0's digest), then for each shard it owns
                (shard i -> rank i % N; shard = a contiguous slice of the sorted listing):
                hash the files, plan its share (index.plan.plan_update: the same decisions as a
                single-process build) and encode what the plan names (index.build.encode_plan)
                -> OUT/.distributed/<plan>/shard-<i>.npz, then shard-<i>.json (the done marker)
    all ranks   exchange a status (ok or an error line)
    rank 0      read every shard -> the same plan_update / resolve / commit as index.build_index
                -> one snapshot, swapped in atomically; then delete the shard folder
                for a new IVF index (ivf, ivfpq, auto at scale), per channel: train once on a sample
                -> every rank adds its parts of the channel's rows to a copy of the trained index
                (OUT/.distributed/<plan>/ivf/<channel>/shard-<i>.ivf + .json done marker) -> rank 0
                merges the inverted lists on disk into the snapshot (mmsearch/ondisk.py)

A dead or failed rank stops the job before anything is written to the index (the live snapshot stays
as it was); completed shards (and IVF parts) stay on disk, and re-running the same command skips every
shard whose marker exists and whose files are unchanged (size and mtime), and every IVF part whose
marker matches its vectors, on any number of ranks. OUT must be on a
file system every rank can read and write (one machine, or a shared mount across nodes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..catalog.scan import CatalogItem, scan_catalog
from ..catalog.tar_shards import stat_path
from ..encode.chunks import read_shard, shard_paths, write_shard
from ..errors import MMSearchError
from ..fsutil import crash_point
from ..index.options import IndexCfg
from ..index.build import ENCODE_DIR, commit_update, encode_plan, exclude_patterns, finish_report, open_update
from ..index.ondisk import AddTask, PartsStatus, part_paths, run_parts
from ..index.plan import BuildReport, Embeddings, hash_items, plan_update
from ..index.snapshot import State, writer_lock
from ..index.store import ItemStore
from ..index.writer import channel_dims
from .env import (DistEnv, DistributedError, all_gather_objects, broadcast_object, process_group, rank_device,
                  shard_ranges, shards_of_rank)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000
WORK_DIR = ".distributed"
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
    num_shards: int = 0
    error: str | None = None  # rank 0 failed before encoding; the others stop


@dataclass
class RankStatus:
    rank: int
    shards: int = 0
    resumed: int = 0
    encoded: int = 0  # images run through the image tower
    hashed: int = 0
    seconds: float = 0.0
    error: str | None = None
    device: str = ""


@dataclass
class DistributedBuild:
    """What ``build_index_distributed`` returns on rank 0."""

    report: BuildReport
    info: dict[str, Any] = field(default_factory=dict)  # also in the manifest's build.distributed


def listing_digest(items: list[CatalogItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.id.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def num_shards_for(n: int, world_size: int, shard_size: int) -> int:
    """Shards of about ``shard_size`` items, and at least one per rank. The count does not depend on
    the world size once the catalog is larger than ``world_size * shard_size``, so a resumed run may
    use another number of ranks and still find its completed shards."""
    return max(1, min(n, max(world_size, math.ceil(n / max(1, shard_size)))))


def make_plan(out: Path, items: list[CatalogItem], state: State | None, fingerprint: str, env: DistEnv,
              shard_size: int) -> Plan:
    n = len(items)
    plan = Plan(snapshot=str(state.snapshot) if state else None, fingerprint=fingerprint,
                digest=listing_digest(items), count=n, num_shards=num_shards_for(n, env.world_size, shard_size))
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


def _crash_hook(env: DistEnv, name: str) -> None:
    """Test hook: ``MMSEARCH_CRASH_AT=name MMSEARCH_CRASH_RANK=r`` kills rank r here (SIGKILL)."""
    if os.environ.get("MMSEARCH_CRASH_RANK") == str(env.rank):
        crash_point(name)


# ---------------------------------------------------------------------------------------- one shard
def shard_is_done(plan: Plan, shard: int, items: list[CatalogItem]) -> bool:
    """The shard's marker exists, lists these ids, and none of its files changed since it was written."""
    npz, marker = shard_paths(plan.work, shard)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (npz.is_file() and meta.get("ids") == [it.id for it in items]
            and meta.get("stat") == [stat_path(it.path) for it in items])


def encode_shard(plan: Plan, shard: int, items: list[CatalogItem], previous: dict[str, dict], model, preprocess,
                 tokenizer, batch_size: int, num_workers: int | None, progress: bool) -> int:
    """Hash, plan, encode and write one shard; returns the number of images encoded.

    The shard's share of the update is decided by :func:`mmsearch.index.plan.plan_update` against
    ``previous`` (the live snapshot's rows), exactly as a single-process build decides it.
    """
    stats = [stat_path(it.path) for it in items]  # before reading: a file changed meanwhile is redone next time
    hashes = hash_items(items)
    share = plan_update(items, previous, hashes, next_fid=0, complete=False)
    emb = encode_plan(share, model, preprocess, tokenizer, batch_size, num_workers, progress,
                      desc=f"shard {shard + 1}/{plan.num_shards}", text_progress=False)
    arrays = {name: np.stack([vecs[name] for vecs in emb.images.values()]) if emb.images
              else np.zeros((0, dim), np.float32) for name, dim in channel_dims(model).items() if name != "text"}
    arrays["text"] = (np.stack(list(emb.texts.values())) if emb.texts
                      else np.zeros((0, model.embed_dim), np.float32))
    meta = {"shard": shard, "ids": [it.id for it in items], "hashes": [hashes[it.id] for it in items],
            "stat": stats, "encoded": list(emb.images), "failed": emb.failed, "texts": list(emb.texts)}
    write_shard(*shard_paths(plan.work, shard), arrays, meta)  # float16 npz, then the done marker
    return len(emb.images)


def run_shards(plan: Plan, items: list[CatalogItem], previous: dict[str, dict], model, preprocess, tokenizer,
               env: DistEnv, batch_size: int, num_workers: int | None, progress: bool) -> RankStatus:
    """Encode this rank's shards (skipping completed ones); errors become the status's error line."""
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
        ranges = shard_ranges(len(items), plan.num_shards)
        _crash_hook(env, "shard-start")
        for shard in shards_of_rank(plan.num_shards, env.rank, env.world_size):
            start, end = ranges[shard]
            part = items[start:end]
            status.shards += 1
            status.hashed += len(part)
            if shard_is_done(plan, shard, part):
                status.resumed += 1
                log.info("rank %d: shard %d already done, skipping", env.rank, shard)
                continue
            status.encoded += encode_shard(plan, shard, part, previous, model, preprocess, tokenizer, batch_size,
                                           num_workers, progress)
            _crash_hook(env, "shard-done")
    except MMSearchError as exc:
        status.error = str(exc)
    status.seconds = round(time.perf_counter() - t0, 3)
    return status


def load_shards(plan: Plan, items: list[CatalogItem], dims: dict[str, int]) -> tuple[dict[str, str], Embeddings]:
    """Every shard's hashes and embeddings: (id -> image SHA-256, the plan's :class:`Embeddings`)."""
    ranges = shard_ranges(len(items), plan.num_shards)
    hashes: dict[str, str] = {}
    emb = Embeddings()
    for shard, (start, end) in enumerate(ranges):
        try:
            arrays, meta = read_shard(*shard_paths(plan.work, shard))
        except (OSError, ValueError) as exc:
            raise DistributedError(f"shard {shard} is missing or unreadable ({exc}); re-run the same command "
                                   f"to redo it") from None
        if meta["ids"] != [it.id for it in items[start:end]]:
            raise DistributedError(f"shard {shard} was written for another listing; re-run the same command")
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
def build_index_distributed(catalog: str | Path, out: str | Path = "index", model: str | Path = "default",
                            device: str = "auto", batch_size: int = 32, num_workers: int | None = None,
                            progress: bool = True, index: IndexCfg | None = None, rebuild: bool = False,
                            lock_timeout: float = 0.0, shard_size: int = DEFAULT_SHARD_SIZE,
                            env: DistEnv | None = None, timeout_s: float = 24 * 3600.0,
                            exclude: Sequence[str] | None = None, reset_exclude: bool = False
                            ) -> DistributedBuild | None:
    """:func:`mmsearch.build_index` across the ranks of a torchrun job; call it on every rank.

    Returns the result on rank 0 and None on the other ranks. ``timeout_s`` bounds how long a rank
    waits for a *slow* peer; a peer that dies is noticed at once. ``exclude`` / ``reset_exclude``: as in
    :func:`mmsearch.build_index` (every rank reads the remembered patterns the same way).

    Example (``build.py``, run as ``torchrun --nproc-per-node 4 build.py``)::

        from mmsearch.dist.runner import build_index_distributed
        result = build_index_distributed("catalog", out="index", model="default")
        if result is not None:
            print(result.report.indexed, result.info["resumed_shards"])
    """
    env = env or DistEnv.from_env()
    out = Path(out)
    dev = rank_device(device, env)
    if shard_size < 1:
        raise MMSearchError(f"shard size must be at least 1, got {shard_size}")
    # The index job exchanges only small Python objects, so it always coordinates over gloo (also on
    # GPUs: no NCCL collective can hang on a dead peer, and each rank's model still runs on its GPU).
    patterns = exclude_patterns(out, exclude, reset_exclude)  # before any collective: a bad one fails every rank
    with process_group(env, dev, timeout_s=timeout_s, backend="gloo"):
        if env.is_main:
            return _leader(catalog, out, model, str(dev), batch_size, num_workers, progress, index, rebuild,
                           lock_timeout, shard_size, env, patterns)
        _follower(catalog, out, model, dev, batch_size, num_workers, env, patterns)
        return None


def _leader(catalog, out: Path, model, device: str, batch_size, num_workers, progress, index, rebuild,
            lock_timeout, shard_size, env: DistEnv, patterns: list[str]) -> DistributedBuild:
    sent = adding = False
    info: dict[str, Any] = {}
    work: Plan | None = None
    gathered_at = 0.0
    try:
        scan_skipped: list[dict[str, str]] = []  # files, shards and rows that cannot be read or stored
        items = scan_catalog(catalog, exclude=[out], skipped=scan_skipped,  # raises before anything is written
                             exclude_globs=patterns)
        t0 = time.perf_counter()
        with writer_lock(out, lock_timeout):
            ctx = open_update(out, model, device, rebuild)
            work = make_plan(out, items, ctx.state, ctx.model.fingerprint(), env, shard_size)
            broadcast_object(asdict(work), env, "sharing the plan")
            sent = True
            log.info("distributed index: %d items in %d shards over %d ranks, work in %s", work.count,
                     work.num_shards, env.world_size, work.work)
            statuses = _run_and_gather(work, items, ctx.previous, ctx.model, ctx.preprocess, ctx.tokenizer, env,
                                       batch_size, num_workers, progress, out)
            gathered_at = time.perf_counter()
            hashes, emb = load_shards(work, items, channel_dims(ctx.model))
            info.update({"world_size": env.world_size, "shards": work.num_shards, "shard_size": shard_size,
                         "resumed_shards": sum(s.resumed for s in statuses),
                         "ranks": [{"rank": s.rank, "encoded": s.encoded, "seconds": s.seconds, "device": s.device}
                                   for s in statuses]})
            recorded = dict(info)  # the manifest's build.distributed (the adder adds ivf_ondisk to it)
            adder = RankAdder(work, env, out, shard_size, recorded)
            adding = True  # every rank now waits for add tasks until rank 0 says "done"
            plan = plan_update(items, ctx.previous, hashes, ctx.next_fid,  # the same planner as build_index
                               keep=ctx.state.manifest.get("api_items", []) if ctx.state is not None else [])
            shutil.rmtree(out / ENCODE_DIR, ignore_errors=True)  # left by a killed single-process build
            snap, report = commit_update(out, catalog, len(items), ctx, plan, emb, index, batch_size, t0,
                                         distributed=recorded, adder=adder, skipped=scan_skipped,
                                         exclude=patterns)
        report = finish_report(report, out, snap)
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            if not sent:  # the other ranks are waiting for the plan: tell them to stop
                broadcast_object(asdict(Plan(error=reason)), env, "sharing the plan")
            elif adding and not getattr(exc, "lost_rank", False):  # they wait for add tasks
                broadcast_object({"op": "stop", "error": reason}, env, "the index merge")
        raise
    if adding:
        try:
            broadcast_object({"op": "done"}, env, "the index merge")
        except DistributedError as exc:  # the index is published; a rank that left early changes nothing
            log.warning("%s", exc)
    # reading the shards + the writer (FAISS build, store, fsync), i.e. the serial part on rank 0
    info["merge_seconds"] = round(time.perf_counter() - gathered_at, 3) if gathered_at else 0.0
    if work is not None:
        shutil.rmtree(work.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(work.work).parent.rmdir()  # only if no other job's work is there
    return DistributedBuild(report=report, info=info)


def _run_and_gather(plan: Plan, items: list[CatalogItem], previous: dict[str, dict], model, preprocess, tokenizer,
                    env: DistEnv, batch_size: int, num_workers: int | None, progress: bool,
                    out: Path) -> list[RankStatus]:
    """Rank 0's shards, then every rank's status; a failed or lost rank stops the job here."""
    mine = run_shards(plan, items, previous, model, preprocess, tokenizer, env, batch_size, num_workers, progress)
    try:
        gathered = all_gather_objects(asdict(mine), env, "finishing its shards")
    except DistributedError as exc:
        raise _lost_ranks_error(plan, env, out, exc) from None
    statuses = [RankStatus(**s) for s in gathered]
    errors = [s for s in statuses if s.error]
    if errors:
        raise DistributedError("; ".join(f"rank {s.rank}: {s.error}" if not s.error.startswith("rank ")
                                         else s.error for s in errors)
                               + f" (nothing was written to {out}; completed shards are kept for a re-run)")
    return statuses


def _lost_ranks_error(plan: Plan, env: DistEnv, out: Path, exc: Exception) -> DistributedError:
    """Name the ranks whose shards have no done marker (the ones that died)."""
    log.debug("collective failed: %s", exc)
    missing = {r: [i for i in shards_of_rank(plan.num_shards, r, env.world_size)
                   if not shard_paths(plan.work, i)[1].is_file()] for r in range(env.world_size)}
    lost = [r for r, shards in missing.items() if shards]
    done = plan.num_shards - sum(len(v) for v in missing.values())
    who = f"rank {', '.join(map(str, lost))}" if lost else "a rank"
    return DistributedError(f"{who} stopped before finishing its shards ({done} of {plan.num_shards} shards done); "
                            f"nothing was written to {out}: re-run the same command to resume from the "
                            f"completed shards")


class RankAdder:
    """:class:`mmsearch.index.ondisk.Adder` over the ranks of the job: rank 0 sends each channel's add task,
    every rank adds its parts (part i -> rank i % N) and reports; kept in the plan's work folder, so a
    re-run resumes from the parts that completed."""

    def __init__(self, plan: Plan, env: DistEnv, out: Path, shard_size: int, info: dict[str, Any]):
        self.plan, self.env, self.out, self.shard_size, self.info = plan, env, out, shard_size, info

    def work_dir(self, channel: str) -> Path:
        return Path(self.plan.work) / "ivf" / channel

    def num_parts(self, n: int) -> int:
        return num_shards_for(n, self.env.world_size, self.shard_size)

    def __call__(self, task: AddTask) -> None:
        env = self.env
        broadcast_object({"op": "add", "task": asdict(task)}, env, "the index merge")
        mine = run_parts(task, env.rank, env.world_size, after_part=lambda: _crash_hook(env, "ivf-part-done"))
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
                           f"to resume from the completed shards and parts")
    err.lost_rank = True  # the process group is broken: nobody is left to tell
    return err


def _follower(catalog, out: Path, model_ref, dev, batch_size, num_workers, env: DistEnv, patterns: list[str]) -> None:
    from ..models.factory import create_model

    plan = Plan(**broadcast_object(None, env, "sharing the plan"))
    if plan.error is not None:
        raise DistributedError(f"rank {env.rank}: stopped because rank 0 failed: {plan.error}")
    status = RankStatus(rank=env.rank)
    try:
        items = scan_catalog(catalog, exclude=[out], skipped=[], exclude_globs=patterns)  # rank 0 reports skips
        model, preprocess, tokenizer = create_model(model_ref, device=str(dev))
        status = run_shards(plan, items, _previous_rows(plan.snapshot), model, preprocess, tokenizer, env,
                            batch_size, num_workers, progress=False)
    except MMSearchError as exc:
        status.error = f"rank {env.rank}: {exc}"
    statuses = all_gather_objects(asdict(status), env, "finishing its shards")
    if status.error:
        raise DistributedError(status.error)
    log.info("rank %d: %d shards (%d resumed), %d images encoded in %.1f s", env.rank, status.shards,
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
        mine = run_parts(task, env.rank, env.world_size, after_part=lambda: _crash_hook(env, "ivf-part-done"))
        all_gather_objects(asdict(mine), env, "finishing its IVF parts")
