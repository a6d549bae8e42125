"""Photo metadata from EXIF, for ``--where`` filters and sorting: when, with what, and whether a place is known.

  ``taken_at``  DateTimeOriginal (else DateTimeDigitized) as ISO 8601 ``YYYY-MM-DDTHH:MM:SS``, the camera's
                local clock without a time zone (EXIF rarely records one). ISO strings sort and compare as
                text in time order, which is what the metadata filters do for a non-numeric value:
                ``--where 'taken_at>=2019-01-01' --where 'taken_at<2020-01-01'`` is the year 2019.
  ``camera``    Make and Model joined ("Canon EOS 5D"; a Model that already starts with the make's first
                word is used alone, so "NIKON CORPORATION" + "NIKON D750" is "NIKON D750").
  ``has_gps``   true when the GPS block holds a latitude or a longitude.

Only files with camera EXIF (a capture date, a camera or GPS data) get these fields; a product shot or a
screenshot gets none. A catalog.jsonl / catalog.csv row's own fields win over EXIF ones. Reading is a
header read (no pixel is decoded); a file whose EXIF cannot be read gets no fields and is otherwise
indexed as usual.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from .formats import is_raw_name
from .gate import open_image

log = logging.getLogger(__name__)

PHOTO_FIELDS = ("taken_at", "camera", "has_gps")
RAW_HEAD = 256 * 1024  # RAW files keep IFD0 and the EXIF block near the start (TIFF structure)

CACHE_SIZE = 100_000  # entries of (path, size, mtime) -> fields; a few hundred bytes each
_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL = 0x010F, 0x0110
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004


def photo_metadata(path: str | Path) -> dict[str, Any]:
    """``{"taken_at", "camera", "has_gps"}`` (those known) from the EXIF of the image file at ``path``.

    Remembered per (path, size, mtime) in this process, so a process that scans the same folder again
    (a watcher, a server that updates before answering) reads only the files that changed.
    """
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (str(path), st.st_size, st.st_mtime_ns)
    found = _CACHE.get(key)
    if found is None:
        try:
            exif = _read_exif(path)
            found = from_exif(exif) if exif is not None and len(exif) else {}
        except Exception as exc:  # EXIF is a bonus: a broken block never costs the image
            log.debug("no EXIF metadata from %s: %s", path, exc)
            found = {}
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = found
    return dict(found)


def with_photo_metadata(path: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the file's EXIF fields added where it has none of its own."""
    found = photo_metadata(path)
    return {**found, **metadata} if found else metadata


def _read_exif(path: str | Path) -> Image.Exif | None:
    if is_raw_name(path):  # RAW files are TIFFs inside: read IFD0 and its EXIF block, not the sensor data
        with open(path, "rb") as fh:
            head = fh.read(RAW_HEAD)
        exif = Image.Exif()
        exif.load(head)
        return exif
    with open_image(path) as im:  # the gate: header only
        return im.getexif()


def from_exif(exif: Image.Exif) -> dict[str, Any]:
    """The photo fields of a parsed EXIF block (see the module docstring)."""
    out: dict[str, Any] = {}
    sub = _ifd(exif, _EXIF_IFD)
    taken = iso_datetime(sub.get(_DATETIME_ORIGINAL) or sub.get(_DATETIME_DIGITIZED))
    if taken:
        out["taken_at"] = taken
    camera = camera_name(exif.get(_MAKE), exif.get(_MODEL))
    if camera:
        out["camera"] = camera
    gps = _ifd(exif, _GPS_IFD)
    if out or gps:
        out["has_gps"] = bool(gps.get(2) or gps.get(4))  # GPSLatitude, GPSLongitude
    return out


def _ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a dangling or looping offset
        return {}


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v).replace("\0", " ").strip() if v is not None else ""


def iso_datetime(v: Any) -> str | None:
    """``"2019:06:01 12:30:00"`` (EXIF) -> ``"2019-06-01T12:30:00"``; None for blanks and placeholders."""
    s = _text(v)
    if len(s) < 19:
        return None
    date, time = s[:10].replace("-", ":"), s[11:19]
    try:
        return datetime.strptime(f"{date} {time}", "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:  # "0000:00:00 00:00:00", "    :  :     :  :  "
        return None


def camera_name(make: Any, model: Any) -> str:
    make_s, model_s = " ".join(_text(make).split()), " ".join(_text(model).split())
    if make_s and model_s and model_s.lower().startswith(make_s.split()[0].lower()):
        return model_s
    return " ".join(p for p in (make_s, model_s) if p)
