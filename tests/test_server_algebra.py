"""HTTP: the query algebra on POST /search, GET /items, offline /docs, /redoc and the favicon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from mmsearch.server import ServeCfg, create_app  # noqa: E402

CATALOG = Path(__file__).resolve().parents[1] / "mmsearch" / "sample" / "catalog"


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServeCfg(reload_interval_s=0))) as c:
        yield c


def ids(r) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def test_algebra_over_http_matches_the_engine(client, engine):
    lemon, taxi = (CATALOG / "food/lemon.webp").read_bytes(), (CATALOG / "vehicle/taxi.webp").read_bytes()
    r = client.post("/search", data={"text": ["lemon", "taxi"], "not_text": ["bus"], "k": "8"})
    assert ids(r) == [h.id for h in engine.search(text=["lemon", "taxi"], not_text="bus", k=8)]
    r = client.post("/search", files=[("image", ("a.webp", lemon, "image/webp")), ("image", ("b.webp", taxi, "image/webp")),
                                      ("not_image", ("c.webp", lemon, "image/webp"))],
                    data={"image_weights": ["1", "3"], "k": "5"})
    want = engine.search(image=[(1, lemon), (3, taxi)], not_image=lemon, k=5)
    assert ids(r) == [h.id for h in want]
    # a negative weight is a "not"; weights must match the values one to one
    r = client.post("/search", data={"text": ["lemon", "banana"], "text_weights": ["1", "-1"], "k": "8"})
    assert ids(r) == [h.id for h in engine.search(text="lemon", not_text="banana", k=8)]
    bad = client.post("/search", data={"text": ["lemon"], "text_weights": ["1", "2"]})
    assert bad.status_code == 400 and "text_weights has 2 value(s) for 1 text(s)" in bad.json()["detail"]
    only_not = client.post("/search", data={"not_text": "banana"})
    assert only_not.status_code == 400 and "at least one photo or text" in only_not.json()["detail"]


def test_unknown_filter_field_is_400_naming_the_known_ones(client):
    r = client.post("/search", data={"text": "taxi", "filters": json.dumps({"colour": "red"})})
    assert r.status_code == 400 and "known fields: category, tags, title" in r.json()["detail"]


def test_items_listing(client):
    all_ = client.get("/items", params={"limit": 5}).json()
    assert all_["total"] == 60 and len(all_["items"]) == 5
    food = client.get("/items", params={"filters": json.dumps({"category": "food"}), "limit": 100}).json()
    assert food["total"] == 9 and {it["metadata"]["category"] for it in food["items"]} == {"food"}
    assert client.get("/items", params={"filters": '{"colour": "red"}'}).status_code == 400


def test_docs_are_served_offline_and_the_favicon(client):
    pytest.importorskip("fastapi_offline", reason="fastapi-offline (the serve extra) is not installed")
    html = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    redoc = client.get("/redoc").text
    assert "/docs-assets/redoc.standalone.js" in redoc and "fonts.googleapis" not in redoc
    assert client.get("/docs-assets/redoc.standalone.js").status_code == 200
    fav = client.get("/favicon.ico")
    assert fav.status_code == 200 and fav.headers["content-type"].startswith("image/svg+xml")
