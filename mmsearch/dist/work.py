"""What every distributed index build shares, into a folder (runner.py) or into Milvus (milvus.py): the
listing's digest every rank checks, the piece count, the crash hook of the tests and the result type."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..catalog.scan import CatalogItem
from ..fsutil import crash_point
from ..index.plan import BuildReport
from .env import DistEnv


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


def num_slices_for(n: int, world_size: int, shard_size: int) -> int:
    """Shards of about ``shard_size`` items, and at least one per rank. The count does not depend on
    the world size once the catalog is larger than ``world_size * shard_size``, so a resumed run may
    use another number of ranks and still find its completed pieces."""
    return max(1, min(n, max(world_size, math.ceil(n / max(1, shard_size)))))


def crash_hook(env: DistEnv, name: str) -> None:
    """Test hook: ``MMSEARCH_CRASH_AT=name MMSEARCH_CRASH_RANK=r`` kills rank r here (SIGKILL)."""
    if os.environ.get("MMSEARCH_CRASH_RANK") == str(env.rank):
        crash_point(name)
