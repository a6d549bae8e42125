"""mmsearch: multimodal image search (text, photo, photo + text) over a folder of images."""

__version__ = "0.1.0"

from .errors import MMSearchError  # noqa: E402
from .factory import create_model, list_models  # noqa: E402
from .index import build_index  # noqa: E402
from .search import SearchEngine, SearchHit  # noqa: E402

__all__ = ["MMSearchError", "SearchEngine", "SearchHit", "build_index", "create_model", "list_models", "__version__"]
