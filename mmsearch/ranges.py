"""Contiguous splits of ``range(n)``: torchrun ranks' shares of a catalog and the parts of an IVF build."""

from __future__ import annotations


def shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``num_shards`` contiguous [start, end) ranges whose sizes differ by at most one."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    base, extra = divmod(n, num_shards)
    out, start = [], 0
    for i in range(num_shards):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def shards_of_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shard ``i`` belongs to rank ``i % world_size``: interleaved, so every rank gets early and late
    parts of a sorted listing (folders of big and small files spread evenly)."""
    return list(range(rank, num_shards, world_size))
