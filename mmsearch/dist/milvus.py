"""A torchrun index build into Milvus: every rank writes its items' rows straight into the collection.

``torchrun --nproc-per-node N -m mmsearch index CATALOG -i milvus://HOST:PORT/COLLECTION``::

    rank 0      scan, read the live manifest, begin the update (MilvusWriter.begin: the collections of a
                new index, the dirty mark), read the stored rows           -> broadcast a MilvusPlan
    every rank  scan (the listing must match rank 0's digest), then for each piece it owns (piece i ->
                rank i % N, piece = a contiguous slice of the sorted listing): read the piece's stored
                rows, hash its files and plan it (index.plan.plan_update: one process's decisions)
    all ranks   exchange each piece's number of new items: the new items of piece i are numbered (fids)
                after the plan's next_fid and the new items of the pieces before it, so no two ranks
                ever use one fid
    every rank  encode each piece's plan, resolve it and upsert its whole rows (MilvusWriter.write_rows)
    all ranks   exchange a status (counts, skipped files, the field statistics' delta, or an error line)
    rank 0      remove what the plan removes (items gone from the catalog, changed into unreadable files),
                add up the statistics and commit the manifest with generation + 1 (MilvusWriter.commit)

No chunk files and no merge: embeddings go from each rank's model into Milvus. A failed or killed rank
stops the job before the commit: every item is old or new (rows are written whole), the manifest and
generation are the previous ones, and re-running the command plans from the stored content hashes (rows
already written count as unchanged), recounts the statistics and commits. Milvus Lite allows one process
per file: run ``milvus-lite server`` and give the ranks its ``milvus://`` location. As for one process,
a server has no lock to take: run one index job per collection at a time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..catalog.scan import CatalogItem, scan_catalog
from ..errors import MMSearchError
from ..index.milvus.build import adopt_model, finish_report, model_ref_for, update_input
from ..index.milvus.location import MilvusLocation, parse_location
from ..index.milvus.writer import MilvusWriter, Pending, Written
from ..index.options import BuildOptions
from ..index.plan import BuildReport, UpdatePlan, hash_items, plan_update, resolve
from ..index.scanning import Scanned
from ..index.update import encode_plan, nothing_readable, update_manifest
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

log = logging.getLogger(__name__)

COUNTS = ("added", "updated", "metadata_updated", "unchanged", "encoded", "not_retried")


@dataclass
class MilvusPlan:
    """What rank 0 decided; every rank works from it."""

    model: str = ""  # the model reference every rank loads
    fingerprint: str = ""
    digest: str = ""  # of the sorted item ids
    count: int = 0
    num_slices: int = 0
    next_fid: int = 0  # the first fid never used: new items are numbered from here, slice by slice
    patterns: list[str] = field(default_factory=list)  # --exclude patterns (remembered ones included)
    skipped: list[dict] = field(default_factory=list)  # the live manifest's: unchanged failures are not retried
    error: str | None = None  # rank 0 failed before sharing the plan; the others stop


@dataclass
class WriteStatus:
    rank: int
    pieces: int = 0
    seconds: float = 0.0
    device: str = ""
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # resolve's report counts, added up (COUNTS)
    skipped: dict[int, list[dict]] = field(default_factory=dict)  # slice -> files that could not be read
    failed_fids: list[int] = field(default_factory=list)  # indexed items whose changed file no longer reads
    written: dict[str, Any] = field(default_factory=dict)  # MilvusWriter.write_rows' Written, added up


def server_location(location: str) -> MilvusLocation:
    """The Milvus location of a torchrun build; a Milvus Lite file (one process per file) is a clear error."""
    loc = parse_location(location)
    if loc.lite:
        raise MMSearchError(f"a torchrun build cannot write into a Milvus Lite file ({loc}): Milvus Lite allows "
                            f"one process per file and every rank writes. Run it as a server (milvus-lite server "
                            f"--data-dir {loc.uri} --port 19530) and index into "
                            f"milvus://127.0.0.1:19530/{loc.collection}")
    return loc


def build_milvus_distributed(catalog: Path, location: str, opts: BuildOptions, env: DistEnv,
                             timeout_s: float) -> DistributedBuild | None:
    """``build_index_distributed`` into Milvus (module doc); call it on every rank. Returns the result on
    rank 0 and None on the other ranks."""
    loc = server_location(location)  # on every rank, before any collective
    dev = rank_device(opts.device, env)
    opts = opts.replace(device=str(dev))
    with process_group(env, dev, timeout_s=timeout_s, backend="gloo"):
        if env.is_main:
            return _leader(catalog, loc, opts, env)
        _follower(catalog, loc, opts.replace(progress=False), env)
        return None


def _leader(catalog: Path, loc: MilvusLocation, opts: BuildOptions, env: DistEnv) -> DistributedBuild:
    """Rank 0: plan and share the plan, write its own slices, then remove, count and commit."""
    from ..models.factory import create_model

    try:
        writer = MilvusWriter(loc, cfg=opts.index)
        if opts.rebuild:
            writer.drop()
        scanned, ref = update_input(writer, opts, catalog)  # raises before anything is written
        encoder = create_model(str(ref), device=opts.device)
        model = encoder[0]
        live = adopt_model(writer, model)
        n = len(scanned.items)
        pending = writer.begin(n)  # from here on rows may be written; the manifest stays until the commit
        previous = writer.previous()  # rows of an interrupted run count too: they are planned as unchanged
        plan = MilvusPlan(model=str(ref), fingerprint=model.fingerprint(), digest=listing_digest(scanned.items), count=n,
                          num_slices=num_slices_for(n, env.world_size, opts.shard_size),
                          next_fid=writer.next_fid(previous), patterns=scanned.patterns,
                          skipped=list((live or {}).get("skipped", [])))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            broadcast_object(asdict(MilvusPlan(error=str(exc) or type(exc).__name__)), env, "sharing the plan")
        raise
    broadcast_object(asdict(plan), env, "sharing the plan")
    log.info("distributed index into %s: %d items in %d slices over %d ranks", loc, n, plan.num_slices,
             env.world_size)
    try:
        statuses = _write_shares(plan, scanned.items, encoder, writer, env, opts, None)
    except DistributedError as exc:
        raise DistributedError(f"{exc} ({loc} was not committed: its manifest and generation are the previous "
                               f"ones and every item is whole; re-run the same command to finish)") from None
    return _commit(writer, pending, plan, scanned, previous, live, statuses, model, opts, env)


def _follower(catalog: Path, loc: MilvusLocation, opts: BuildOptions, env: DistEnv) -> None:
    """Every rank but 0: plan, encode and write its slices of rank 0's plan; rank 0 commits."""
    from ..models.factory import create_model

    plan = MilvusPlan(**broadcast_object(None, env, "sharing the plan"))
    if plan.error is not None:
        raise DistributedError(f"rank {env.rank}: stopped because rank 0 failed: {plan.error}")
    items: list[CatalogItem] = []
    encoder: Any = None
    writer: Any = None
    error = None
    try:  # rank 0 reports what the scan skips
        items = scan_catalog(catalog, skipped=[], exclude_globs=plan.patterns)
        encoder = create_model(plan.model, device=opts.device)
        writer = MilvusWriter(loc, dims=channel_dims(encoder[0]))
    except MMSearchError as exc:
        error = f"rank {env.rank}: {exc}"
    _write_shares(plan, items, encoder, writer, env, opts, error)


def _write_shares(plan: MilvusPlan, items: list[CatalogItem], encoder: Any, writer: MilvusWriter, env: DistEnv,
                  opts: BuildOptions, error: str | None) -> list[WriteStatus]:
    """This rank's part of the job (every rank): plan its slices, agree on the new items' fids, encode and
    write them. -> every rank's status; DistributedError when any rank failed (on rank 0: all their errors)."""
    status = WriteStatus(rank=env.rank, error=error)
    t0 = time.perf_counter()
    shares: list[tuple[int, UpdatePlan]] = []
    if status.error is None:
        try:
            shares = _plan_shares(plan, items, encoder[0], writer, env)
        except MMSearchError as exc:
            status.error = str(exc)
    new = {piece: sum(1 for it in share.items if it.id not in share.previous and it.id not in share.known_bad)
           for piece, share in shares}
    planned = all_gather_objects({"error": status.error, "new": new}, env, "planning its slices")
    _raise_errors([p["error"] for p in planned], env, "planned")
    counts = {piece: k for p in planned for piece, k in p["new"].items()}
    first = plan.next_fid
    offsets = {}
    for piece in range(plan.num_slices):  # slice i's new items come after those of the slices before it
        offsets[piece], first = first, first + counts.get(piece, 0)
    written = Written()
    try:
        status.device = str(next(encoder[0].parameters()).device)
        for piece, share in shares:
            share.next_fid = offsets[piece]
            emb = encode_plan(share, encoder[0], encoder[1], encoder[2], opts, desc=f"slice {piece + 1}/{plan.num_slices}",
                              text_progress=False)
            report, changes, failed_fids, _ = resolve(share, emb)
            written.merge(writer.write_rows(changes))
            for name in COUNTS:
                status.counts[name] = status.counts.get(name, 0) + int(getattr(report, name))
            status.skipped[piece] = report.skipped
            status.failed_fids += failed_fids
            status.pieces += 1
            crash_hook(env, "milvus-shard-written")
    except MMSearchError as exc:
        status.error = f"rank {env.rank}: {exc}" if not str(exc).startswith("rank ") else str(exc)
    status.written = asdict(written)
    status.seconds = round(time.perf_counter() - t0, 3)
    if status.error is None:
        log.info("rank %d: %d slices, %d images encoded and written in %.1f s", env.rank, status.pieces,
                 status.counts.get("encoded", 0), status.seconds)
    try:
        gathered = [WriteStatus(**s) for s in all_gather_objects(asdict(status), env, "writing its slices")]
    except DistributedError as exc:
        raise DistributedError(f"a rank stopped before writing its slices ({exc})") from None
    _raise_errors([s.error for s in gathered], env, "written")
    return gathered


def _plan_shares(plan: MilvusPlan, items: list[CatalogItem], model: Any, writer: MilvusWriter,
                 env: DistEnv) -> list[tuple[int, UpdatePlan]]:
    """Each slice this rank owns, planned against its stored rows (its share of the removals is rank 0's)."""
    if listing_digest(items) != plan.digest or len(items) != plan.count:
        raise DistributedError(f"rank {env.rank} sees {len(items)} catalog items, rank 0 sees {plan.count} (or "
                               f"other ids): every rank must see the same catalog folder")
    if model.fingerprint() != plan.fingerprint:
        raise DistributedError(f"rank {env.rank} loaded a different model than rank 0 (fingerprint "
                               f"{model.fingerprint()} != {plan.fingerprint}): use the same --model file everywhere")
    ranges = even_ranges(len(items), plan.num_slices)
    shares = []
    for piece in slices_of_rank(plan.num_slices, env.rank, env.world_size):
        part = items[ranges[piece][0]:ranges[piece][1]]
        share = plan_update(part, writer.previous([it.id for it in part]), hash_items(part), 0, skipped=plan.skipped)
        share.removed = []  # items gone from the catalog are in no slice: rank 0 removes them
        shares.append((piece, share))
    return shares


def _raise_errors(errors: list[str | None], env: DistEnv, stage: str) -> None:
    """Every rank stops when one failed: rank 0 with every error line, the others with their own (or quietly)."""
    lines = [e for e in errors if e]
    if not lines:
        return
    if env.is_main:
        raise DistributedError("; ".join(lines))
    mine = errors[env.rank]
    if mine:
        raise DistributedError(mine)
    raise DistributedError(f"rank {env.rank}: stopped before its slices were {stage}: another rank failed "
                           f"(rank 0 reports it)")


def _commit(writer: MilvusWriter, pending: Pending, plan: MilvusPlan, scanned: Scanned,
            previous: dict[str, dict], live: dict[str, Any] | None, statuses: list[WriteStatus], model: Any,
            opts: BuildOptions, env: DistEnv) -> DistributedBuild:
    """Rank 0, once every rank wrote its rows: the report, the removals, the statistics and the manifest."""
    t0 = time.perf_counter()
    report = BuildReport(out=Path(), snapshot=Path(), indexed=0)
    written = Written()
    for s in statuses:
        written.merge(Written(**s.written))
        for name in COUNTS:
            setattr(report, name, getattr(report, name) + s.counts.get(name, 0))
    by_slice = {piece: entries for s in statuses for piece, entries in s.skipped.items()}
    report.skipped = list(scanned.skipped) + [e for piece in sorted(by_slice) for e in by_slice[piece]]
    report.exclude = plan.patterns
    keep = (live or {}).get("api_items", [])
    removed = plan_update(scanned.items, previous, {}, 0, keep=keep).removed  # the same planner as one process
    removed += [f for s in statuses for f in s.failed_fids]
    report.removed = len(set(removed))
    report.seconds = time.perf_counter() - scanned.started
    if live is None and report.skipped and report.encoded == 0 and not previous:
        writer.abandon(pending)
        raise nothing_readable(report, len(scanned.items), scanned.catalog)
    info: dict[str, Any] = {
        "backend": "milvus", "world_size": env.world_size, "shards": plan.num_slices,
        "shard_size": opts.shard_size, "resumed_shards": 0,
        "ranks": [{"rank": s.rank, "encoded": s.counts.get("encoded", 0), "seconds": s.seconds, "device": s.device}
                  for s in statuses]}
    changed = report.added + report.updated + report.metadata_updated + report.removed
    if (live is not None and not changed and not pending.recount and live.get("skipped") == report.skipped
            and list(live.get("exclude", [])) == plan.patterns):
        writer.abandon(pending)  # nothing to commit: the generation stays
        committed: dict[str, Any] | None = live
    else:
        manifest = update_manifest(model, model_ref_for(plan.model), str(scanned.catalog.resolve()), live, report,
                                   previous, (it.id for it in scanned.items), opts.batch_size)
        manifest["build"]["distributed"] = info
        written.merge(writer.remove(set(removed)))
        committed = writer.commit(pending, written, manifest, plan.next_fid)
    info["merge_seconds"] = round(time.perf_counter() - t0, 3)  # rank 0's serial part: removals and the commit
    return DistributedBuild(report=finish_report(report, writer.loc, committed), info=info)
