"""A Milvus Lite server for tests whose processes share one index (Milvus Lite allows one process per
file): ``milvus-lite server --data-dir F.db`` on a free port, reached as ``milvus://127.0.0.1:PORT/NAME``."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def milvus_lite_server(data: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run a Milvus Lite server on ``data`` (a .db path) -> ``milvus://127.0.0.1:PORT`` (add ``/COLLECTION``);
    stopped on exit, with this process' clients for it forgotten."""
    from mmsearch.index.milvus.location import forget_client

    exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([exe, "server", "--data-dir", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"milvus://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("milvus-lite server did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        forget_client(base + "/mmsearch")  # clients are kept per server: every collection's goes
        server.terminate()
        server.wait(30)
