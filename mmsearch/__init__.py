"""mmsearch: multimodal image search (text, photo, photo + text) over a folder of images."""

__version__ = "0.1.0"

from .errors import MMSearchError  # noqa: E402
from .factory import create_model, list_models  # noqa: E402
from .ann import IndexCfg  # noqa: E402
from .index import build_index, reindex, remove_items, upsert_items  # noqa: E402
from .search import SearchEngine, SearchHit  # noqa: E402

__all__ = ["IndexCfg", "MMSearchError", "SearchEngine", "SearchHit", "build_index", "create_model", "list_models",
           "reindex", "remove_items", "upsert_items", "__version__"]
