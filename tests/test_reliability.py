"""Regression tests of issue 12: each defect found by attack, reproduced small, fails before its fix."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import SearchEngine, build_index
from mmsearch.catalog.images import load_image
from mmsearch.errors import ImageDecodeError, QueryError

ROOT = Path(__file__).resolve().parents[1]


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def catalog_with(tmp_path: Path, small_catalog: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (small_catalog / name).write_bytes(data)
    return small_catalog


def run_cli(*args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


# --------------------------------------------------------------- 2: elongated images, every path
def test_2_elongated_images_are_refused_from_the_header_on_every_path(tmp_path, small_catalog, tiny_index):
    strip = png(Image.new("RGB", (4000, 1)))
    catalog_with(tmp_path, small_catalog, {"strip.png": strip})
    report = build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0,
                         progress=False)
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    assert "elongated" in reasons["strip.png"]
    assert report.indexed == 12
    with pytest.raises(ImageDecodeError, match="elongated"):
        load_image(strip)
    engine = SearchEngine.open(tiny_index, device="cpu")
    with pytest.raises(QueryError, match="elongated"):
        engine.search(image=small_catalog / "strip.png")


# --------------------------------------------------------------- 3: FIFOs and device links
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_3_fifo_and_dev_zero_link_in_the_catalog_are_skipped_not_hung(tmp_path, small_catalog):
    os.mkfifo(small_catalog / "pipe.jpg")
    (small_catalog / "zero.png").symlink_to("/dev/zero")
    r = run_cli("index", str(small_catalog), "--out", str(tmp_path / "idx"), "--model", "tiny", "--device", "cpu",
                "--workers", "0", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pipe.jpg: not a regular file" in r.stdout and "zero.png: not a regular file" in r.stdout
    assert "Indexed 12 items" in r.stdout


# --------------------------------------------------------------- 5: float32 (mode F) TIFF
def test_5_float32_tiff_is_read_on_every_path(tmp_path, small_catalog, tiny_index):
    arr = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[0, 0], arr[0, 1] = np.nan, np.inf
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, format="TIFF")
    tiff = buf.getvalue()
    with Image.open(io.BytesIO(tiff)) as im:
        assert im.mode == "F"
    rgb = load_image(tiff)
    assert rgb.mode == "RGB" and rgb.getpixel((63, 63)) == (255, 255, 255)
    catalog_with(tmp_path, small_catalog, {"float.tif": tiff})
    report = build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0,
                         progress=False)
    assert report.skipped == [] and report.indexed == 13
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmsearch.server import ServeCfg, create_app

    with TestClient(create_app(SearchEngine.open(tiny_index, device="cpu"), ServeCfg(reload_interval_s=0))) as c:
        r = c.post("/search", files={"image": ("f.tif", tiff, "image/tiff")})
        assert r.status_code == 200, r.text


# --------------------------------------------------------------- 7: ICO and decoding off the event loop
def test_7_ico_is_refused_and_uploads_are_probed_off_the_event_loop(tiny_index, monkeypatch):
    pytest.importorskip("fastapi")
    import threading

    from fastapi.testclient import TestClient

    from mmsearch.server import ServeCfg, create_app
    from mmsearch.server import routes as app_mod

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="ICO")
    threads = []
    real = app_mod.probe_upload

    def spy(data, max_pixels):
        threads.append(threading.current_thread().name)
        return real(data, max_pixels)

    monkeypatch.setattr(app_mod, "probe_upload", spy)
    with TestClient(create_app(SearchEngine.open(tiny_index, device="cpu"), ServeCfg(reload_interval_s=0))) as c:
        loop_thread = c.portal.call(lambda: threading.current_thread().name)
        r = c.post("/search", files={"image": ("x.ico", buf.getvalue(), "image/x-icon")})
        assert r.status_code == 415, r.text
        assert threads and threads[0] != loop_thread


# --------------------------------------------------------------- 4: one item never loses a run
def write_jsonl(catalog: Path, extra: list[dict]) -> None:
    rows = [json.loads(line) for line in (catalog / "catalog.jsonl").read_text().splitlines()]
    with open(catalog / "catalog.jsonl", "w", encoding="utf-8") as fh:
        # ensure_ascii: "\ud800" stays an escape, so the file is valid UTF-8 on disk
        fh.writelines(json.dumps(row) + "\n" for row in rows + extra)


def test_4_unstorable_items_are_skipped_by_name_and_the_run_completes(tmp_path, small_catalog):
    red = png(Image.new("RGB", (32, 32), "red"))
    with open(os.fsencode(small_catalog) + b"/caf\xe9.png", "wb") as fh:  # a Latin-1 file name
        fh.write(red)
    for name in ("huge.png", "lone.png", "deep.png"):
        (small_catalog / name).write_bytes(red)
    deep: dict = {}
    node = deep
    for _ in range(60):
        node["x"] = {}
        node = node["x"]
    write_jsonl(small_catalog, [{"image": "huge.png", "sku": 2**64 + 1, "big": 10**400},
                                {"image": "lone.png", "title": "bad \ud800 title"},
                                {"image": "deep.png", "meta": deep}])
    out = tmp_path / "idx"
    report = build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"caf\\xe9.png", "lone.png", "deep.png"}, reasons
    assert "UTF-8" in reasons["caf\\xe9.png"] and "UTF-8" in reasons["lone.png"] and "deep" in reasons["deep.png"]
    assert report.indexed == 13  # the 12 + huge.png, whose 2**64 is kept (as text in the filter table)
    engine = SearchEngine.open(out, device="cpu")
    assert [h.id for h in engine.search(text="x", where={"sku": 2**64 + 1})] == ["huge.png"]
    assert engine.search(text="x", k=3, where=[("big", ">", 1)]) == []  # 10**400 has no float value
    again = build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    assert again.unchanged == 13 and len(again.skipped) == 3


def test_4_csv_row_with_an_extra_column_is_skipped_by_name(tmp_path, small_catalog):
    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    (small_catalog / "catalog.jsonl").unlink()
    lines = ["image,title,category"] + [f"{r['image']},{r['title']},{r['category']}" for r in rows]
    lines[3] += ",surplus"
    (small_catalog / "catalog.csv").write_text("\n".join(lines) + "\n")
    report = build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0,
                         progress=False)
    assert [s["id"] for s in report.skipped] == [rows[2]["image"]]
    assert "more field(s) than the header" in report.skipped[0]["reason"]
    assert report.indexed == 11


@pytest.mark.parametrize("name, content, fragment", [
    ("catalog.jsonl", b'{"image": "a.png", "title": "caf\xe9"}\n', "not valid UTF-8"),
    ("catalog.jsonl", b'{"image": "a.png", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "nested too deeply"),
    ("catalog.csv", b"image,title\na.png,caf\xe9\n", "not valid UTF-8"),
    ("catalog.csv", b"image,title\na.png," + b"x" * 200_000 + b"\n", "field larger than field limit"),
])
def test_4_unreadable_metadata_files_are_one_line_errors_naming_the_line(tmp_path, name, content, fragment):
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "a.png").write_bytes(png(Image.new("RGB", (8, 8))))
    (cat / name).write_bytes(content)
    r = run_cli("index", str(cat), "--out", str(tmp_path / "idx"), "--model", "tiny", "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = 1 if name.endswith(".jsonl") else 2
    assert fragment in r.stderr and f"{name}:{line}" in r.stderr.replace("\n", "")


# --------------------------------------------------------------- 9: one bad tar is skipped, not fatal
def test_9_bad_tar_shards_and_members_are_skipped_not_fatal(tmp_path, small_catalog):
    import tarfile

    (small_catalog / "random.tar").write_bytes(os.urandom(3000))
    (small_catalog / "empty.tar").write_bytes(b"")
    with tarfile.open(small_catalog / "shard.tar", "w") as tf:
        for key, meta in (("good", b'{"title": "fine"}'), ("bad", b'{"title": ')):
            for ext, data in ((".png", png(Image.new("RGB", (16, 16), "blue"))), (".json", meta)):
                info = tarfile.TarInfo(key + ext)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    report = build_index(small_catalog, out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0,
                         progress=False)
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"random.tar", "empty.tar", "shard.tar/bad.png"}, reasons
    assert "not valid JSON" in reasons["shard.tar/bad.png"]
    assert report.indexed == 13
    assert str(small_catalog) not in json.dumps(report.skipped)


# --------------------------------------------------------------- 11: one-line errors, info --check
@pytest.fixture()
def own_index(tmp_path, tiny_index) -> Path:
    import shutil

    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def assert_one_line_error(r: subprocess.CompletedProcess, fragment: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and fragment in r.stderr, r.stderr[-1500:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_11_cli_cases_get_one_line_errors(tmp_path, own_index):
    assert_one_line_error(run_cli("reindex", "-i", str(own_index), "--index-type", "IVF99999,Flat"),
                          "cannot train a IVF99999,Flat index on 60 vectors")
    (tmp_path / "a_file").write_text("x")
    assert_one_line_error(run_cli("index", str(ROOT / "mmsearch/sample/catalog"), "--out", str(tmp_path / "a_file"),
                                  "--model", "tiny"), "is not a folder")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable.encode(), b"-m", b"mmsearch", b"query", b"-i", str(own_index).encode(),
                        b"caf\xe9 shoes"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert_one_line_error(r, "not valid UTF-8", code=2)
    (tmp_path / "q.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    assert_one_line_error(run_cli("query", "-i", str(own_index), "--batch", str(tmp_path / "q.jsonl")),
                          "q.jsonl:1: not valid UTF-8", code=2)


@pytest.mark.slow
def test_11_damaged_manifests_and_current_are_one_line_errors(own_index):
    snap = own_index / "snapshots" / (own_index / "CURRENT").read_text().strip()
    manifest = json.loads((snap / "manifest.json").read_text())
    (snap / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "channels"}))
    for args in (("info",), ("query", "shoe")):
        assert_one_line_error(run_cli(*args, "-i", str(own_index)), "channels", code=1)
    (own_index / "CURRENT").write_bytes(b"\xff\xfe\x00binary")
    assert_one_line_error(run_cli("query", "shoe", "-i", str(own_index)), "holds no built index")


def test_11_info_checks_checksums_and_says_how_to_repair(own_index):
    r = run_cli("info", "-i", str(own_index))
    assert r.returncode == 0 and "files intact" in r.stdout, r.stderr
    snap = own_index / "snapshots" / (own_index / "CURRENT").read_text().strip()
    data = bytearray((snap / "image.f16.npy").read_bytes())
    data[-1] ^= 0xFF
    (snap / "image.f16.npy").write_bytes(bytes(data))
    r = run_cli("info", "-i", str(own_index))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "image.f16.npy: checksum mismatch" in r.stderr and "--rebuild" in r.stderr
    assert run_cli("info", "--no-check", "-i", str(own_index)).returncode == 0


@pytest.mark.slow
def test_low_index_without_model_keeps_the_index_model(tmp_path, small_catalog):
    from mmsearch.index.snapshot import read_manifest

    out = tmp_path / "idx"
    build_index(small_catalog, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    (small_catalog / "new.png").write_bytes(png(Image.new("RGB", (20, 20), "green")))
    r = run_cli("index", str(small_catalog), "--out", str(out), "--device", "cpu", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "1 added" in r.stdout and "1 images encoded" in r.stdout
    assert read_manifest(out)["model"]["name"] == "tiny"


def test_5_every_pillow_mode_is_converted_or_refused_with_a_reason():
    modes = sorted(set(Image.MODES) | {"I;16", "I;16B", "I;16L", "I;16N", "RGBa", "La", "PA", "LAB", "HSV"})
    converted = []
    for mode in modes:
        try:
            im = Image.new(mode, (4, 4))
        except ValueError:
            continue
        try:
            assert load_image(im).mode == "RGB"
            converted.append(mode)
        except ImageDecodeError as exc:
            assert f"mode {mode}" in str(exc)
    assert {"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "LA", "PA", "LAB", "HSV"} <= set(converted)
