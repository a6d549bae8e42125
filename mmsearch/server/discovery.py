"""Let ``mmsearch query`` use a running ``mmsearch serve`` of the same index instead of a cold start.

``serve`` writes ``<index>/.mmsearch-serve.json`` (url, pid) while it listens and removes it on exit;
``query`` reads it, checks that the process is alive, and POSTs the query to ``/cli/query``
(:mod:`.cli_route`). Any failure (no file, a dead or foreign server, a refused key, an error answer)
means "no server": the CLI then runs in-process, which also gives errors their usual messages.
Standard library only, so asking a server imports neither torch nor FastAPI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

FILE = ".mmsearch-serve.json"
TIMEOUT_S = 60.0  # a query through a busy server may queue; connecting fails at once when none listens


@contextlib.contextmanager
def advertise(index: str | Path, host: str, port: int) -> Iterator[Path | None]:
    """Write the discovery file for a server on ``host:port`` for the duration of the block."""
    folder = Path(index)
    if not folder.is_dir() or port == 0:
        yield None
        return
    path = folder / FILE
    local = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else "::1" if host == "::" else host
    url = f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "index": str(folder.resolve())}))
        os.replace(tmp, path)
    except OSError:  # a read-only index folder: serve anyway, the CLI just will not find this server
        yield None
        return
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def find(index: str | Path) -> str | None:
    """The URL of a live server advertised in ``index``, or None."""
    try:
        info = json.loads((Path(index) / FILE).read_text())
        os.kill(int(info["pid"]), 0)  # raises if no such process
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError, PermissionError):
        return None


def ask(index: str | Path, image: str | Path | None, text: str | None, k: int, image_weight: float | None,
        where: list[str] | None) -> list[dict[str, Any]] | None:
    """Hits (``SearchHit.to_dict()`` rows) from a running server of ``index``, or None to run in-process."""
    url = find(index)
    if url is None:
        return None
    try:
        body: dict[str, Any] = {"text": text, "k": k, "image_weight": image_weight, "where": where or None}
        if image is not None:
            body["image_b64"] = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("MMSEARCH_API_KEY")
        if key:
            headers["X-API-Key"] = key
        req = urllib.request.Request(url + "/cli/query", data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return list(json.loads(resp.read())["hits"])
    except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
        return None
