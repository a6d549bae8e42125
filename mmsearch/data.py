"""Catalog scanning and robust image loading.

A catalog is a folder; every image file below it is one item whose id is its relative path with ``/``
separators. Text and metadata come from ``catalog.jsonl`` / ``catalog.csv`` at the root, else from a
sidecar ``<stem>.txt``. A bad image never stops a run: it is skipped with a reason.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import CatalogError, ImageDecodeError
from .images import check_regular_file, open_image, to_uint8_grey
from .storable import display_name, problem
from .tarshards import is_tar, read_member, scan_tar

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILES = ("catalog.jsonl", "catalog.csv")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not grey pixels


@dataclass
class CatalogItem:
    id: str  # path relative to the catalog root, "/" separated
    path: str  # absolute path
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def full_text(self) -> str:
        """The text embedded for this item: title and text joined, or "" when it has none."""
        return ". ".join(t for t in (self.title.strip(), self.text.strip()) if t)


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def jsonl_objects(path: Path, error: type[Exception], what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a missing file or bad JSON raises ``error``
    naming the file and line."""
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise error(f"{path}:{lineno}: JSON nested too deeply") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, row in jsonl_objects(path, CatalogError, "catalog"):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise CatalogError(f'{path}:{lineno}: each line must be an object with an "image" path')
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise CatalogError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise CatalogError(f'{path}: needs a header row with an "image" column')
        for row in reader:
            row = dict(row)
            if None in row:  # more fields than the header: which column is which is unknown
                row = {"image": row.get("image"), "_error": f"{path.name} line {reader.line_num}: "
                       f"{len(row[None])} more field(s) than the header"}
            rows.append(row)
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (128 KB)
        raise CatalogError(f"{path}:{reader.line_num + 1}: {exc}") from None
    return rows


def read_catalog_metadata(root: Path) -> dict[str, dict]:
    """Rows of ``catalog.jsonl`` (preferred) or ``catalog.csv``, keyed by normalised relative path."""
    for name, reader in (("catalog.jsonl", _read_jsonl), ("catalog.csv", _read_csv)):
        path = root / name
        if path.is_file():
            rows = {}
            for r in reader(path):
                if isinstance(r.get("image"), str) and r["image"]:
                    rows[Path(r["image"]).as_posix()] = r
                else:
                    log.warning("%s: a row without an image path is ignored", path)
            return rows
    return {}


def _sidecar_title(image_path: Path) -> str:
    txt = image_path.with_suffix(".txt")
    if not txt.is_file():
        return ""
    try:
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return first[0].strip() if first else ""


def make_item(root: Path, rel: str, row: dict | None) -> CatalogItem:
    path = root / rel
    if row is None:
        return CatalogItem(id=rel, path=str(path), title=_sidecar_title(path))
    meta = {k: v for k, v in row.items() if k not in ("image", "title", "text")}
    return CatalogItem(id=rel, path=str(path), title=str(row.get("title") or ""), text=str(row.get("text") or ""),
                       metadata=meta)


def scan_catalog(folder: str | Path, exclude: Iterable[str | Path] = (),
                 skipped: list[dict[str, str]] | None = None) -> list[CatalogItem]:
    """Every image file below ``folder`` (recursively, sorted by id), with its text and metadata.

    Hidden files and folders are ignored, and so is anything under ``exclude`` (the index folder).
    ``*.tar`` files are WebDataset-style shards whose images are items too (see mmsearch/tarshards.py).
    A file, tar shard or member, or metadata row that cannot be read or stored is left out and reported
    as ``{"id", "reason"}`` in ``skipped`` (logged when it is None): one bad item never stops a run.
    """
    left_out: list[dict[str, str]] = []

    def skip(name: str, reason: str) -> None:
        entry = {"id": display_name(name), "reason": reason}
        left_out.append(entry)
        if skipped is None:
            log.warning("skipping %s: %s", entry["id"], reason)
        else:
            skipped.append(entry)

    root = Path(folder)
    if not root.exists():
        raise CatalogError(f"catalog folder {root} does not exist")
    if not root.is_dir():
        raise CatalogError(f"catalog {root} is not a folder")
    root = root.resolve()
    excluded = {Path(e).resolve() for e in exclude}
    rows = read_catalog_metadata(root)
    ids: list[str] = []
    tar_rows: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                ids.append((here / name).relative_to(root).as_posix())
            elif not name.startswith(".") and is_tar(name):
                rel_tar = (here / name).relative_to(root).as_posix()
                try:
                    if not os.path.isfile(here / name):
                        raise CatalogError("not a regular file")
                    shard = scan_tar(here / name, root, IMAGE_EXTENSIONS, skip=skip)
                except CatalogError as exc:  # random bytes, an empty file, a FIFO: this shard only
                    skip(rel_tar, str(exc).replace(str(here / name), rel_tar))
                    continue
                for rel, _, row in shard:
                    ids.append(rel)
                    tar_rows[rel] = row
    if not ids:
        why = "".join(f"; {s['id']}: {s['reason']}" for s in left_out[:5])
        raise CatalogError(f"catalog folder {root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                           f"and no tar shards holding any{why}")
    ids.sort()
    items = []
    for rel in ids:
        row = rows.get(rel, tar_rows.get(rel))
        if row is not None and "_error" in row:
            skip(rel, str(row["_error"]))
            continue
        it = make_item(root, rel, row)
        why = problem(it.id, it.path, it.title, it.text, it.metadata)
        if why is not None:
            skip(rel, why)
            continue
        items.append(it)
    return items


# ----------------------------------------------------------------------------------------------- images
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


def load_image(source: str | Path | bytes | Image.Image, draft_size: int | None = None) -> Image.Image:
    """Open an image from a path, bytes or a PIL image and return it as RGB, upright (EXIF applied).

    ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling) when the image is much larger.
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
    return RawJpeg(torch.frombuffer(data, dtype=torch.uint8)) if data else None


class CatalogDataset(torch.utils.data.Dataset):
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
    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    raw = [(i, x) for i, x in batch if isinstance(x, RawJpeg)]
    return ImageBatch(positions=[i for i, _ in good], images=torch.stack([x for _, x in good]) if good else None,
                      jpeg_positions=[i for i, _ in raw], jpegs=[x.data for _, x in raw],
                      failed=[(i, x) for i, x in batch if isinstance(x, str)])
