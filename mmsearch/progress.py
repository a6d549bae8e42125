"""Progress for slow steps a user would otherwise wait through in silence (first use on a fresh cache: the
ONNX export, loading the torch model). Shown on stderr only when it is a terminal, and only once the step
has taken ``after`` seconds, so fast steps and pipes stay quiet; the message is logged (INFO) either way."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any, Iterator

log = logging.getLogger(__name__)

SHOW_AFTER_S = 2.0


@contextlib.contextmanager
def slow_step(message: str, after: float = SHOW_AFTER_S) -> Iterator[None]:
    """A spinner with ``message`` on stderr while the block runs, if it runs longer than ``after`` seconds."""
    log.info(message)
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    status: list[Any] = []
    lock = threading.Lock()

    def show() -> None:
        with lock:
            if not status:
                st = Console(stderr=True).status(message + " ...")
                st.start()
                status.append(st)

    timer = threading.Timer(after, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            for st in status:
                st.stop()
            status.append(None)  # a late timer shows nothing


def bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr that appears only after ``SHOW_AFTER_S`` seconds (and never on a pipe)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=SHOW_AFTER_S, disable=None, leave=False)
