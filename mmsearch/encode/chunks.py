"""Embedding shards on disk, and a background writer that writes them while the encoder computes.

One shard is ``shard-NNNNNN.npz`` (one float16 array per channel, as the index stores them) plus
``shard-NNNNNN.json``, its done marker, written last: a shard without a marker is incomplete and
ignored. Distributed indexing (dist/runner.py) writes its per-rank shards the same way.

:class:`ShardWriter` takes the encoder's batches through a bounded queue and writes them from one thread,
so writing overlaps the next batch's compute and an index build holds at most ``queue_size`` batches plus
one shard of embeddings in memory while it encodes, however large the catalog.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MMSearchError
from ..fsutil import atomic_write, crash_point

log = logging.getLogger(__name__)


def shard_paths(folder: str | Path, shard: int) -> tuple[Path, Path]:
    """(``shard-NNNNNN.npz``, ``shard-NNNNNN.json``) of shard number ``shard`` in ``folder``."""
    base = Path(folder) / f"shard-{shard:06d}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def write_shard(npz: Path, marker: Path, arrays: dict[str, np.ndarray], meta: dict, durable: bool = True) -> None:
    """Write the arrays as float16 (renamed into place), then the JSON marker: the shard is done.

    ``durable``: fsync both, so a done marker survives a crash of the machine (shards a re-run resumes
    from); without it a shard is only as safe as the page cache (shards of one build, never resumed).
    """
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            # float16, as the index stores them: the index writer rounds to float16 anyway, so this loses
            # nothing and halves the files (2 bytes x (384 + 1280 + 384) = 4 KB per item with `default`)
            halves: dict[str, Any] = {name: np.asarray(a).astype(np.float16) for name, a in arrays.items()}
            np.savez(fh, **halves)

    atomic_write(npz, save, durable=durable)
    atomic_write(marker, json.dumps(meta, ensure_ascii=False), durable=durable)  # written last: the shard is done


def read_shard(npz: Path, marker: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, marker meta) of a completed shard; OSError / ValueError if it is missing or damaged."""
    meta = json.loads(marker.read_text(encoding="utf-8"))
    with np.load(npz) as z:
        arrays = {name: z[name] for name in z.files}
    return arrays, meta


class ShardWriterError(MMSearchError):
    """Writing embedding shards failed (disk full, permissions ...)."""


_STOP = object()


class ShardWriter:
    """Writes ``put(positions, {channel: (n, dim) array})`` batches as shards from one background thread.

    Rows are buffered until ``shard_rows`` are there, then written as one shard whose marker lists the
    rows' ``positions`` (any ints: the caller's item numbers). ``put`` blocks while ``queue_size`` batches
    wait, so a writer slower than the encoder bounds memory instead of growing it. An exception in the
    thread is raised in the caller (by the next ``put`` or by ``close``) as :class:`ShardWriterError`.

    Use as a context manager: leaving it normally flushes and joins (``close``); leaving it by an
    exception stops the thread without writing more. ``durable``: fsync every shard (see
    :func:`write_shard`); off by default, as an index build reads its shards back and deletes them.
    """

    def __init__(self, folder: str | Path, shard_rows: int = 4096, queue_size: int = 8, durable: bool = False):
        if shard_rows < 1 or queue_size < 1:
            raise MMSearchError(f"shard rows and queue size must be at least 1, got {shard_rows}, {queue_size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_rows = shard_rows
        self.durable = durable
        self.shards: list[int] = []  # numbers of the shards written, in order
        self.rows = 0  # rows written
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._buffer: list[tuple[list[int], dict[str, np.ndarray]]] = []
        self._buffered = 0
        self._thread = threading.Thread(target=self._run, name="mmsearch-shard-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ caller side
    def put(self, positions: Sequence[int], arrays: dict[str, np.ndarray]) -> None:
        """Queue one batch (its arrays must not be modified afterwards); blocks while the queue is full."""
        if len(positions) == 0:
            return
        self._send((list(map(int, positions)), arrays))

    def close(self) -> list[int]:
        """Write what is buffered, wait for the thread, and return the shard numbers written."""
        self._send(_STOP)
        self._thread.join()
        self._raise()
        return list(self.shards)

    def abort(self) -> None:
        """Stop the thread without writing what is still queued or buffered."""
        self._error = self._error or ShardWriterError("aborted")
        while self._thread.is_alive():
            try:  # unblock a thread waiting on an empty queue
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass
            self._thread.join(timeout=0.1)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _send(self, item) -> None:
        while True:
            self._raise()
            if not self._thread.is_alive():
                raise ShardWriterError("the shard writer thread has stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None:
            if isinstance(self._error, ShardWriterError):
                raise self._error
            raise ShardWriterError(f"writing embedding shards to {self.folder} failed: {self._error}") \
                from self._error

    # ------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP or self._error is not None:
                    break
                self._buffer.append(item)
                self._buffered += len(item[0])
                if self._buffered >= self.shard_rows:
                    self._flush()
            if self._error is None:
                self._flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc

    def _flush(self) -> None:
        if not self._buffered:
            return
        shard = len(self.shards)
        positions = [p for pos, _ in self._buffer for p in pos]
        names = list(self._buffer[0][1])
        arrays = {name: np.concatenate([a[name] for _, a in self._buffer]) for name in names}
        npz, marker = shard_paths(self.folder, shard)
        write_shard(npz, marker, arrays, {"shard": shard, "positions": positions}, durable=self.durable)
        self.shards.append(shard)
        self.rows += len(positions)
        self._buffer, self._buffered = [], 0
        crash_point("shard-written")  # test hook: SIGKILL after a shard is written


def assemble(folder: str | Path, shards: Sequence[int], dims: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read shards into one array per channel, rows in ascending position order.

    -> (positions (n,) int64 ascending, {channel: (n, dim) float16}). Holds the result and one shard.
    """
    metas = []
    for shard in shards:
        npz, marker = shard_paths(folder, shard)
        try:
            metas.append(json.loads(marker.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ShardWriterError(f"embedding shard {marker} is missing or damaged ({exc})") from None
    positions = np.asarray([p for m in metas for p in m["positions"]], np.int64)
    ordered = np.sort(positions)
    if len(ordered) and np.any(ordered[1:] == ordered[:-1]):
        raise ShardWriterError(f"embedding shards in {folder} hold a position twice")
    out = {name: np.empty((len(ordered), dim), np.float16) for name, dim in dims.items()}
    for shard, meta in zip(shards, metas):
        try:
            arrays, _ = read_shard(*shard_paths(folder, shard))
        except (OSError, ValueError) as exc:
            raise ShardWriterError(f"embedding shard {shard} in {folder} is unreadable ({exc})") from None
        rows = np.searchsorted(ordered, np.asarray(meta["positions"], np.int64))  # destination rows
        for name in dims:
            out[name][rows] = arrays[name]
    return ordered, out
