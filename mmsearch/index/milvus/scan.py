"""Reading many rows: every row of a collection matching an expression, without Milvus' result caps.

On a server: pymilvus' query iterator (pages by primary key). On Milvus Lite, plain queries: Lite caps
no result size, and its server lacks the timestamp call the iterator starts with (pymilvus then logs an
error and a warning on every scan). A Lite scan of a whole channel goes in windows of fids, so a million
vectors are never one reply.
"""

from __future__ import annotations

from typing import Any, Iterator

WINDOW = 50_000  # fids per Milvus Lite query of a whole collection


def scan(client: Any, collection: str, expr: str, fields: list[str], lite: bool,
         upper: int | None = None, batch: int = 2000) -> Iterator[dict]:
    """Rows matching ``expr`` ("" = all) with ``fields``. ``upper``: every fid is below it (Milvus Lite reads
    ``[0, upper)`` in windows; None: one query)."""
    if not lite:
        it = client.query_iterator(collection, batch_size=batch, filter=expr, output_fields=fields)
        try:
            while True:
                rows = it.next()
                if not rows:
                    return
                yield from rows
        finally:
            it.close()
    if upper is None:
        yield from client.query(collection, filter=expr or "fid >= 0", output_fields=fields)
        return
    for lo in range(0, max(0, int(upper)), WINDOW):
        window = f"fid >= {lo} and fid < {lo + WINDOW}"
        yield from client.query(collection, filter=f"({expr}) and {window}" if expr else window, output_fields=fields)
