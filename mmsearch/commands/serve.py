"""``mmsearch serve``: the HTTP API and search page over an index (server/), settings from flags and
an optional ServeCfg JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import QueryError
from .options import (
    ApiKeyOpt,
    DeviceOpt,
    HostOpt,
    IndexOpt,
    InsecureOpt,
    MaxPendingOpt,
    MaxUploadOpt,
    PortOpt,
    ReloadIntervalOpt,
    ServeConfigOpt,
)


def serve(
    ctx: typer.Context,
    index: IndexOpt = Path("index"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    insecure: InsecureOpt = False,
    max_upload_mb: MaxUploadOpt = 10.0,
    max_pending: MaxPendingOpt = 32,
    reload_interval: ReloadIntervalOpt = 2.0,
    config: ServeConfigOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve INDEX over HTTP: a JSON API and a search page at http://HOST:PORT/."""
    from ..server import serve as serve_index

    flags = {"host": host, "port": port, "api_key": api_key, "insecure": insecure,
             "max_upload_bytes": int(max_upload_mb * 1024 * 1024), "max_pending": max_pending,
             "reload_interval_s": reload_interval}
    names = {"max_upload_bytes": "max_upload_mb", "reload_interval_s": "reload_interval"}
    given = {k: v for k, v in flags.items()
             if config is None or getattr(ctx.get_parameter_source(names.get(k, k)), "name", "") != "DEFAULT"}
    serve_index(index, serve_cfg(config, given), device=device)


def serve_cfg(config: Optional[Path], given: dict[str, Any]) -> Any:
    """The ServeCfg of the ``--config`` file (or the defaults) with the ``given`` flags over it. ServeCfg
    checks its values with ValueError; here that is the user's input, so a QueryError (one line, exit 2)."""
    import dataclasses

    from ..server import ServeCfg

    try:
        base = ServeCfg.from_json_file(config) if config is not None else ServeCfg()
    except (OSError, ValueError, TypeError) as exc:
        raise QueryError(f"cannot read serve config {config}: {exc}") from None
    try:
        return dataclasses.replace(base, **given)
    except ValueError as exc:
        raise QueryError(str(exc)) from None
