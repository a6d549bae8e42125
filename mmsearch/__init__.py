"""mmsearch: multimodal image search (text, photo, photo + text) over a folder of images."""

from ._version import __version__
from .errors import MMSearchError
from .models.factory import create_model, list_models
from .index.ann import IndexCfg
from .index.build import build_index, reindex, remove_items, upsert_items
from .search.engine import SearchEngine, SearchHit

__all__ = ["IndexCfg", "MMSearchError", "SearchEngine", "SearchHit", "build_index", "create_model", "list_models",
           "reindex", "remove_items", "upsert_items", "__version__"]
