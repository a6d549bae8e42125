"""Phone and camera formats behind the image gate: HEIC/HEIF, AVIF and camera RAW (DNG, CR2, NEF, ARW).

They come with the optional ``formats`` extra (``pip install 'mmsearch[formats]'``):

  HEIC / HEIF  ``pillow-heif`` registers a Pillow plugin (libheif applies the file's rotation on decode);
  AVIF         Pillow >= 11.3 reads it natively (the extra asks for that Pillow); on an older Pillow the
               ``pillow-avif-plugin`` package is used when it is installed;
  RAW          ``rawpy`` (LibRaw): the sensor data is demosaiced at half resolution with the camera's white
               balance (the model sees ~256 px, so the full 24+ MP would only cost time), turned upright by
               LibRaw from the file's orientation, 8 bits per channel.

A file that needs a missing package is rejected with one line that names the extra, so an index run
reports it among the skipped files instead of as an unknown format.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import IO, Any

from PIL import Image, features

from ..errors import ImageDecodeError

log = logging.getLogger(__name__)

HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
AVIF_EXTENSIONS = frozenset({".avif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".nef", ".arw"})
EXTRA_EXTENSIONS = HEIF_EXTENSIONS | AVIF_EXTENSIONS | RAW_EXTENSIONS
EXTRA_HINT = "pip install 'mmsearch[formats]'"

# ISO-BMFF brands (bytes 8..12 of the ``ftyp`` box) of HEIF stills and image sequences, and of AVIF
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

_registered = False


def register_plugins() -> None:
    """Register the optional Pillow plugins that are installed (once per process)."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        log.debug("pillow-heif is not installed: HEIC/HEIF images are not read")
    if not features.check("avif"):
        try:
            import pillow_avif  # noqa: F401 (registers the AVIF plugin on import)
        except ImportError:
            log.debug("this Pillow has no AVIF support and pillow-avif-plugin is not installed")


def has_rawpy() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def supported() -> dict[str, bool]:
    """Which optional formats this installation reads: {"HEIF": ..., "AVIF": ..., "RAW": ...}."""
    register_plugins()
    Image.init()
    return {"HEIF": "HEIF" in Image.OPEN, "AVIF": "AVIF" in Image.OPEN, "RAW": has_rawpy()}


def is_raw_name(name: str | Path) -> bool:
    return os.path.splitext(str(name))[1].lower() in RAW_EXTENSIONS


def sniff(head: bytes) -> str | None:
    """"HEIF", "AVIF" or "RAW" from a file's first bytes (ISO-BMFF brand; a CR2 or DNG TIFF header), else None.

    NEF and ARW look like plain TIFFs from the outside: they are recognised by their file name only.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS or b"avif" in head[16:64]:  # compatible brands follow the major one
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if head[:4] in (b"II*\0", b"MM\0*"):
        if head[8:10] == b"CR":  # Canon CR2: "CR" right after the TIFF header
            return "RAW"
        if _tiff_has_tag(head, 50706):  # DNGVersion in IFD0
            return "RAW"
    return None


def _tiff_has_tag(head: bytes, tag: int) -> bool:
    import struct

    e = "<" if head[:2] == b"II" else ">"
    try:
        (off,) = struct.unpack(e + "I", head[4:8])
        (n,) = struct.unpack(e + "H", head[off:off + 2])
        return any(struct.unpack(e + "H", head[off + 2 + 12 * i: off + 4 + 12 * i])[0] == tag for i in range(n))
    except struct.error:  # IFD0 beyond what was read
        return False


def missing_extra(kind: str) -> str | None:
    """The one-line reason a ``kind`` (sniff's answer) image cannot be read here, or None when it can."""
    have = supported()
    if kind in have and not have[kind]:
        what = {"HEIF": "HEIC/HEIF", "AVIF": "AVIF", "RAW": "camera RAW"}[kind]
        return f"{what} image: reading it needs the optional formats extra ({EXTRA_HINT})"
    return None


def read_head(fp: str | Path | IO[bytes], n: int = 64) -> bytes:
    """The first ``n`` bytes of a path or a seekable file object (whose position is restored)."""
    if isinstance(fp, (str, Path)):
        with open(fp, "rb") as fh:
            return fh.read(n)
    pos = fp.tell()
    try:
        fp.seek(0)
        return fp.read(n)
    finally:
        fp.seek(pos)


def open_raw(fp: str | Path | IO[bytes], check_size: Any) -> Image.Image:
    """Decode a camera RAW file through rawpy after ``check_size((width, height))`` on its header.

    Returns an upright RGB image, already decoded. Raises ImageDecodeError (the gate's ImageRejected comes
    from ``check_size``) for a missing rawpy or a file LibRaw cannot read.
    """
    why = missing_extra("RAW")
    if why is not None:
        raise ImageDecodeError(why)
    import rawpy

    if not isinstance(fp, (str, Path)):
        fp.seek(0)
    source: Any = str(fp) if isinstance(fp, (str, Path)) else io.BytesIO(fp.read())
    try:
        with warnings.catch_warnings():
            # rawpy warns in every forked process (DataLoader workers): OpenMP state copied from a parent
            # that had already run LibRaw's thread pool could deadlock. Index builds decode RAW files in
            # the workers only, never in the parent, so the pool each worker starts is its own.
            warnings.filterwarnings("ignore", "rawpy is being used in a process created by multiprocessing")
            raw = rawpy.imread(source)  # parses the header only
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or unsupported RAW file: {exc}") from None
    with raw:
        sizes = raw.sizes
        check_size((sizes.width, sizes.height))
        try:
            rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)  # (H, W, 3) uint8, upright
        except (rawpy.LibRawError, MemoryError, ValueError) as exc:
            raise ImageDecodeError(f"corrupt or unsupported RAW file: {exc}") from None
    im = Image.fromarray(rgb, "RGB")
    im.format = "RAW"  # type: ignore[misc]
    return im
