"""Domain errors. The CLI turns any MMSearchError into one red line and ``exit_code``."""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with (1: bad input or state, 2: usage)."""

    exit_code = 1


class CatalogError(MMSearchError):
    """The catalog folder is missing, empty, or its metadata file is malformed."""


class ImageDecodeError(MMSearchError):
    """An image could not be read or decoded (the message is the reason shown to the user)."""


class ModelError(MMSearchError):
    """Unknown model name, unreadable or incompatible checkpoint."""


class IndexNotFoundError(MMSearchError):
    """No index at the given path."""


class IndexIncompatibleError(MMSearchError):
    """The index was built by another model or an incompatible mmsearch version, or is damaged."""


class QueryError(MMSearchError):
    """A query without image or text, with an unreadable image, or otherwise malformed."""

    exit_code = 2


class ItemNotFoundError(QueryError):
    """A query names an item (``search_similar``) that is not in the index or has no stored image."""


class ServeError(MMSearchError):
    """The server cannot start as asked (e.g. a public address without an API key)."""
