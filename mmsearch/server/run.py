"""Start the server: check where it may listen, load the engine once, hand the app to uvicorn."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import ServeError
from .settings import ServeCfg

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; anything else (0.0.0.0, a LAN address, a name) is public."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(cfg: ServeCfg) -> None:
    """Refuse a non-loopback address unless an API key (or an explicit ``insecure``) protects it."""
    if is_loopback(cfg.host):
        return
    if cfg.api_key:
        return
    if cfg.insecure:
        log.warning("listening on %s without an API key (--insecure): anyone who can reach it can search "
                    "the index and read its images", cfg.host)
        return
    raise ServeError(f"refusing to listen on {cfg.host} without an API key: pass --api-key KEY (or set "
                     f"MMSEARCH_API_KEY), or --insecure to allow it anyway")


def serve(index: str | Path = "index", cfg: ServeCfg | None = None, device: str = "auto",
          log_level: str = "info") -> None:
    """Serve ``index`` over HTTP until interrupted (blocking).

    Args:
        index: index folder (picked up again when rebuilt in place).
        cfg: host, port, API key and limits; see :class:`ServeCfg`.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` for the query encoders.
        log_level: uvicorn's log level.

    Example:
        >>> from mmsearch.server import ServeCfg, serve                  # doctest: +SKIP
        >>> serve("index", ServeCfg(port=8080))                          # doctest: +SKIP
    """
    import uvicorn

    from ..search.engine import SearchEngine
    from .app import create_app

    cfg = cfg or ServeCfg()
    check_bind(cfg)  # before the (slow) model load, so a refused address fails at once
    with listening_socket(cfg.host, cfg.port) as sock:  # a busy port, too
        port = sock.getsockname()[1]
        engine = SearchEngine.open(index, device=device)
        app = guarded_app(create_app(engine, cfg), cfg)
        log.info("serving %d items from %s on http://%s:%d", len(engine), engine.snapshot, cfg.host, port)
        from .discovery import advertise

        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, server_header=False,
                                               **uvicorn_options(cfg)))
        # `mmsearch query` on this index asks this server; the file goes on SIGINT and SIGTERM alike
        # (a Milvus index has no folder to advertise in: its CLI searches in-process)
        here = contextlib.nullcontext() if engine.path is None else advertise(index, cfg.host, port)
        with terminate_as_exit(), here:
            server.run(sockets=[sock])
        if not server.started:
            raise ServeError(f"the server on {cfg.host}:{port} did not start (see the log above)")


@contextlib.contextmanager
def listening_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A socket bound to ``host:port`` (uvicorn listens on it), or one line saying why not."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"cannot listen on {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another server?); stop it or pick "
                             f"another with --port") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with sock:
        yield sock


class Terminated(SystemExit):
    """SIGTERM, turned into an exception so that ``finally`` blocks (the discovery file) run."""


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (exit 0) in the block instead of killing the process outright.

    uvicorn handles SIGTERM itself while serving (a graceful shutdown), then restores this handler and
    raises the signal again, which lands here: the exception unwinds through ``advertise``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(0)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        log.info("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded_app(app: Any, cfg: ServeCfg) -> Any:
    """``app`` behind the Host check when it listens on loopback without an API key (DNS rebinding)."""
    from .guard import HostCheck, loopback_hosts

    if cfg.api_key or not is_loopback(cfg.host):
        return app
    return HostCheck(app, loopback_hosts(cfg.host))


def uvicorn_options(cfg: ServeCfg) -> dict[str, Any]:
    """uvicorn settings that bound what one connection can hold: read deadline, keep-alive."""
    from .guard import timed_h11

    return {"http": timed_h11(cfg.read_timeout_s), "timeout_keep_alive": 5}
