"""Domain errors. The CLI turns any MMSearchError into one red line and ``exit_code``."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from typing import Iterator


class MMSearchError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with (1: bad input or state, 2: usage)."""

    exit_code = 1


class CatalogError(MMSearchError):
    """The catalog folder is missing, empty, or its metadata file is malformed."""


class ImageDecodeError(MMSearchError):
    """An image could not be read or decoded (the message is the reason shown to the user)."""


class ModelError(MMSearchError):
    """Unknown model name, unreadable or incompatible checkpoint."""


class IndexNotFoundError(MMSearchError):
    """No index at the given path."""


class IndexIncompatibleError(MMSearchError):
    """The index was built by another model or an incompatible mmsearch version, or is damaged."""


class QueryError(MMSearchError):
    """A query without image or text, with an unreadable image, or otherwise malformed."""

    exit_code = 2


class ItemNotFoundError(QueryError):
    """A query names an item (``search_similar``) that is not in the index or has no stored image."""


class ServeError(MMSearchError):
    """The server cannot start as asked (e.g. a public address without an API key)."""


class DiskWriteError(MMSearchError):
    """A file could not be written (disk full, read-only folder, no permission); what existed is unchanged."""


DISK_HINTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}
# what SQLite and FAISS (whose errors are not OSErrors) say when the disk refuses a write
DISK_PHRASES = ("disk is full", "readonly database", "read-only file system", "disk i/o error",
                "no space left", "could not open", "permission denied", "fwrite", "ret == (n)")


@contextlib.contextmanager
def disk_errors(what: str, unchanged: str = "") -> Iterator[None]:
    """Turn a refused write inside the block (an OSError, or SQLite's / FAISS's own error for a full or
    read-only disk) into one :class:`DiskWriteError` line naming ``what`` and the reason.

    unchanged: what the user can rely on after the failure (e.g. "the index is unchanged").
    """
    try:
        yield
    except DiskWriteError:
        raise
    except OSError as exc:
        reason = DISK_HINTS.get(exc.errno or 0) or exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        raise DiskWriteError(f"cannot write {what}: {reason}{where}" + (f"; {unchanged}" if unchanged else "")) \
            from None
    except (sqlite3.OperationalError, RuntimeError) as exc:
        text = str(exc).lower()
        if not any(p in text for p in DISK_PHRASES):
            raise
        reason = next((h for h in DISK_HINTS.values() if h in text), str(exc).splitlines()[0][:200])
        raise DiskWriteError(f"cannot write {what}: {reason}" + (f"; {unchanged}" if unchanged else "")) from None
