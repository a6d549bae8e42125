"""Embedding chunks on disk, and a background writer that writes them while the encoder computes.

One chunk is ``shard-NNNNNN.npz`` (one float16 array per channel, as the index stores them) plus
``shard-NNNNNN.json``, its done marker, written last: a chunk without a marker is incomplete and ignored.
(The files keep their ``shard-`` names: a distributed build resumes from the chunks an earlier run of the
same command left.) Distributed indexing (dist/runner.py) writes each slice a rank encodes as one chunk.

:class:`ChunkWriter` takes the encoder's batches through a bounded queue and writes them from one thread,
so writing overlaps the next batch's compute and an index build holds at most ``queue_size`` batches plus
one chunk of embeddings in memory while it encodes, however large the catalog.
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


def chunk_paths(folder: str | Path, chunk: int) -> tuple[Path, Path]:
    """(``shard-NNNNNN.npz``, ``shard-NNNNNN.json``) of chunk number ``chunk`` in ``folder``."""
    base = Path(folder) / f"shard-{chunk:06d}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def write_chunk(npz: Path, marker: Path, arrays: dict[str, np.ndarray], meta: dict, durable: bool = True) -> None:
    """Write the arrays as float16 (renamed into place), then the JSON marker: the chunk is done.

    ``durable``: fsync both, so a done marker survives a crash of the machine (chunks a re-run resumes
    from); without it a chunk is only as safe as the page cache (chunks of one build, never resumed).
    """
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            # float16, as the index stores them: the index writer rounds to float16 anyway, so this loses
            # nothing and halves the files (2 bytes x (384 + 1280 + 384) = 4 KB per item with `default`)
            halves: dict[str, Any] = {name: np.asarray(a).astype(np.float16) for name, a in arrays.items()}
            np.savez(fh, **halves)

    atomic_write(npz, save, durable=durable)
    atomic_write(marker, json.dumps(meta, ensure_ascii=False), durable=durable)  # written last: the chunk is done


def read_chunk(npz: Path, marker: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, marker meta) of a completed chunk; OSError / ValueError if it is missing or damaged."""
    meta = json.loads(marker.read_text(encoding="utf-8"))
    with np.load(npz) as z:
        arrays = {name: z[name] for name in z.files}
    return arrays, meta


class ChunkWriterError(MMSearchError):
    """Writing embedding chunks failed (disk full, permissions ...)."""


_STOP = object()


class ChunkWriter:
    """Writes ``put(positions, {channel: (n, dim) array})`` batches as chunks from one background thread.

    Rows are buffered until ``chunk_rows`` are there, then written as one chunk whose marker lists the
    rows' ``positions`` (any ints: the caller's item numbers). ``put`` blocks while ``queue_size`` batches
    wait, so a writer slower than the encoder bounds memory instead of growing it. An exception in the
    thread is raised in the caller (by the next ``put`` or by ``close``) as :class:`ChunkWriterError`.

    Use as a context manager: leaving it normally flushes and joins (``close``); leaving it by an
    exception stops the thread without writing more. ``durable``: fsync every chunk (see
    :func:`write_chunk`); off by default, as an index build reads its chunks back and deletes them.
    """

    def __init__(self, folder: str | Path, chunk_rows: int = 4096, queue_size: int = 8, durable: bool = False):
        if chunk_rows < 1 or queue_size < 1:
            raise MMSearchError(f"chunk rows and queue size must be at least 1, got {chunk_rows}, {queue_size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunk_rows = chunk_rows
        self.durable = durable
        self.chunks: list[int] = []  # numbers of the chunks written, in order
        self.rows = 0  # rows written
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._buffer: list[tuple[list[int], dict[str, np.ndarray]]] = []
        self._buffered = 0
        self._thread = threading.Thread(target=self._run, name="mmsearch-chunk-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ caller side
    def put(self, positions: Sequence[int], arrays: dict[str, np.ndarray]) -> None:
        """Queue one batch (its arrays must not be modified afterwards); blocks while the queue is full."""
        if len(positions) == 0:
            return
        self._send((list(map(int, positions)), arrays))

    def close(self) -> list[int]:
        """Write what is buffered, wait for the thread, and return the chunk numbers written."""
        self._send(_STOP)
        self._thread.join()
        self._raise()
        return list(self.chunks)

    def abort(self) -> None:
        """Stop the thread without writing what is still queued or buffered."""
        self._error = self._error or ChunkWriterError("aborted")
        while self._thread.is_alive():
            try:  # unblock a thread waiting on an empty queue
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass
            self._thread.join(timeout=0.1)

    def __enter__(self) -> "ChunkWriter":
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
                raise ChunkWriterError("the chunk writer thread has stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None:
            if isinstance(self._error, ChunkWriterError):
                raise self._error
            raise ChunkWriterError(f"writing embedding chunks to {self.folder} failed: {self._error}") \
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
                if self._buffered >= self.chunk_rows:
                    self._flush()
            if self._error is None:
                self._flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc

    def _flush(self) -> None:
        if not self._buffered:
            return
        chunk = len(self.chunks)
        positions = [p for pos, _ in self._buffer for p in pos]
        names = list(self._buffer[0][1])
        arrays = {name: np.concatenate([a[name] for _, a in self._buffer]) for name in names}
        npz, marker = chunk_paths(self.folder, chunk)
        write_chunk(npz, marker, arrays, {"chunk": chunk, "positions": positions}, durable=self.durable)
        self.chunks.append(chunk)
        self.rows += len(positions)
        self._buffer, self._buffered = [], 0
        crash_point("chunk-written")  # test hook: SIGKILL after a chunk is written


def assemble(folder: str | Path, chunks: Sequence[int], dims: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read chunks into one array per channel, rows in ascending position order.

    -> (positions (n,) int64 ascending, {channel: (n, dim) float16}). Holds the result and one chunk.
    """
    metas = []
    for chunk in chunks:
        npz, marker = chunk_paths(folder, chunk)
        try:
            metas.append(json.loads(marker.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ChunkWriterError(f"embedding chunk {marker} is missing or damaged ({exc})") from None
    positions = np.asarray([p for m in metas for p in m["positions"]], np.int64)
    ordered = np.sort(positions)
    if len(ordered) and np.any(ordered[1:] == ordered[:-1]):
        raise ChunkWriterError(f"embedding chunks in {folder} hold a position twice")
    out = {name: np.empty((len(ordered), dim), np.float16) for name, dim in dims.items()}
    for chunk, meta in zip(chunks, metas):
        try:
            arrays, _ = read_chunk(*chunk_paths(folder, chunk))
        except (OSError, ValueError) as exc:
            raise ChunkWriterError(f"embedding chunk {chunk} in {folder} is unreadable ({exc})") from None
        rows = np.searchsorted(ordered, np.asarray(meta["positions"], np.int64))  # destination rows
        for name in dims:
            out[name][rows] = arrays[name]
    return ordered, out
