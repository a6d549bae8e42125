"""Reading images safely: the one gate every decoded image passes (``load_image``), raw JPEG bytes for
on-device decoding, and the dataset / collate functions that feed the encoder.

A bad image never stops a run: it is skipped with a reason.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError
from .formats import is_raw_name
from .gate import check_regular_file, open_image, to_uint8_grey
from .tar_shards import read_member

if TYPE_CHECKING:  # torch only where tensors are made: load_image serves processes without it
    import torch
    from torch.utils.data import Dataset as _Dataset
else:
    _Dataset = object  # DataLoader needs only __len__ and __getitem__ of a map-style dataset

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not grey pixels


def _reduced(im: Image.Image, size: int) -> Image.Image:
    """``im`` shrunk by the largest integer factor that keeps its long side at least ``size`` (box filter),
    in its own mode where Pillow can average it (a palette or bilevel image is converted first)."""
    factor = max(im.size) // size
    if factor < 2:
        return im
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    try:
        small = im.reduce(factor)
    except ValueError:  # a mode reduce() cannot average (16-bit, ...): converted at full size later
        return im
    small.info["decoded_size"] = im.size  # what the decode held (conversions copy info along)
    return small


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white (product shots), 16-bit is scaled."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype("uint8"), "L")
    elif im.mode == "F":  # float32 TIFFs; Pillow 13's point() no longer takes a lambda for F
        im = to_uint8_grey(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV ...


def load_image(source: str | Path | bytes | Image.Image, draft_size: int | None = None,  # noqa: C901  (one gate, in the order the checks must run: header, size, decode, rotation)
               reduce: bool = False) -> Image.Image:
    """Open an image from a path, bytes or a PIL image and return it as RGB, upright (EXIF applied).

    ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling) when the image is much larger. With
    ``reduce`` as well, any other format is shrunk by an integer factor (long side kept at least
    ``draft_size``) right after decoding, before a mode conversion or an EXIF rotation copies it: one
    full-size buffer at most, then only small ones (thumbnails).
    Raises :class:`ImageDecodeError` with a human-readable reason for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        im = source
    else:
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            try:  # a member of a tar shard, addressed as <tar>/<member>
                member = read_member(source)
            except OSError:
                member = None
            if member is None:
                if os.path.exists(source):
                    check_regular_file(source)  # a FIFO or a device: refused, never read
                raise ImageDecodeError(f"no such file: {source}")
            source = member
        if isinstance(source, (str, Path)):
            p = Path(source)
            if p.stat().st_size == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            fp: Any = str(p)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageDecodeError("empty image data (0 bytes)")
            fp = io.BytesIO(bytes(source))
        else:
            raise ImageDecodeError(f"unsupported image source of type {type(source).__name__}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = open_image(fp)  # the one gate: format, pixel count and aspect from the header
                if getattr(im, "is_animated", False):
                    im.seek(0)  # animated GIF / WebP: first frame
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                if reduce and draft_size:
                    im = _reduced(im, draft_size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(f"image too large (decompression-bomb guard): {exc}") from None
        except UnidentifiedImageError:
            raise ImageDecodeError("not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception as exc:  # broken EXIF should not lose an otherwise fine image
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
    try:
        return _to_rgb(im)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot convert image mode {im.mode}: {exc}") from None


@dataclass
class RawJpeg:
    """A JPEG's undecoded bytes, to be decoded in batch on the model's device (``torchvision.io.decode_jpeg``)."""

    data: torch.Tensor  # (n,) uint8


def read_device_jpeg(path: str | Path) -> RawJpeg | None:
    """The file's bytes if it is a JPEG that a device decoder renders exactly like :func:`load_image`:
    baseline, RGB or greyscale, upright (no EXIF rotation), not oversized. Anything else -> None, and the
    caller decodes it with PIL (which also produces the reason when a file is bad)."""
    if is_raw_name(path):  # decoded by rawpy, never a plain JPEG
        return None
    try:
        check_regular_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as im:  # reads the header only
                if (im.format != "JPEG" or im.mode not in ("RGB", "L") or im.info.get("progressive")
                        or im.info.get("progression") or im.getexif().get(0x0112, 1) not in (None, 1)):
                    return None
        with open(path, "rb") as fh:
            data = bytearray(fh.read())
    except Exception:  # unreadable here -> PIL path, which reports why
        return None
    import torch

    return RawJpeg(torch.frombuffer(data, dtype=torch.uint8)) if data else None


class CatalogDataset(_Dataset):
    """Items -> (position, preprocessed tensor) or (position, reason) for images that fail to load.

    With ``raw_jpeg``, plain JPEGs come back as :class:`RawJpeg` (decoded later on the device).
    """

    def __init__(self, paths: list[str], preprocess: Callable[[Image.Image], torch.Tensor],
                 draft_size: int | None = None, raw_jpeg: bool = False):
        self.paths = paths
        self.preprocess = preprocess
        self.draft_size = draft_size
        self.raw_jpeg = raw_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | RawJpeg | str]:
        try:
            if self.raw_jpeg:
                raw = read_device_jpeg(self.paths[i])
                if raw is not None:
                    return i, raw
            return i, self.preprocess(load_image(self.paths[i], self.draft_size))
        except ImageDecodeError as exc:
            return i, str(exc)
        except Exception as exc:  # never let one file stop a run
            return i, f"unreadable image: {type(exc).__name__}: {exc}"


def collate_images(batch: list[tuple[int, torch.Tensor | str]]):
    """-> (positions of good images, stacked tensors or None, [(position, reason)] of failures)."""
    import torch

    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in batch if not isinstance(x, torch.Tensor)]
    tensors = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], tensors, bad


@dataclass
class ImageBatch:
    """One loader step: images decoded on the CPU, JPEGs left for the device, and failures."""

    positions: list[int]  # of the rows of ``images``
    images: torch.Tensor | None  # (B, 3, S, S)
    jpeg_positions: list[int] = field(default_factory=list)
    jpegs: list[torch.Tensor] = field(default_factory=list)  # raw bytes, one (n,) uint8 tensor each
    failed: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> "ImageBatch":  # called by DataLoader(pin_memory=True)
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_batch(batch: list[tuple[int, torch.Tensor | RawJpeg | str]]) -> ImageBatch:
    import torch

    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    raw = [(i, x) for i, x in batch if isinstance(x, RawJpeg)]
    return ImageBatch(positions=[i for i, _ in good], images=torch.stack([x for _, x in good]) if good else None,
                      jpeg_positions=[i for i, _ in raw], jpegs=[x.data for _, x in raw],
                      failed=[(i, x) for i, x in batch if isinstance(x, str)])
