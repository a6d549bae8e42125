"""Issue 20 item 5: query terms and photo pixels per request are capped (max_terms, max_request_pixels)."""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from mmsearch.server import ServeCfg, create_app  # noqa: E402


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, format="PNG")  # bilevel: a few bytes for many pixels
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(engine):
    cfg = ServeCfg(reload_interval_s=0, max_terms=4, max_request_pixels=30_000)
    with TestClient(create_app(engine, cfg), raise_server_exceptions=False) as c:
        yield c


def test_defaults_are_documented_and_validated():
    cfg = ServeCfg()
    assert cfg.max_terms == 16 and cfg.max_request_pixels == 80_000_000
    assert "max_terms" in (ServeCfg.__doc__ or "") and "max_request_pixels" in (ServeCfg.__doc__ or "")
    for name in ("max_terms", "max_request_pixels"):
        with pytest.raises(ValueError, match=name):
            ServeCfg(**{name: 0})


def test_too_many_text_terms_is_413_naming_the_limit(client):
    """999 texts in a 1 MB body took 46.6 s and kept 0.9 GB."""
    r = client.post("/search", data={"text": [f"t{i}" for i in range(5)], "k": "3"})
    assert r.status_code == 413 and "max_terms" in r.json()["detail"], r.text
    r = client.post("/search", data={"text": [f"t{i}" for i in range(4)], "k": "3"})
    assert r.status_code == 200, r.text


def test_not_terms_and_photos_count(client):
    photo = ("q.png", png(100, 100), "image/png")
    r = client.post("/search", data={"text": ["a", "b"], "not_text": ["c"]}, files=[("not_image", photo),
                                                                                      ("image", photo)])
    assert r.status_code == 413 and "max_terms" in r.json()["detail"]
    # an empty file field (a browser's unused file input) is no term
    r = client.post("/search", data={"text": ["a", "b", "c", "d"]}, files=[("image", ("", b"", "application/octet-stream"))])
    assert r.status_code == 200, r.text


def test_photo_pixels_of_a_request_are_capped(client):
    """100 copies of a 12 KB bilevel 40 MP PNG took 69 s; one request's photos are bounded in all."""
    two = [("image", ("a.png", png(100, 100), "image/png")), ("image", ("b.png", png(100, 100), "image/png"))]
    assert client.post("/search", files=two).status_code == 200  # 20,000 pixels
    three = two + [("not_image", ("c.png", png(110, 110), "image/png"))]
    r = client.post("/search", files=three)
    assert r.status_code == 413 and "max_request_pixels" in r.json()["detail"], r.text


def test_cli_query_and_by_item_are_capped_too(engine, client):
    r = client.post("/cli/query", json={"terms": [{"kind": "image", "image_b64": base64.b64encode(png(200, 200)).decode()}], "k": 3})
    assert r.status_code == 413 and "max_request_pixels" in r.json()["detail"]
    assert client.post("/cli/query", json={"terms": [{"kind": "image", "image_b64": base64.b64encode(png(100, 100)).decode()}]}).status_code == 200
    cfg = ServeCfg(reload_interval_s=0, max_terms=1)
    with TestClient(create_app(engine, cfg), raise_server_exceptions=False) as one:
        r = one.post("/cli/query", json={"terms": [{"kind": "image", "image_b64": base64.b64encode(png(10, 10)).decode()}, {"kind": "text", "text": "red"}]})
        assert r.status_code == 413 and "max_terms" in r.json()["detail"]
        item = engine.items[0]["id"]
        r = one.post(f"/search/by-item/{item}", data={"text": "red"})
        assert r.status_code == 413 and "max_terms" in r.json()["detail"]
        assert one.post(f"/search/by-item/{item}").status_code == 200


hypothesis = pytest.importorskip("hypothesis", reason="the test extra (hypothesis) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(texts=st.integers(0, 6), not_texts=st.integers(0, 3), photos=st.lists(st.integers(1, 150), max_size=4),
       not_photos=st.lists(st.integers(1, 150), max_size=2), blank=st.integers(0, 2))
def test_any_term_mix_is_answered_or_refused_by_the_right_limit(client, texts, not_texts, photos, not_photos, blank):
    data = {"text": [f"t{i}" for i in range(texts)] + [" "] * blank, "not_text": [f"n{i}" for i in range(not_texts)],
            "k": "3"}
    files = [("image", (f"{i}.png", png(s, s), "image/png")) for i, s in enumerate(photos)]
    files += [("not_image", (f"n{i}.png", png(s, s), "image/png")) for i, s in enumerate(not_photos)]
    r = client.post("/search", data=data, files=files or None)
    terms = texts + not_texts + len(photos) + len(not_photos)
    pixels = sum(s * s for s in photos + not_photos)
    if terms > 4:
        assert r.status_code == 413 and "max_terms" in r.json()["detail"], r.text
    elif pixels > 30_000:
        assert r.status_code == 413 and "max_request_pixels" in r.json()["detail"], r.text
    elif texts + len(photos) == 0:  # nothing to look for ("not" terms alone)
        assert r.status_code == 400, r.text
    else:  # (or a clean 400 when the photos and their "not" photos cancel out)
        assert r.status_code == 200 or "cancel out" in r.json()["detail"], r.text
