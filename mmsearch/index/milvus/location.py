"""Where a Milvus index lives, and the one client per process that talks to it.

Locations:
  ``milvus-lite:PATH.db``              Milvus Lite: the engine in this process, data in one local file
                                       (collection ``mmsearch``; ``milvus-lite:PATH.db#NAME`` names another)
  ``milvus://HOST[:PORT]/COLLECTION``  a Milvus server or cluster over plain gRPC (port 19530 by default)
  ``milvus+https://HOST[:PORT]/COLLECTION``  the same over TLS (Zilliz Cloud, a TLS-terminated proxy)

A server's credentials come from the environment, never from the location (it is printed in messages):
``MMSEARCH_MILVUS_TOKEN`` holds ``user:password`` or an API key.

Milvus Lite locks its file: one process at a time may open it (a second one fails). Several processes
(an ``index`` run beside ``serve``, several ``serve`` replicas) need a server: ``milvus-lite server
--data-dir DIR`` runs one locally, reached as ``milvus://127.0.0.1:19530/COLLECTION``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import IndexNotFoundError, MMSearchError

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "mmsearch"
DEFAULT_PORT = 19530
TOKEN_ENV = "MMSEARCH_MILVUS_TOKEN"
INSTALL_HINT = "pip install 'mmsearch[milvus]'"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
_SERVER = re.compile(r"(?P<scheme>milvus|milvus\+https)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)"
                     r"(?::(?P<port>\d{1,5}))?(?:/(?P<coll>[^/?#]*))?/?")


class MilvusUnavailableError(MMSearchError):
    """pymilvus (or milvus-lite, for a local file) is not installed."""


class MilvusConnectionError(MMSearchError):
    """The Milvus server cannot be reached, or the Milvus Lite file is held by another process."""


@dataclass(frozen=True)
class MilvusLocation:
    """A parsed Milvus location: ``uri`` is what pymilvus connects to, ``collection`` the index's data."""

    text: str  # as the user wrote it (no secrets in it)
    uri: str  # a local ``.db`` file (Milvus Lite) or ``http(s)://host:port``
    collection: str
    lite: bool
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def meta_collection(self) -> str:
        """The companion collection holding the manifest and the field statistics (meta.py)."""
        return f"{self.collection}__meta"

    def __str__(self) -> str:
        return self.text


def _collection(name: str, text: str) -> str:
    if not _NAME.fullmatch(name):
        raise MMSearchError(f"index location {text!r}: collection name {name!r} must start with a letter or "
                            f"'_' and hold only letters, digits and '_'")
    if name.endswith("__meta"):
        raise MMSearchError(f"index location {text!r}: collection names ending in '__meta' are mmsearch's own")
    return name


def parse_location(text: str) -> MilvusLocation:
    """``milvus-lite:shop.db`` / ``milvus://host:19530/shop`` -> :class:`MilvusLocation`; MMSearchError with
    the accepted forms when the text is none of them."""
    text = str(text).strip()
    if text.startswith("milvus-lite:"):
        rest = text[len("milvus-lite:"):]
        path, _, name = rest.partition("#")
        if not path.endswith(".db") or path == ".db":
            raise MMSearchError(f"index location {text!r}: a Milvus Lite index is a file ending in .db, "
                                f"e.g. milvus-lite:shop.db")
        return MilvusLocation(text=text, uri=str(Path(path).expanduser().resolve()),
                              collection=_collection(name or DEFAULT_COLLECTION, text), lite=True)
    m = _SERVER.fullmatch(text)
    if m is None:
        raise MMSearchError(f"cannot read index location {text!r}: use milvus-lite:FILE.db, "
                            f"milvus://HOST:PORT/COLLECTION or milvus+https://HOST:PORT/COLLECTION")
    port = int(m.group("port") or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise MMSearchError(f"index location {text!r}: port {port} is out of range")
    scheme = "https" if m.group("scheme") == "milvus+https" else "http"
    return MilvusLocation(text=text, uri=f"{scheme}://{m.group('host')}:{port}",
                          collection=_collection(m.group("coll") or DEFAULT_COLLECTION, text), lite=False,
                          token=os.environ.get(TOKEN_ENV) or None)


def as_location(location: "str | MilvusLocation") -> MilvusLocation:
    return location if isinstance(location, MilvusLocation) else parse_location(location)


# ------------------------------------------------------------------------------------------ clients
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def pymilvus() -> Any:
    """The pymilvus module, or one line saying how to install it."""
    try:
        import pymilvus as module
    except ImportError:
        raise MilvusUnavailableError(f"a Milvus index needs pymilvus: {INSTALL_HINT}") from None
    return module


def connect(location: "str | MilvusLocation", create: bool = False) -> Any:
    """The process's MilvusClient for ``location`` (one per file or server, shared by readers and writers:
    gRPC clients are thread-safe, and Milvus Lite admits one process per file).

    create: a Milvus Lite file that does not exist yet is made (writers); readers get IndexNotFoundError.
    """
    loc = as_location(location)
    module = pymilvus()
    key = (loc.uri, loc.token or "")
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        if loc.lite:
            if importlib.util.find_spec("milvus_lite") is None:
                raise MilvusUnavailableError(f"{loc} needs Milvus Lite (milvus-lite): {INSTALL_HINT}")
            path = Path(loc.uri)
            if not path.exists() and not create:
                raise IndexNotFoundError(f"no index at {loc}: build one with `mmsearch index CATALOG --out {loc}`")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MilvusConnectionError(f"cannot create {path.parent} for {loc}: {exc.strerror or exc}") from None
        # Milvus Lite logs a traceback when it cannot start (e.g. another process holds the file); the
        # error below says it in one line
        quiet = logging.getLogger("milvus_lite.server_manager")
        was, quiet.disabled = quiet.disabled, loc.lite
        try:
            # gRPC keepalive pings every 10 s make a Milvus Lite server answer GOAWAY (too_many_pings) during a
            # long call (an index build over 1M rows), and pymilvus's retry then fails: ping hourly instead
            client = module.MilvusClient(uri=loc.uri, token=loc.token or "", timeout=30,
                                         grpc_options={"grpc.keepalive_time_ms": 3_600_000})
        except Exception as exc:  # pymilvus raises its own exception types, and grpc / OS errors below them
            raise MilvusConnectionError(_connect_message(loc, exc)) from None
        finally:
            quiet.disabled = was
        _clients[key] = client
        return client


_engines: dict[int, bool] = {}


def is_lite(client: Any, location: "str | MilvusLocation") -> bool:
    """The engine behind ``client`` is Milvus Lite: a ``milvus-lite:`` file, or a ``milvus-lite server`` reached
    as ``milvus://`` (it reports a ``milvus_lite`` version). Lite gets Lite-shaped work: no query iterators,
    filter forms it evaluates vectorised, keywords from a local FTS5 copy."""
    if as_location(location).lite:
        return True
    key = id(client)
    if key not in _engines:
        try:
            _engines[key] = str(client.get_server_version()).lower().startswith(("milvus_lite", "milvus-lite"))
        except Exception:  # an old server without the call: not Lite, which has it
            _engines[key] = False
    return _engines[key]


def _connect_message(loc: MilvusLocation, exc: Exception) -> str:
    why = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0][:200]
    if loc.lite and _locked(Path(loc.uri)):
        return (f"cannot open {loc}: another process has it open (Milvus Lite lets one process open a file at a "
                f"time). Stop it, or serve the file with `milvus-lite server --data-dir DIR` and use "
                f"milvus://127.0.0.1:{DEFAULT_PORT}/{loc.collection} from every process")
    if loc.lite:
        return f"cannot open {loc}: {why} (is it a Milvus Lite database of milvus-lite >= 3?)"
    return f"cannot reach Milvus at {loc} ({loc.uri}): {why}"


def _locked(path: Path) -> bool:
    """Another process holds Milvus Lite's lock on the database folder ``path``."""
    import fcntl

    try:
        fd = os.open(path / "LOCK", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def forget_client(location: "str | MilvusLocation") -> None:
    """Close and drop the cached client of ``location`` (tests; a process that is done with a file)."""
    loc = as_location(location)
    with _clients_lock:
        client = _clients.pop((loc.uri, loc.token or ""), None)
    if client is not None:
        try:
            client.close()
        except Exception:  # closing a client whose server is gone must not mask the caller's error
            log.debug("closing the Milvus client of %s failed", loc, exc_info=True)
