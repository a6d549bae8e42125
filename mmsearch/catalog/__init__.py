"""Catalogs: scan a folder or tar shards into items, read images safely, metadata rows."""
