"""A `milvus-lite server` for tests of the multi-process shape: every process reaches one Milvus Lite file
as milvus://127.0.0.1:PORT/COLLECTION, as replicas reach a cluster."""

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
def milvus_lite_server(data: Path, collection: str = "shop") -> Iterator[str]:
    """Start `milvus-lite server` on the file ``data`` and a free port; yield its milvus:// location."""
    exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([exe, "server", "--data-dir", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "milvus-lite server did not start"
                time.sleep(0.2)
        yield f"milvus://127.0.0.1:{port}/{collection}"
    finally:
        server.terminate()
        server.wait(timeout=30)
