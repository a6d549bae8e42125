"""Files the server touches: catalog images (only those of the index), their thumbnails, and uploads."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import io
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from ..catalog.gate import ImageRejected, open_image
from ..catalog.images import load_image
from ..catalog.tar_shards import members, split_member_path, stat_path
from ..errors import MMSearchError


class UploadRejected(Exception):
    """An upload the server will not decode; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def catalog_file(root: Path, item_path: str) -> Path | None:
    """The real file behind an indexed item, or None when it is gone or resolves outside ``root``.

    ``root`` is the resolved catalog folder. Only paths that come from the index's own item rows are
    ever passed here (never a path from a request), and symlinks are resolved first, so a link that was
    planted in the catalog and points elsewhere is refused.
    """
    member = split_member_path(item_path)  # an image inside a tar shard: check the tar, then the member
    try:
        real = Path(member[0] if member else item_path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    if member:
        try:
            if member[1] not in members(str(real)):
                return None
        except (MMSearchError, OSError):
            return None
        return Path(f"{real}/{member[1]}")
    return real


def probe_upload(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Read an uploaded image's header only: (format, (width, height)); decoding happens later.

    Raises UploadRejected: 415 for data that is not an image, 400 for a decompression bomb (more than
    ``max_pixels`` pixels, whatever the file size).
    """
    if not data:
        raise UploadRejected(400, "the uploaded image is empty (0 bytes)")
    try:
        with open_image(io.BytesIO(data), max_pixels) as im:  # the one image gate (catalog/gate.py)
            fmt, size = im.format or "?", im.size
    except ImageRejected as exc:
        if exc.kind == "format":
            raise UploadRejected(415, "the upload is not an image in a supported format (JPEG, PNG, WebP, GIF, "
                                      "BMP, TIFF)") from None
        raise UploadRejected(400, f"image rejected: {exc}") from None
    return fmt, size


class ThumbnailCache:
    """Small WebP thumbnails of catalog images, made on first request and kept in an LRU bounded by bytes.

    The key covers the file's real path, size and modification time, so a changed file gets a new
    thumbnail (and a new ETag). Memory is bounded three ways: a decode shrinks the image at once (JPEG
    DCT scaling, an integer reduce for other formats, see ``load_image(reduce=True)``); at most ``workers``
    decodes run at once, in a pool of their own (requests waiting for one hold no thread); and concurrent
    requests for one file share its one decode. After a large decode the freed heap is handed back to the
    operating system.
    """

    def __init__(self, size: int = 256, max_bytes: int = 64 * 1024 * 1024, workers: int = 2):
        self.size = int(size)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="mmsearch-thumb")
        self._inflight: dict[str, Future] = {}  # tag -> the decode every request for it waits on
        self.hits = 0
        self.misses = 0
        self.shared = 0  # requests that waited on a decode another request had started

    def etag(self, path: Path) -> str:
        st = stat_path(str(path))  # the file's, or for a tar member its tar's
        if st is None:
            raise FileNotFoundError(f"no such file: {path}")
        raw = f"{path}|{st[0]}|{st[1]}|{self.size}".encode()
        return hashlib.sha1(raw).hexdigest()[:20]

    def submit(self, path: Path, tag: str) -> Future:
        """A future of the WebP bytes for ``path`` (whose ETag is ``tag``): done at once from the cache,
        else the decode already in flight for it, else a new one queued on the pool."""
        with self._lock:
            data = self._items.get(tag)
            if data is not None:
                self._items.move_to_end(tag)
                self.hits += 1
                done: Future = Future()
                done.set_result(data)
                return done
            future = self._inflight.get(tag)
            if future is not None and not future.cancelled():  # (cancelled only by close())
                self.shared += 1
                return future
            self.misses += 1
            future = self._pool.submit(self._make, path, tag)
            self._inflight[tag] = future
            return future

    def _make(self, path: Path, tag: str) -> bytes:
        try:
            data = make_thumbnail(path, self.size)
        except BaseException:
            with self._lock:
                self._inflight.pop(tag, None)
            raise
        with self._lock:  # cached before it leaves the in-flight map: no window without either
            if tag not in self._items and len(data) <= self.max_bytes:
                self._items[tag] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old)
            self._inflight.pop(tag, None)
        return data

    async def fetch(self, path: Path, tag: str) -> bytes:
        """The WebP bytes (awaited without holding a thread); raises what the decode raised.

        Shielded: a request that goes away must not cancel a decode other requests are waiting on."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(path, tag)))

    def get(self, path: Path) -> tuple[bytes, str]:
        """(WebP bytes, ETag) for the image at ``path``, blocking; raises ImageDecodeError if it cannot be read."""
        tag = self.etag(path)
        return self.submit(path, tag).result(), tag

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


BIG_DECODE_PIXELS = 4_000_000  # after decoding more, the freed buffers are handed back to the OS


def make_thumbnail(path: Path, size: int) -> bytes:
    """WebP bytes of the image at ``path`` fitted into ``size`` x ``size`` (aspect kept, never enlarged)."""
    im = load_image(path, draft_size=2 * size, reduce=True)  # RGB, upright, bomb-guarded, shrunk on decode
    big = _header_pixels(im) >= BIG_DECODE_PIXELS
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=80, method=4)
    del im
    if big:
        release_free_memory()
    return buf.getvalue()


def _header_pixels(im: Image.Image) -> int:
    w, h = im.info.get("decoded_size", im.size)  # set by load_image(reduce=True) when it shrank the decode
    return int(w) * int(h)


def release_free_memory() -> None:
    """Give freed heap back to the OS (glibc keeps large freed buffers in its arenas: 4.6 GB stayed held
    after 20 thumbnails of one 64 MP BMP). A no-op where ``malloc_trim`` does not exist."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
