"""Let ``mmsearch query`` use a running ``mmsearch serve`` of the same index instead of a cold start.

``serve`` writes ``<index>/.mmsearch-serve.json`` (url, pid, identity) while it listens and removes it
on exit (also on SIGTERM, see run.py); ``query`` reads it and POSTs the query to ``/cli/query``
(:mod:`.cli_route`). The file is a hint, never trusted: the query (with the API key and the photo) is
sent only when every check below passes, and anything else means "no server", so the CLI runs
in-process, which also gives errors their usual messages:

- the file is a regular file (not a FIFO, not a link) of at most :data:`MAX_FILE_BYTES`, owned by this
  user or root and writable by nobody else;
- its URL is exactly ``http://<loopback address>:<port>`` (127.0.0.0/8 or ::1, no name, no path, no
  credentials), and it is contacted directly (no proxy, no redirect);
- its identity names this index: the resolved folder and the folder's device:inode, so a ``cp -r`` copy
  (which carries the file along) or a moved or replaced folder does not match;
- the recorded pid is alive and holds the listening socket of that port (Linux ``/proc``; where there is
  no ``/proc`` this cannot be checked, and the CLI always searches in-process);
- the answer arrives within :data:`ANSWER_TIMEOUT_S`, is at most :data:`MAX_ANSWER_BYTES`, has the shape
  of ``SearchHit`` rows, repeats the identity, and names the snapshot ``CURRENT`` names now (a server that
  has not yet reloaded a rebuilt index is not asked).

Standard library only, so asking a server imports neither torch nor FastAPI.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import math
import os
import stat
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

FILE = ".mmsearch-serve.json"
MAX_FILE_BYTES = 4096
CONNECT_TIMEOUT_S = 1.0  # a loopback connect is instant or refused
ANSWER_TIMEOUT_S = 5.0  # whole request: past this, loading the model here is about as fast
MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_PHOTO_BYTES = 64 * 1024 * 1024  # larger photos are searched in-process (the server refuses them anyway)
HIT_FIELDS: dict[str, type | tuple[type, ...]] = {"rank": int, "id": str, "path": str, "score": (int, float),
                                                 "title": str, "metadata": dict}


# ------------------------------------------------------------------------------------------ identity
def identity(index: str | Path) -> dict[str, str] | None:
    """What names one index folder: its resolved path and its device:inode (a copy has other ones)."""
    try:
        folder = Path(index).resolve(strict=True)
        st = os.stat(folder)
    except (OSError, RuntimeError, ValueError):
        return None
    return {"index": str(folder), "folder": f"{st.st_dev}:{st.st_ino}"}


def current_name(index: str | Path) -> str | None:
    """The snapshot name in ``<index>/CURRENT`` (index/snapshot.py owns the format; read here without
    importing faiss)."""
    try:
        with open_regular(Path(index) / "CURRENT") as f:
            name = f.read(256).decode("utf-8").strip()
    except (OSError, ValueError):
        return None
    return name or None


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[Any]:
    """``path`` opened for reading if it is a regular file (a FIFO or device is never waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


# --------------------------------------------------------------------------------------- serve side
def local_url(host: str, port: int) -> str:
    local = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else "::1" if host == "::" else host
    return f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"


@contextlib.contextmanager
def advertise(index: str | Path, host: str, port: int) -> Iterator[Path | None]:
    """Write the discovery file for a server on ``host:port`` for the duration of the block."""
    folder = Path(index)
    ident = identity(folder)
    if not folder.is_dir() or port == 0 or ident is None:
        yield None
        return
    path = folder / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    data = json.dumps({"url": local_url(host, port), "pid": os.getpid(), **ident}).encode()
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # 0644 whatever the umask adds
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:  # a read-only index folder: serve anyway, the CLI just will not find this server
        with contextlib.suppress(OSError):
            tmp.unlink()
        yield None
        return
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open_regular(path) as f:
                mine = json.loads(f.read(MAX_FILE_BYTES)).get("pid") == os.getpid()
            if mine:
                path.unlink()


# ----------------------------------------------------------------------------------------- CLI side
def loopback_url(url: Any) -> tuple[str, int] | None:
    """(address, port) of ``http://<loopback IP>:<port>`` exactly, else None (names, paths, https ...)."""
    if not isinstance(url, str) or len(url) > 100 or not url.isascii() or not url.isprintable():
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        return None
    if (parts.scheme != "http" or parts.username is not None or parts.password is not None or port is None
            or not 0 < port < 65536 or parts.path not in ("", "/") or parts.query or parts.fragment or not host):
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not addr.is_loopback or getattr(addr, "scope_id", None):
        return None
    return str(addr), port


def read_file(index: str | Path) -> dict[str, Any] | None:
    """The discovery file's JSON object if the file is safe to read (see the module docstring)."""
    try:
        with open_regular(Path(index) / FILE) as f:
            st = os.fstat(f.fileno())
            if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
                return None  # another user could have written it
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None
        info = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux /proc; False elsewhere)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except (OSError, ValueError):
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def find(index: str | Path) -> tuple[str, int, dict[str, str]] | None:
    """(address, port, identity) of a verified server of ``index``, or None."""
    info = read_file(index)
    ident = identity(index)
    if info is None or ident is None:
        return None
    where = loopback_url(info.get("url"))
    pid = info.get("pid")
    if where is None or type(pid) is not int or not 0 < pid < 2 ** 31:
        return None
    if any(info.get(key) != value for key, value in ident.items()):
        return None  # the file was written for another folder (a copy, a moved or replaced index)
    if not listens(pid, where[1]):
        return None
    return where[0], where[1], ident


def post(addr: str, port: int, path: str, body: bytes, headers: dict[str, str],
         timeout: float | None = None) -> bytes | None:
    """The body of a 200 answer to a POST, or None; the whole exchange ends within ``timeout`` seconds."""
    timeout = ANSWER_TIMEOUT_S if timeout is None else timeout
    result: list[bytes | None] = [None]

    def exchange() -> None:
        conn = http.client.HTTPConnection(addr, port, timeout=min(CONNECT_TIMEOUT_S, timeout))
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            if resp.status != 200:
                return
            data = resp.read(MAX_ANSWER_BYTES + 1)
            if len(data) <= MAX_ANSWER_BYTES:
                result[0] = data
        except (OSError, http.client.HTTPException, ValueError):
            return
        finally:
            conn.close()

    worker = threading.Thread(target=exchange, name="mmsearch-ask", daemon=True)
    worker.start()
    worker.join(timeout)
    return None if worker.is_alive() else result[0]  # a stuck exchange is abandoned (a daemon thread)


def parse_answer(raw: bytes, ident: dict[str, str], snapshot: str, k: int) -> list[dict[str, Any]] | None:
    """The hits of a well-formed answer from the server of this index and snapshot, or None."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if (not isinstance(answer, dict) or answer.get("identity") != ident or answer.get("snapshot") != snapshot
            or not isinstance(answer.get("hits"), list) or len(answer["hits"]) > k):
        return None
    rows = []
    for hit in answer["hits"]:
        if not isinstance(hit, dict) or set(hit) != set(HIT_FIELDS):
            return None
        for key, kind in HIT_FIELDS.items():
            if not isinstance(hit[key], kind) or isinstance(hit[key], bool):
                return None
        if not math.isfinite(hit["score"]):
            return None
        rows.append({key: hit[key] for key in HIT_FIELDS})
    return rows


def ask(index: str | Path, query: Any) -> list[dict[str, Any]] | None:
    """Hits (``SearchHit.to_dict()`` rows) of ``query`` (a search.query.Query whose photos are file paths)
    from a running server of ``index``, already cut and ordered by its paging; or None to run in-process."""
    found = find(index)
    snapshot = current_name(index)
    if found is None or snapshot is None:
        return None
    addr, port, ident = found
    try:
        terms = []
        for t in query.terms:
            if t.kind == "image":
                with open_regular(Path(t.value)) as f:  # a FIFO or device: the in-process gate says what is wrong
                    photo = f.read(MAX_PHOTO_BYTES + 1)
                if len(photo) > MAX_PHOTO_BYTES:
                    return None
                terms.append({"kind": "image", "image_b64": base64.b64encode(photo).decode("ascii"),
                              "weight": t.weight})
            else:
                terms.append({"kind": "text", "text": t.value, "weight": t.weight})
        p = query.paging
        body: dict[str, Any] = {"terms": terms, "k": query.k, "image_weight": query.image_weight,
                                "where": list(query.where) if query.where else None, "mode": query.mode,
                                "min_score": p.min_score, "sort_by": p.sort_by, "descending": p.descending,
                                "offset": p.offset, "window": p.window}
        data = json.dumps(body).encode()
    except (OSError, ValueError, TypeError):
        return None
    key = os.environ.get("MMSEARCH_API_KEY")
    raw = post(addr, port, "/cli/query", data, {"X-API-Key": key} if key else {})
    if raw is None:
        return None
    return parse_answer(raw, ident, snapshot, query.k)
