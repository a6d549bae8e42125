"""Files the server touches: catalog images (only those of the index), their thumbnails, and uploads."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from ..catalog.gate import MAX_ASPECT, ImageRejected, open_image  # noqa: F401 (MAX_ASPECT re-exported)
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
        with open_image(io.BytesIO(data), max_pixels) as im:  # the one image gate (mmsearch/images.py)
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
    thumbnail (and a new ETag).
    """

    def __init__(self, size: int = 256, max_bytes: int = 64 * 1024 * 1024):
        self.size = int(size)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def etag(self, path: Path) -> str:
        st = stat_path(str(path))  # the file's, or for a tar member its tar's
        if st is None:
            raise FileNotFoundError(f"no such file: {path}")
        raw = f"{path}|{st[0]}|{st[1]}|{self.size}".encode()
        return hashlib.sha1(raw).hexdigest()[:20]

    def get(self, path: Path) -> tuple[bytes, str]:
        """(WebP bytes, ETag) for the image at ``path``; raises ImageDecodeError if it cannot be read."""
        tag = self.etag(path)
        with self._lock:
            data = self._items.get(tag)
            if data is not None:
                self._items.move_to_end(tag)
                self.hits += 1
                return data, tag
            self.misses += 1
        data = make_thumbnail(path, self.size)
        with self._lock:
            if tag not in self._items and len(data) <= self.max_bytes:
                self._items[tag] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old)
        return data, tag


def make_thumbnail(path: Path, size: int) -> bytes:
    """WebP bytes of the image at ``path`` fitted into ``size`` x ``size`` (aspect kept, never enlarged)."""
    im = load_image(path, draft_size=2 * size)  # RGB, upright, bomb-guarded
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()
