"""``mmsearch serve``: an HTTP API and a search page over one index (needs the ``serve`` extra)."""

from .run import check_bind, is_loopback, serve
from .settings import ServeCfg

__all__ = ["ServeCfg", "check_bind", "create_app", "is_loopback", "serve"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is imported only when the app is actually built
        from .app import create_app

        return create_app
    raise AttributeError(name)
