"""Connection-level guards that FastAPI routes cannot see: read timeouts and the Host header check.

- :func:`timed_h11` gives uvicorn an HTTP protocol that closes a connection whose request (headers and
  body) is not completely received within ``read_timeout_s`` of the connection opening or of the previous
  response: a half-open or trickling client cannot hold a connection forever (uvicorn's own keep-alive
  timeout only covers idle connections between requests).
- :class:`HostCheck` answers 400 to a request whose ``Host`` is not the address the server listens on.
  Used when no API key is set on a loopback address: a web page on another site could otherwise reach
  the server through DNS rebinding (its name resolving to 127.0.0.1) and read the index.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def timed_h11(read_timeout_s: float) -> type[H11Protocol]:
    class TimedH11Protocol(H11Protocol):
        _read_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout_s, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                self.transport.close()  # the app, if it waits for the body, gets http.disconnect

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the request is in (DONE), or the connection is ending

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this keep-alive connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def host_name(value: str) -> str:
    """``Host`` header -> host without the port, lower case (``[::1]:8000`` -> ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """ASGI middleware: 400 unless the request's Host is one of ``allowed`` (names without ports)."""

    def __init__(self, app: Any, allowed: set[str]):
        self.app = app
        self.allowed = {host_name(h) for h in allowed}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                body = json.dumps({"detail": "invalid Host header: this server answers only to "
                                             + ", ".join(sorted(self.allowed))}).encode()
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def loopback_hosts(bind: str) -> set[str]:
    host = bind.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return {*LOOPBACK_NAMES, host}
