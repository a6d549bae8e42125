"""File-system helpers every layer shares: one atomic write, hashing, the crash-test hook.

A file that readers may see is always written to a temporary name beside it and renamed over it, so a
reader (or a process killed half-way) sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from pathlib import Path
from typing import Callable, Union

# what atomic_write writes: bytes, text (UTF-8), or a function that writes the file at the path it is given
Content = Union[bytes, str, Callable[[Path], object]]


def crash_point(name: str) -> None:
    """Test hook: ``MMSEARCH_CRASH_AT=name`` kills this process with SIGKILL here (crash-safety tests)."""
    if os.environ.get("MMSEARCH_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some file systems cannot fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | Path, content: Content, *, durable: bool = True, crash_at: str | None = None) -> Path:
    """Write ``content`` to ``path`` atomically: a temporary file beside it, then ``os.replace``.

    Args:
        path: the file to (re)place; its folder must exist.
        content: bytes, text (written as UTF-8), or ``write(tmp_path)`` for writers that need a path
            (``torch.save``, ``faiss.write_index``, ``np.savez``).
        durable: fsync the file before the rename and the folder after it, so the new file survives a
            crash of the machine; without it the file is only as safe as the page cache.
        crash_at: name of a :func:`crash_point` to pass once the file is in place (crash-safety tests).

    A failure removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    if crash_at is not None:
        crash_point(crash_at)
    return path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
