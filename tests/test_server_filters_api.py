"""Issue 20 item 12 (server side): GET /filters tells which fields are numeric and their range, and the
filters field takes [field, op, value] triples, so the page can offer a min / max range."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from mmsearch import SearchEngine, build_index  # noqa: E402
from mmsearch.server import ServeCfg, create_app  # noqa: E402
from mmsearch.server.state import numeric_fields  # noqa: E402


@pytest.fixture()
def priced(tmp_path, small_catalog):
    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    for n, row in enumerate(rows):
        row["price"] = [5, 9, 10, 100, 20, 3, 7, 1000, 40, 55, 60, 2][n]  # as text, "100" < "20"
        row["weight"] = 0.5 * n
        row["size"] = n if n % 2 else f"size {n}"  # mixed: not a number field
        row["sale"] = bool(n % 2)  # bools are not ranges
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
    with TestClient(create_app(SearchEngine.open(tmp_path / "idx", device="cpu"), ServeCfg(reload_interval_s=0)),
                    raise_server_exceptions=False) as c:
        yield c, rows


def test_filters_name_numeric_fields_with_their_range(priced):
    c, rows = priced
    body = c.get("/filters").json()
    assert body["numeric"] == {"price": {"min": 2, "max": 1000}, "weight": {"min": 0.0, "max": 5.5}}
    assert body["fields"]["price"][:3] == [10, 100, 1000]  # the old menu, unchanged (backward compatible)
    assert "sale" in body["fields"] and "sale" not in body["numeric"]
    schema = c.get("/openapi.json").json()["components"]["schemas"]["Filters"]
    assert "numeric" in schema["properties"]


def test_a_range_is_two_triples_on_one_field(priced):
    c, rows = priced
    want = {r["image"] for r in rows if 9 <= r["price"] <= 60}
    r = c.post("/search", data={"text": "shoe", "k": "100",
                                "filters": json.dumps([["price", ">=", 9], ["price", "<=", 60]])})
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["hits"]} == want
    r = c.get("/items", params={"filters": json.dumps([["price", ">=", 9], ["price", "<=", 60]])})
    assert {i["id"] for i in r.json()["items"]} == want
    r = c.post("/search", data={"text": "shoe", "filters": '{"price": [">=", 9]}'})  # the object form still works
    assert r.status_code == 200
    r = c.post("/search", data={"text": "shoe", "filters": "3"})
    assert r.status_code == 400 and "[field, op, value]" in r.json()["detail"]


def test_numeric_fields_need_numbers_only_and_a_span():
    items = [{"metadata": {"a": 1, "b": 1, "c": 1, "d": True, "e": float("nan")}},
             {"metadata": {"a": 2.5, "b": "x", "c": 1, "d": False, "e": 1}},
             {"metadata": {"f": 10 ** 400}}, {"metadata": {"f": 1}},  # beyond float range (stored as text)
             {"metadata": {}}]
    assert numeric_fields(items) == {"a": {"min": 1, "max": 2.5}}
