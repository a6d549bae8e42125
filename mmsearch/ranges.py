"""Contiguous splits of ``range(n)``: the slices of a catalog that torchrun ranks encode, the parts of an IVF
build, a rank's rows of a global training batch."""

from __future__ import annotations


def even_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``parts`` contiguous [start, end) ranges whose sizes differ by at most one."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def slices_of_rank(count: int, rank: int, world_size: int) -> list[int]:
    """Slice ``i`` (of ``count``) belongs to rank ``i % world_size``: interleaved, so every rank gets early and
    late slices of a sorted listing (folders of big and small files spread evenly)."""
    return list(range(rank, count, world_size))
