"""Update planning: the ONE place that decides what an index update adds, re-encodes, updates or removes.

An update runs in three phases, in one process or across the ranks of a torchrun job alike::

    plan = plan_update(items, previous, hashes, next_fid)   # what is new / changed / gone
    embeddings = <an encoder runs the plan>                  # index.build.encode_plan, or every rank
                                                             # on its shards (dist/runner.py)
    report, changes, removed, next_fid = resolve(plan, embeddings)   # -> index.writer.commit(...)

An image is (re-)encoded when its content hash is new or differs from the live snapshot's; a text when
the item's full text (title, text, metadata) hashes differently; an item whose title, text, metadata or
path changed but not its image is a metadata-only update; an item gone from the catalog is removed, and
so is a previously indexed item whose changed file no longer reads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..catalog.scan import CatalogItem
from ..catalog.tar_shards import content_sha256
from ..errors import MMSearchError
from ..fsutil import sha256_text
from .snapshot import State
from .store import ItemStore
from .writer import Change


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
    not_retried: int = 0  # skipped files unchanged since an earlier run failed on them: not decoded again
    exclude: list[str] = field(default_factory=list)  # --exclude patterns in force (remembered in the manifest)
    excluded: int = 0  # indexed items this update removed because a pattern now excludes them

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------- per-item decisions
def image_changed(prev: dict[str, Any] | None, sha256: str) -> bool:
    """The image must be (re-)encoded: a new item, or its content hash differs from the indexed one."""
    return prev is None or prev["image_sha256"] != sha256


def text_to_encode(item: CatalogItem, prev: dict[str, Any] | None) -> str | None:
    """The item's full text when it must be (re-)encoded (new, or its hash changed), else None."""
    full = item.full_text
    if full and (prev is None or prev["text_sha256"] != sha256_text(full)):
        return full
    return None


def hash_items(items: list[CatalogItem], known: dict[str, str] | None = None) -> dict[str, str]:
    """id -> SHA-256 of the item's image (``known`` ones are taken as given); "unreadable:..." on errors."""
    hashes: dict[str, str] = {}
    for it in items:
        try:
            hashes[it.id] = known[it.id] if known and it.id in known else content_sha256(Path(it.path))
        except OSError as exc:
            hashes[it.id] = f"unreadable:{exc}"
    return hashes


def next_free_fid(previous: dict[str, dict], state: State | None) -> int:
    """The first item id (fid) never used in this index: fids are never reused."""
    next_fid = max([r["fid"] + 1 for r in previous.values()] + [0])
    if state is not None:
        with contextlib.closing(ItemStore.open(state.snapshot / "items.sqlite")) as st:
            next_fid = max(next_fid, st.next_fid())
    return next_fid


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class UpdatePlan:
    """What an update will do, before anything is encoded."""

    items: list[CatalogItem]  # the wanted items, in catalog order
    previous: dict[str, dict]  # id -> the live snapshot's row
    hashes: dict[str, str]  # id -> image SHA-256 of every wanted item
    next_fid: int
    removed: list[int] = field(default_factory=list)  # fids of indexed items that are no longer wanted
    # id -> the live manifest's "skipped" entry of a file that failed before and has not changed since:
    # it is not decoded again (and stays skipped) until its content hash changes
    known_bad: dict[str, dict] = field(default_factory=dict)

    @property
    def images(self) -> list[CatalogItem]:
        """Items whose image is new or changed: they go through the image tower."""
        return [it for it in self.items
                if it.id not in self.known_bad and image_changed(self.previous.get(it.id), self.hashes[it.id])]

    def texts(self, failed: dict[str, str] | set[str]) -> list[tuple[str, str]]:
        """(id, full text) to encode, skipping items whose image failed to read (they are not indexed)."""
        out = []
        for it in self.items:
            skip = it.id in failed or it.id in self.known_bad
            text = text_to_encode(it, self.previous.get(it.id)) if not skip else None
            if text is not None:
                out.append((it.id, text))
        return out


def plan_update(items: list[CatalogItem], previous: dict[str, dict], hashes: dict[str, str], next_fid: int,
                complete: bool = True, skipped: list[dict] | None = None, keep: Iterable[str] = ()) -> UpdatePlan:
    """Plan bringing ``previous`` (the live rows) to ``items``.

    ``complete``: ``items`` is the whole catalog, so indexed items missing from it are removed; False for
    :func:`mmsearch.upsert_items`, which names only the items it adds or changes.
    ``skipped``: the live manifest's skipped files; one whose content hash is unchanged is not retried.
    ``keep``: ids added through the API (manifest ``api_items``): a complete sync leaves them in place.
    """
    known_bad = {s["id"]: s for s in skipped or []
                 if s.get("sha256") and hashes.get(s["id"]) == s["sha256"] and s["id"] not in previous}
    if not complete:
        return UpdatePlan(items=list(items), previous=previous, hashes=hashes, next_fid=next_fid)
    wanted = {it.id: it for it in items}
    kept = set(keep)
    removed = [row["fid"] for iid, row in previous.items() if iid not in wanted and iid not in kept]
    return UpdatePlan(items=list(wanted.values()), previous=previous, hashes=hashes, next_fid=next_fid,
                      removed=removed, known_bad={i: s for i, s in known_bad.items() if i in wanted})


@dataclass
class Embeddings:
    """What an encoder produced for a plan (in one process, or gathered from every rank)."""

    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # id -> channel -> (dim,)
    failed: dict[str, str] = field(default_factory=dict)  # id -> why its image could not be read
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) embedding of its full text


def resolve(plan: UpdatePlan, emb: Embeddings) -> tuple[BuildReport, list[Change], list[int], int]:
    """The store rows and vectors to write, given the plan and its embeddings.

    -> (report with the counts, changes, fids to remove: the plan's plus indexed items whose changed
    file no longer reads, the next free fid after the added items)
    """
    todo = plan.images
    missing = [it.id for it in todo if it.id not in emb.images and it.id not in emb.failed]
    if missing:
        raise MMSearchError(f"{len(missing)} item(s) have no embedding (first: {missing[0]}); re-run the build")
    report = BuildReport(out=Path(), snapshot=Path(), indexed=0)
    report.encoded = sum(1 for it in todo if it.id in emb.images)
    previous, next_fid = plan.previous, plan.next_fid
    failed_fids: list[int] = []
    failed = {**{iid: s["reason"] for iid, s in plan.known_bad.items()}, **emb.failed}
    report.not_retried = len(plan.known_bad)
    for iid, reason in failed.items():
        entry = {"id": iid, "reason": reason}
        if not plan.hashes.get(iid, "unreadable:").startswith("unreadable:"):
            entry["sha256"] = plan.hashes[iid]  # remembered: not retried until the file changes
        report.skipped.append(entry)
        if iid in previous:  # changed into something unreadable: it leaves the index
            failed_fids.append(previous[iid]["fid"])
    changes: list[Change] = []
    for it in plan.items:
        prev = previous.get(it.id)
        if it.id in failed:
            continue  # unreadable file
        full = it.full_text
        th = sha256_text(full) if full else None
        row = {"fid": prev["fid"] if prev else next_fid, "id": it.id, "path": it.path, "title": it.title,
               "text": it.text, "metadata": it.metadata, "image_sha256": plan.hashes[it.id], "text_sha256": th}
        if prev is None:
            next_fid += 1
            report.added += 1
        elif it.id in emb.images:
            report.updated += 1
        elif (prev["title"], prev["text"], prev["metadata"], prev["path"]) != (it.title, it.text, it.metadata, it.path):
            report.metadata_updated += 1
        else:
            report.unchanged += 1
            continue
        change = Change(row=row, vectors=dict(emb.images.get(it.id, {})))
        if text_to_encode(it, prev) is not None:
            if it.id not in emb.texts:
                raise MMSearchError(f"item {it.id} has no text embedding; re-run the build")
            change.vectors["text"] = emb.texts[it.id]
        elif th is None and prev is not None and prev["text_sha256"] is not None:
            change.drop_text = True
        changes.append(change)
    report.removed = len(plan.removed) + len(failed_fids)
    return report, changes, plan.removed + failed_fids, next_fid
