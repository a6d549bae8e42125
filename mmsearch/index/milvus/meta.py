"""The index's manifest and field statistics, kept in Milvus beside the items: ``<collection>__meta``.

A companion collection rather than collection properties: its rows are written and read like the
items (same consistency, no DDL on every update), the manifest is one row replaced in one upsert (the
commit point of an update), and it holds one row per metadata field (``fields`` / ``check_fields`` answer
from a few rows instead of scanning every item). Rows (``key`` is the primary key)::

    manifest        gen = the generation (1, 2, ...), value = the manifest JSON (or its first part)
    m:<gen>:<i>     further parts of a manifest over 60000 bytes, written before the ``manifest`` row
    f:<hash>        one metadata field: {"key": name, "n": items with it, "t": items with a text value that
                    is no number, "x": an example number}
    dirty           an update is writing (gen = the generation it will commit): the statistics may be
                    off until it commits; the next writer that finds it recounts them from the items

Milvus needs a vector field in every collection: ``v`` is a 2-d placeholder.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable

from ...errors import IndexIncompatibleError
from .expr import quote, str_list
from .filterdata import _hash
from .location import pymilvus
from .scan import scan

log = logging.getLogger(__name__)

PART = 60_000  # characters of manifest JSON per row (VARCHAR holds 65535 bytes; JSON here is ASCII)
VALUE_MAX = 65535
_ZERO = [0.0, 0.0]


def field_key(name: str) -> str:
    return "f:" + _hash(name).hex()


class MetaStore:
    """Read and write the meta rows of one index (``client``: a MilvusClient, ``name``: ``<coll>__meta``)."""

    def __init__(self, client: Any, name: str, lite: bool):
        self.client, self.name, self.lite = client, name, lite

    # --------------------------------------------------------------------------------------- setup
    def exists(self) -> bool:
        return bool(self.client.has_collection(self.name))

    def create(self) -> None:
        dt = pymilvus().DataType
        s = self.client.create_schema(auto_id=False, enable_dynamic_field=False,
                                      description="mmsearch index manifest and field statistics")
        s.add_field("key", dt.VARCHAR, max_length=512, is_primary=True)
        s.add_field("gen", dt.INT64)
        s.add_field("value", dt.VARCHAR, max_length=VALUE_MAX)
        s.add_field("v", dt.FLOAT_VECTOR, dim=2)
        ip = self.client.prepare_index_params()
        ip.add_index("v", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.name, schema=s, consistency_level="Strong")
        create_indexes(self.client, self.name, ip)

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.name)

    def _get(self, keys: list[str], fields: tuple[str, ...] = ("key", "gen", "value")) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for s in range(0, len(keys), 500):
            part = keys[s:s + 500]
            for r in self.client.query(self.name, filter=str_list("key", part), output_fields=list(fields)):
                out[r["key"]] = r
        return out

    def _put(self, rows: Iterable[tuple[str, int, str]]) -> None:
        data = [{"key": k, "gen": int(g), "value": v, "v": _ZERO} for k, g, v in rows]
        for s in range(0, len(data), 500):
            self.client.upsert(self.name, data[s:s + 500])

    def _delete(self, keys: list[str]) -> None:
        for s in range(0, len(keys), 500):
            self.client.delete(self.name, filter=str_list("key", keys[s:s + 500]))

    # ------------------------------------------------------------------------------------ manifest
    def generation(self) -> int:
        """The committed generation (0: nothing committed yet). Cheap: read by ``changed()`` polls."""
        row = self._get(["manifest"], ("key", "gen")).get("manifest")
        return int(row["gen"]) if row else 0

    def read(self) -> dict[str, Any] | None:
        """The committed manifest (with ``generation``), or None before the first commit."""
        for _ in range(3):  # a writer may replace the parts between our two reads: read again
            head = self._get(["manifest"]).get("manifest")
            if head is None:
                return None
            gen, first = int(head["gen"]), json.loads(head["value"])
            text = first["text"]
            if first["parts"] > 1:
                keys = [f"m:{gen}:{i}" for i in range(1, first["parts"])]
                rows = self._get(keys)
                if len(rows) != len(keys):
                    continue
                text += "".join(rows[k]["value"] for k in keys)
            try:
                manifest = json.loads(text)
            except json.JSONDecodeError:
                break
            manifest["generation"] = gen
            return manifest
        raise IndexIncompatibleError(f"the manifest in Milvus collection {self.name} is unreadable; rebuild the index")

    def write(self, manifest: dict[str, Any], generation: int) -> None:
        """Commit ``manifest`` as ``generation``: its extra parts first, the ``manifest`` row last (one upsert:
        readers see the old manifest or the new one), then the previous generation's parts go."""
        text = json.dumps({**manifest, "generation": generation}, ensure_ascii=True, sort_keys=True)
        chunks = [text[i:i + PART] for i in range(0, len(text), PART)] or [""]
        old = self._get(["manifest"], ("key", "gen")).get("manifest")
        self._put((f"m:{generation}:{i}", generation, chunks[i]) for i in range(1, len(chunks)))
        self._put([("manifest", generation, json.dumps({"parts": len(chunks), "text": chunks[0]}))])
        if old is not None and int(old["gen"]) != generation:
            self.client.delete(self.name, filter=f"key like {quote('m:' + str(int(old['gen'])) + ':%')}")

    # --------------------------------------------------------------------------------- dirty flag
    def dirty(self) -> int | None:
        row = self._get(["dirty"], ("key", "gen")).get("dirty")
        return int(row["gen"]) if row else None

    def set_dirty(self, generation: int) -> None:
        self._put([("dirty", generation, "")])

    def clear_dirty(self) -> None:
        self._delete(["dirty"])

    # ------------------------------------------------------------------------------ field statistics
    def stats(self) -> dict[str, dict[str, Any]]:
        """field name -> {"n", "t", "x"} for every field some item has."""
        out: dict[str, dict[str, Any]] = {}
        for r in scan(self.client, self.name, 'key like "f:%"', ["key", "value"], self.lite):
            s = json.loads(r["value"])
            if s["n"] > 0:
                out[s["key"]] = s
        return out

    def add_stats(self, delta: dict[str, dict[str, Any]], generation: int) -> None:
        """Add per-field counts (``{"n": +-k, "t": +-k, "x": number or None}``) to the stored ones."""
        if not delta:
            return
        keys = {field_key(name): name for name in delta}
        current = {r["key"]: json.loads(r["value"]) for r in self._get(list(keys)).values()}
        put, gone = [], []
        for k, name in keys.items():
            d = delta[name]
            s = current.get(k, {"key": name, "n": 0, "t": 0, "x": None})
            s = {"key": name, "n": s["n"] + d["n"], "t": s["t"] + d["t"], "x": s.get("x") if s.get("x") is not None
                 else d.get("x")}
            if s["n"] > 0:
                put.append((k, generation, _fit(s)))
            elif k in current:
                gone.append(k)
        self._put(put)
        self._delete(gone)

    def replace_stats(self, stats: dict[str, dict[str, Any]], generation: int) -> None:
        """Set the statistics to exactly ``stats`` (a recount after an interrupted update)."""
        self.client.delete(self.name, filter='key like "f:%"')
        self._put((field_key(name), generation, _fit({"key": name, **s})) for name, s in stats.items() if s["n"] > 0)


def ensure_loaded(client: Any, collection: str) -> None:
    """Load ``collection`` unless it is (a server keeps collections loaded; Milvus Lite releases them when its
    process ends, and refuses reads until they are loaded again)."""
    if "Loaded" not in str(client.get_load_state(collection).get("state")):
        client.load_collection(collection)


def create_indexes(client: Any, collection: str, params: Any) -> None:
    """Create the indexes without waiting on them (pymilvus' wait polls a timestamp call Milvus Lite lacks,
    every 0.5 s), then load the collection: Milvus searches rows not yet indexed by brute force."""
    client.create_index(collection, params, sync=False)
    client.load_collection(collection)


def _fit(stat: dict[str, Any]) -> str:
    text = json.dumps(stat, ensure_ascii=True)
    if len(text) > VALUE_MAX:  # a field name of ~60 KB: keep the counts, shorten the name shown in messages
        stat = {**stat, "key": stat["key"][:1000] + "..."}
        text = json.dumps(stat, ensure_ascii=True)
    return text
