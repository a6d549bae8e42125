"""Property-based attack suite (Hypothesis): whatever a user or a client sends, the answer is a result or
a clean error (a domain error, a 4xx) — never another exception, a hang or a 5xx.

Deterministic (``derandomize=True``, no example database) and bounded: small example counts, the tiny
model, images of at most 64 px, so the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the test extra (hypothesis) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from mmsearch import SearchEngine, build_index  # noqa: E402
from mmsearch.catalog.images import load_image  # noqa: E402
from mmsearch.catalog.scan import scan_catalog  # noqa: E402
from mmsearch.errors import CatalogError, ImageDecodeError, MMSearchError, QueryError  # noqa: E402
from mmsearch.index.store import ItemStore  # noqa: E402


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------ generators
MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "I", "I;16", "F", "LAB", "HSV", "PA", "RGBX")
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP", "ICO", "PPM")
JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


@st.composite
def image_bytes(draw) -> bytes:
    """Images of any mode, format and (possibly elongated) size; some truncated, flipped or random."""
    kind = draw(st.sampled_from(["image", "image", "image", "random", "damaged"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    mode = draw(st.sampled_from(MODES))
    w = draw(st.integers(1, 64))
    h = draw(st.sampled_from([1, 2, 3, w, draw(st.integers(1, 64))]))
    if draw(st.booleans()):
        w = draw(st.sampled_from([w, 400, 1500, 3000]))  # elongated strips (cheap: h is small)
    try:
        im = Image.new(mode, (w, h), color=draw(st.integers(0, 255)) if mode in ("1", "L", "P", "I", "F") else None)
        buf = io.BytesIO()
        im.save(buf, format=draw(st.sampled_from(FORMATS)))
        data = buf.getvalue()
    except (OSError, ValueError, KeyError, TypeError):
        data = b"\x89PNG\r\n\x1a\n" + bytes(draw(st.binary(max_size=64)))  # a format that cannot hold the mode
    if kind == "damaged" and data:
        cut = draw(st.integers(0, len(data)))
        data = bytearray(data[:cut])
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
        data = bytes(data)
    return data


json_values = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
file_names = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
            max_size=12),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b
                                              and b not in (b".", b"..")).map(os.fsdecode),  # any bytes
)


# ------------------------------------------------------------------------------- the image gate
@fuzz(250)
@given(data=image_bytes())
def test_any_bytes_decode_to_rgb_or_a_clean_reason(data):
    from mmsearch.server.files import UploadRejected, probe_upload

    try:
        im = load_image(data)
        assert im.mode == "RGB" and max(im.size) <= 20 * min(im.size)
    except ImageDecodeError as exc:
        assert str(exc)
    try:
        probe_upload(data, 40_000_000)
    except UploadRejected as exc:
        assert exc.status in (400, 415) and str(exc)


# ------------------------------------------------------------------------- catalogs: scan + store
@fuzz(80)
@given(names=st.lists(file_names, min_size=1, max_size=4, unique=True),
       rows=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=4),
       titles=st.lists(st.text(max_size=12) | st.just("bad \ud800 surrogate"), max_size=4),
       csv_mode=st.booleans())
def test_any_catalog_scans_to_storable_items_or_a_clean_error(names, rows, titles, csv_mode):
    root = Path(tempfile.mkdtemp(prefix="fuzzcat"))
    try:
        written = []
        for name in names:
            try:
                with open(os.fsencode(root) + b"/" + os.fsencode(name) + b".png", "wb") as fh:
                    fh.write(b"not decoded by the scan")
                written.append(name + ".png")
            except (OSError, ValueError):
                continue
        lines = []
        for n, name in enumerate(written):
            row = dict(rows[n]) if n < len(rows) else {}
            row["image"] = name
            if n < len(titles):
                row["title"] = titles[n]
            lines.append(row)
        if csv_mode:
            keys = sorted({k for r in lines for k in r} | {"image"})
            text = ",".join(keys) + "\n" + "".join(",".join(json.dumps(r.get(k, ""))[:40] for k in keys) + "\n"
                                                     for r in lines)
            (root / "catalog.csv").write_bytes(text.encode("utf-8", "surrogateescape"))
        else:
            (root / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        skipped: list[dict] = []
        try:
            items = scan_catalog(root, skipped=skipped)
        except CatalogError as exc:
            assert "\n" not in str(exc).strip()
            return
        assert len(items) + len(skipped) >= len([w for w in written if not w.startswith(".")]) - 0
        json.dumps(skipped, ensure_ascii=False).encode("utf-8")  # reported names are printable
        store = ItemStore.create(root / "items.sqlite")
        store.upsert({"fid": i, "id": it.id, "path": it.path, "title": it.title, "text": it.text,
                      "metadata": it.metadata} for i, it in enumerate(items))
        store.commit()
        assert store.count() == len(items)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ catalogs: a whole index build
@fuzz(6)
@given(images=st.lists(image_bytes(), min_size=1, max_size=4),
       meta=st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=3), min_size=4, max_size=4))
def test_any_catalog_indexes_or_fails_cleanly(images, meta):
    root = Path(tempfile.mkdtemp(prefix="fuzzidx"))
    try:
        cat = root / "cat"
        cat.mkdir()
        for n, data in enumerate(images):
            (cat / f"i{n}.png").write_bytes(data)
        (cat / "catalog.jsonl").write_text("".join(json.dumps({**meta[n], "image": f"i{n}.png"}) + "\n"
                                                   for n in range(len(images))))
        try:
            report = build_index(cat, out=root / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
        except CatalogError as exc:  # none of the images could be read
            assert "could be read" in str(exc) or "no images" in str(exc)
            return
        assert report.indexed + len(report.skipped) == len(images)
        engine = SearchEngine.open(root / "idx", device="cpu")
        assert len(engine.search(text="anything", k=3)) == min(3, report.indexed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------- queries and filters (API)
where_specs = st.one_of(
    st.none(), st.text(max_size=30), st.lists(st.text(max_size=20), max_size=3),
    st.dictionaries(st.sampled_from(["category", "tags", "title", "price", "x"]), json_values, max_size=3),
    st.lists(st.tuples(st.text(max_size=6), st.sampled_from(["=", "<", ">=", "in", "!=", "<==", "~"]),
                       json_values), max_size=3),
)


@fuzz(200)
@given(text=st.text(max_size=40) | st.just("bad \udcff surrogate"), k=st.integers(-3, 500),
       weight=st.none() | st.floats(allow_nan=True, allow_infinity=True), where=where_specs)
def test_any_query_is_answered_or_refused_cleanly(engine, text, k, weight, where):
    try:
        hits = engine.search(text=text, k=k, image_weight=weight, where=where)
    except QueryError:
        return
    except MMSearchError as exc:  # any other domain error is still one clean line
        assert str(exc)
        return
    assert len(hits) <= k and all(h.rank == i for i, h in enumerate(hits, 1))
    if where is not None:
        allowed = set(engine.select(where).tolist())
        assert {engine.backend.store.fids_of([h.id])[h.id] for h in hits} <= allowed


# ----------------------------------------------------------------------------- the HTTP server
@pytest.fixture(scope="module")
def client(engine):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmsearch.server import ServeCfg, create_app

    with TestClient(create_app(engine, ServeCfg(reload_interval_s=0)), raise_server_exceptions=False) as c:
        yield c


form_values = st.one_of(st.none(), st.text(max_size=30), st.integers(-10**6, 10**6).map(str),
                        st.floats().map(str))
filter_payloads = st.one_of(
    st.none(), st.text(max_size=60), json_values.map(json.dumps),
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.lists(st.text(max_size=4), max_size=1500).map(lambda v: json.dumps({"category": v})),
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "=", "!=", "in", "~"]), json_values)
      .map(lambda t: json.dumps({"price": list(t)})),
)


@fuzz(150)
@given(text=form_values, k=form_values, weight=form_values, filters=filter_payloads,
       image=st.none() | image_bytes(), route=st.sampled_from(["/search", "/search", "/search/by-item/"]))
def test_any_request_gets_a_4xx_or_an_answer_never_a_5xx(client, engine, text, k, weight, filters, image, route):
    data = {name: v for name, v in (("text", text), ("k", k), ("image_weight", weight), ("filters", filters))
            if v is not None}
    if route.endswith("/"):
        route += engine.items[0]["id"]
        image = None
    files = {"image": ("q.bin", image, "application/octet-stream")} if image is not None else None
    r = client.post(route, data=data, files=files)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.status_code in (200, 400, 404, 413, 415, 422), r.text[:300]
    detail = r.json().get("detail", "") if r.status_code != 200 else ""
    assert "Traceback" not in str(detail) and "/tmp/" not in str(detail)
