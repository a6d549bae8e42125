"""The ``{item_id:itempath}`` route parameter: any item id, newlines included.

Starlette's ``path`` convertor is the regex ``.*``, which stops at a newline, so an item whose file name
holds one (legal on Linux, and its id is its path) answered 404 on ``/items/{id}`` and its thumbnail.
"""

from __future__ import annotations

from starlette.convertors import PathConvertor, register_url_convertor

ITEM_PATH = "itempath"


class ItemPathConvertor(PathConvertor):
    regex = r"[\s\S]*"  # ``.*`` with newlines (the route regex is compiled without DOTALL)


register_url_convertor(ITEM_PATH, ItemPathConvertor())
