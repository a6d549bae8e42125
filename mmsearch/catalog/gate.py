"""The one gate every image passes before anything decodes it: index, query, API and server alike.

Checks, in order, all before a single pixel is decoded:
  1. a path must be a regular file (a FIFO, a socket or a link to ``/dev/zero`` would hang the reader);
  2. the bytes must be one of :data:`FORMATS` (Pillow's ICO plugin, for one, decodes an embedded PNG
     inside ``Image.open``, so it could not be checked before decoding);
  3. width x height from the header must be at most ``max_pixels`` (decompression bombs);
  4. the long side must be at most :data:`MAX_ASPECT` times the short side: the preprocess scales the
     short side up to ~256 px, so a 201-byte 40000 x 1 PNG would otherwise become gigabytes.

HEIC/HEIF, AVIF and camera RAW come with the ``formats`` extra (catalog/formats.py): HEIF and AVIF are
Pillow plugins like the rest; a RAW file (by its name, or a DNG / CR2 header) goes to rawpy, whose header
passes checks 3 and 4 before LibRaw decodes it, so its image comes back already decoded. A file of one
of these formats without its package is rejected with a line naming the extra.

Rejections raise :class:`ImageRejected` (an ImageDecodeError) whose ``kind`` says which check failed,
so the server can answer 415 or 400 and the index can report the file as skipped with the reason.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from ..errors import ImageDecodeError
from .formats import is_raw_name, missing_extra, open_raw, read_head, register_plugins, sniff

# MPO: multi-picture JPEGs from phones; HEIF and AVIF: when their plugins are there (catalog/formats.py)
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
MAX_ASPECT = 20


class ImageRejected(ImageDecodeError):
    """An image refused by the gate. ``kind``: file, empty, format, bomb, shape or corrupt."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_regular_file(path: str | Path) -> None:
    """Raise ImageRejected unless ``path`` (links followed) is a regular file; OSError if it is gone."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected("file", "not a regular file (a FIFO, device, socket or folder); only plain files "
                                    "are read")


def check_size(size: tuple[int, int], max_pixels: int | None = None) -> None:
    """Pixel-count and aspect limits on a header's (width, height)."""
    w, h = size
    limit = (Image.MAX_IMAGE_PIXELS or 89_478_485) if max_pixels is None else max_pixels  # Pillow's warning level
    if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
        raise ImageRejected("shape", f"{w}x{h} is too elongated (more than {MAX_ASPECT}:1); resizing its short "
                                     f"side to the model's input would blow up its long side")
    if w * h > limit:
        raise ImageRejected("bomb", f"{w}x{h} pixels is more than the limit of {limit:,} "
                                    f"(decompression-bomb guard)")


def open_image(fp: str | Path | IO[bytes], max_pixels: int | None = None) -> Image.Image:
    """Open ``fp`` lazily (header read, nothing decoded) after every check of this module.

    The caller decodes (``im.load()``) and closes the image. A camera RAW file comes back decoded.
    """
    if isinstance(fp, (str, Path)):
        check_regular_file(fp)
    register_plugins()  # HEIF / AVIF plugins of the formats extra, when installed
    Image.init()  # registers every plugin once, so ``formats`` below can name them
    is_path = isinstance(fp, (str, Path))  # a path is known as RAW by its name, uploaded bytes by their header
    if (is_path and is_raw_name(fp)) or (not is_path and _sniff(fp) == "RAW"):  # type: ignore[arg-type]
        return _open_raw(fp, max_pixels)
    readable = [f for f in FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=readable)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("bomb", f"image too large (decompression-bomb guard): {exc}") from None
    except UnidentifiedImageError:
        kind = _sniff(fp)
        if kind == "RAW":  # a DNG or CR2 under another name
            return _open_raw(fp, max_pixels)
        why = missing_extra(kind) if kind else None  # a HEIC without pillow-heif: say which extra reads it
        raise ImageRejected("format", why or f"not a recognised image format (read: {', '.join(readable)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("corrupt", f"corrupt or truncated image: {exc}") from None
    try:
        check_size(im.size, max_pixels)
    except ImageRejected:
        im.close()
        raise
    return im


def _sniff(fp: str | Path | IO[bytes]) -> str | None:
    try:
        return sniff(read_head(fp, 4096))
    except OSError:
        return None


def _open_raw(fp: str | Path | IO[bytes], max_pixels: int | None) -> Image.Image:
    why = missing_extra("RAW")
    if why is not None:
        raise ImageRejected("format", why)
    try:
        return open_raw(fp, lambda size: check_size(size, max_pixels))
    except ImageRejected:
        raise
    except ImageDecodeError as exc:
        raise ImageRejected("corrupt", str(exc)) from None


def to_uint8_grey(arr: Any) -> Image.Image:
    """A float image array (mode F: any range, NaN and inf included) -> an L image.

    Values in [0, 1] are taken as fractions of white, larger ones as 0..255 levels (what the old
    per-pixel ``point`` rule meant); NaN becomes black, infinities clip.
    """
    import numpy as np

    a = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    a = np.where(a <= 1.0, a * 255.0, a)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8), "L")
