"""Silence what C code prints to the process's stdout (file descriptor 1) for a moment.

FAISS's ``OnDiskInvertedLists`` printf()s every file resize and relocation; without this, those lines
land in the middle of the CLI's output (``--json`` included). Used around opening and filling IVF indexes
whose lists live on disk (index/ann.py, index/ondisk.py, index/writer.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from typing import Iterator

_STDOUT_LOCK = threading.Lock()  # fd 1 is shared by every thread: one silencer at a time


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what C code writes to stdout meanwhile (Python's own buffered output is flushed first)."""
    with _STDOUT_LOCK:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        libc = ctypes.CDLL(None)
        libc.fflush(None)
        saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
