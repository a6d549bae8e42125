"""WebDataset-style tar shards as catalog input, read with the standard library's ``tarfile``.

A catalog folder may hold ``*.tar`` files (beside or instead of loose images). Inside a tar, files that
share a *key* (the member path up to the first dot of its file name) form one sample, as in WebDataset:

    000000.tar
        sneaker_01.jpg     the image (any of data.IMAGE_EXTENSIONS; the first one in the tar wins)
        sneaker_01.txt     optional caption -> the item's text (``.caption`` also accepted)
        sneaker_01.json    optional object: "title", "text" (or "caption"), every other field -> metadata

Each image becomes an item with id ``<tar path relative to the catalog>/<member name>`` and path
``<absolute tar path>/<member name>``: the tar reads like a folder. Images are read straight from the
tar by offset (one header scan per tar and process, cached), so nothing is extracted and data loader
workers read members in any order. (The ``webdataset`` package streams tars sequentially, which suits
training but gives no per-item random access, offsets or content hashes; it is not needed here.)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Callable

from ..errors import CatalogError
from ..fsutil import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".caption")


def is_tar(name: str) -> bool:
    return name.lower().endswith(".tar")


def split_key(member: str) -> tuple[str, str]:
    """WebDataset's rule: ``dir/abc.def.jpg`` -> (``dir/abc``, ``.def.jpg``)."""
    head, _, base = member.rpartition("/")
    stem, dot, rest = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (dot + rest if dot else "")


@functools.lru_cache(maxsize=256)
def _members(tar_path: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of every regular file; cached per tar file version."""
    try:
        with tarfile.open(tar_path, "r:") as tf:  # plain (uncompressed) tars only: members need offsets
            return {m.name: (m.offset_data, m.size) for m in tf if m.isreg()}
    except (tarfile.TarError, OSError) as exc:
        raise CatalogError(f"cannot read tar shard {tar_path}: {exc}") from None


def members(tar_path: str) -> dict[str, tuple[int, int]]:
    return _members(tar_path, os.stat(tar_path).st_mtime_ns)


def split_member_path(path: str | Path) -> tuple[str, str] | None:
    """``/data/000.tar/key.jpg`` -> (``/data/000.tar``, ``key.jpg``) when a parent is a tar file, else None."""
    p = str(path)
    idx = p.lower().find(".tar/")
    while idx != -1:
        tar = p[:idx + 4]
        if os.path.isfile(tar):
            return tar, p[idx + 5:]
        idx = p.lower().find(".tar/", idx + 1)
    return None


def read_member(path: str | Path) -> bytes | None:
    """The bytes of a tar member addressed as ``<tar>/<member>``; None if ``path`` is not one."""
    split = split_member_path(path)
    if split is None:
        return None
    tar, name = split
    try:
        offset, size = members(tar)[name]
    except (KeyError, CatalogError, OSError):
        raise FileNotFoundError(f"no member {name} in {tar}") from None
    with open(tar, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def stat_path(path: str) -> list[int] | None:
    """[size, mtime_ns] of a file, or of the tar holding a member path; None if neither exists."""
    split = split_member_path(path) if not os.path.isfile(path) else None
    try:
        st = os.stat(split[0] if split else path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def scan_tar(tar_path: Path, root: Path, image_extensions,
             skip: Callable[[str, str], None] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, path, row) per image sample of one shard; ``row`` holds title / text / metadata like a
    catalog.jsonl row. A sample whose ``.json`` is unreadable is passed to ``skip(id, reason)`` and left
    out (without ``skip``, it raises CatalogError)."""
    index = members(str(tar_path))
    samples: dict[str, dict[str, str]] = {}
    for name in index:
        if any(part.startswith(".") for part in name.split("/")):
            continue
        key, ext = split_key(name)
        samples.setdefault(key, {})[ext.lower()] = name
    rel_tar = tar_path.relative_to(root).as_posix()
    out = []
    for key in sorted(samples):
        files = samples[key]
        image = next((files[e] for e in sorted(files) if e in image_extensions or
                      os.path.splitext(e)[1] in image_extensions), None)
        if image is None:
            continue
        row: dict[str, Any] = {}
        js = files.get(".json")
        if js is not None:
            try:
                data = json.loads(read_member(f"{tar_path}/{js}") or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
            except (ValueError, UnicodeDecodeError, RecursionError, OSError) as exc:
                if skip is None:
                    raise CatalogError(f"{tar_path}/{js}: not valid JSON ({exc})") from None
                skip(f"{rel_tar}/{image}", f"{js}: not valid JSON ({str(exc)[:200]})")
                continue
            row = dict(data)
            if "text" not in row and "caption" in row:
                row["text"] = row.pop("caption")
        txt = next((files[e] for e in TEXT_EXTENSIONS if e in files), None)
        if txt is not None and not row.get("text"):
            row["text"] = (read_member(f"{tar_path}/{txt}") or b"").decode("utf-8", errors="replace").strip()
        out.append((f"{rel_tar}/{image}", f"{tar_path}/{image}", row))
    return out


def content_sha256(path: str | Path) -> str:
    """SHA-256 of an item's image bytes: a file, or a member of a tar shard addressed as ``<tar>/<member>``."""
    if not os.path.isfile(path):
        member = read_member(path)
        if member is not None:
            return sha256_bytes(member)
        if os.path.exists(path):  # a FIFO or /dev/zero would block or spin forever: regular files only
            raise OSError(f"not a regular file: {path}")
    return sha256_file(path)
