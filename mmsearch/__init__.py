"""mmsearch: multimodal image search (text, photo, photo + text) over a folder of images."""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import MMSearchError

if TYPE_CHECKING:
    from .config import EncodeCfg, RankingCfg
    from .index.build import build_index, reindex, remove_items, upsert_items
    from .index.options import BuildOptions, IndexCfg
    from .models.factory import create_model, list_models
    from .search.engine import SearchEngine, SearchHit
    from .search.query import Query

__all__ = ["BuildOptions", "EncodeCfg", "IndexCfg", "RankingCfg", "MMSearchError", "Query", "SearchEngine", "SearchHit", "build_index", "create_model",
           "list_models", "reindex", "remove_items", "upsert_items", "__version__"]

# Imported on first use, so `import mmsearch.cli` (every command) does not load torch and FAISS up front:
# `mmsearch query` through a running server never needs them.
_LAZY = {"EncodeCfg": ".config", "RankingCfg": ".config", "create_model": ".models.factory", "list_models": ".models.factory", "IndexCfg": ".index.options",
         "BuildOptions": ".index.options", "build_index": ".index.build", "reindex": ".index.build",
         "remove_items": ".index.build", "upsert_items": ".index.build", "Query": ".search.query", "SearchEngine": ".search.engine", "SearchHit": ".search.engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")
