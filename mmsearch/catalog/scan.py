"""Catalog scanning: a folder (or tar shards) -> CatalogItem rows. Image loading is in images.py.

A catalog is a folder; every image file below it is one item whose id is its relative path with ``/``
separators. Text and metadata come from ``catalog.jsonl`` / ``catalog.csv`` at the root, else from a
sidecar ``<stem>.txt``. A bad image never stops a run: it is skipped with a reason.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import CatalogError
from .exclude import Excluder
from .formats import EXTRA_EXTENSIONS
from .photometa import with_photo_metadata
from .storable import display_name, problem
from .tar_shards import is_tar, scan_tar

log = logging.getLogger(__name__)

# HEIC/HEIF, AVIF and camera RAW files are scanned too; they read with the formats extra (catalog/formats.py)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}) | EXTRA_EXTENSIONS
METADATA_FILES = ("catalog.jsonl", "catalog.csv")


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
    name = metadata_file(root)
    if name is None:
        return {}
    path = root / name
    rows = {}
    for r in (_read_jsonl if name.endswith(".jsonl") else _read_csv)(path):
        if isinstance(r.get("image"), str) and r["image"]:
            rows[Path(r["image"]).as_posix()] = r
        else:
            log.warning("%s: a row without an image path is ignored", path)
    return rows


def metadata_file(root: Path) -> str | None:
    return next((n for n in ("catalog.jsonl", "catalog.csv") if (root / n).is_file()), None)


def match_rows(rows: dict[str, dict], ids: Iterable[str]) -> tuple[dict[str, dict], list[str]]:
    """({file id: its row}, keys of the rows that match no file).

    A row matches the file of the same path; else the file whose path is the same in Unicode NFC (names
    copied from macOS are decomposed, NFD); else the file whose path differs only in case, when that pairs
    one row with one file (``A.jpg`` and ``a.jpg`` side by side are never guessed at)."""
    ids = list(ids)
    known = set(ids)
    matched = {k: row for k, row in rows.items() if k in known}
    pending = [k for k in rows if k not in known]
    for norm in (lambda p: unicodedata.normalize("NFC", p),
                 lambda p: unicodedata.normalize("NFC", p).casefold()):
        files: dict[str, list[str]] = {}
        for i in ids:
            if i not in matched:
                files.setdefault(norm(i), []).append(i)
        keys: dict[str, list[str]] = {}
        for k in pending:
            keys.setdefault(norm(k), []).append(k)
        still = []
        for k in pending:
            cands = files.get(norm(k), [])
            if len(cands) == 1 and len(keys[norm(k)]) == 1:
                matched[cands[0]] = rows[k]
            else:
                still.append(k)
        pending = still
    return matched, pending


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


def scan_catalog(folder: str | Path, exclude: Iterable[str | Path] = (),  # noqa: C901  (the folder and tar-shard walks share their skip-and-report bookkeeping)
                 skipped: list[dict[str, str]] | None = None, exclude_globs: Iterable[str] = ()) -> list[CatalogItem]:
    """Every image file below ``folder`` (recursively, sorted by id), with its text and metadata.

    Hidden files and folders are ignored, and so is anything under ``exclude`` (the index folder) or
    matching one of ``exclude_globs`` (``--exclude`` patterns, see catalog/exclude.py).
    ``*.tar`` files are WebDataset-style shards whose images are items too (see catalog/tar_shards.py).
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
    unwanted = Excluder(exclude_globs)
    rows = read_catalog_metadata(root)
    ids: list[str] = []
    tar_rows: dict[str, dict] = {}
    def unreadable(exc: OSError) -> None:  # os.walk would skip the folder without a word
        rel = os.path.relpath(exc.filename, root) if exc.filename else "?"
        why = ("its path is longer than the system allows (PATH_MAX); move it higher up"
               if exc.errno == errno.ENAMETOOLONG else f"cannot read this folder ({exc.strerror or exc})")
        skip(rel if len(rel) <= 300 else f"{rel[:140]}...{rel[-140:]}", f"{why}; nothing below it is indexed")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
        if unwanted:  # --exclude patterns: a matching folder is not entered, a matching file not listed
            dirnames[:] = [d for d in dirnames if not unwanted((here / d).relative_to(root).as_posix(), is_dir=True)]
            filenames = [n for n in filenames if not unwanted((here / n).relative_to(root).as_posix())]
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
                    if unwanted(rel):
                        continue
                    ids.append(rel)
                    tar_rows[rel] = row
    if not ids:
        why = "".join(f"; {s['id']}: {s['reason']}" for s in left_out[:5])
        raise CatalogError(f"catalog folder {root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                           f"and no tar shards holding any{why}")
    ids.sort()
    rows, unmatched = match_rows(rows, ids)
    for key in unmatched:  # said, not dropped: the item would silently lose its title and metadata
        skip(key, f"the {metadata_file(root)} row for this image matches no image file in the catalog (check the "
                  f"path, its case and its folder); its title and metadata are not used")
    items = []
    for rel in ids:
        row = rows.get(rel, tar_rows.get(rel))
        if row is not None and "_error" in row:
            skip(rel, str(row["_error"]))
            continue
        it = make_item(root, rel, row)
        if rel not in tar_rows:  # EXIF capture date, camera, GPS; the catalog row's fields win
            it.metadata = with_photo_metadata(it.path, it.metadata)
        why = problem(it.id, it.path, it.title, it.text, it.metadata)
        if why is not None:
            skip(rel, why)
            continue
        items.append(it)
    return items
