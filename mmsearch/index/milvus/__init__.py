"""The Milvus index backend: an index in a Milvus collection (Milvus Lite in one file, or a server / cluster).

Public pieces: :func:`parse_location` / :class:`MilvusLocation` (location.py), :class:`MilvusReader`
(reader.py: index.backend.IndexReader), :class:`MilvusWriter` (writer.py: create, apply an update, drop),
:func:`check_row` (schema.py: can Milvus hold this item). pymilvus is imported only when a Milvus
location is opened (the ``milvus`` extra).
"""

from .location import MilvusConnectionError, MilvusLocation, MilvusUnavailableError, connect, parse_location
from .reader import MilvusReader
from .schema import check_row
from .writer import MilvusWriter

__all__ = ["MilvusConnectionError", "MilvusLocation", "MilvusReader", "MilvusUnavailableError", "MilvusWriter",
           "check_row", "connect", "parse_location"]
