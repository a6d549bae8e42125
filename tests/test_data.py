"""Catalog scanning and robust image loading, with real (generated) files of every awkward kind."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mmsearch.catalog.images import load_image
from mmsearch.catalog.scan import scan_catalog
from mmsearch.errors import CatalogError, ImageDecodeError


def save(im: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def test_scan_finds_images_recursively_and_ignores_the_rest(tmp_path):
    root = tmp_path / "cat"
    red = Image.new("RGB", (8, 8), "red")
    save(red, root / "a.JPG")
    save(red, root / "sub" / "deeper" / "b.png")
    save(red, root / ".hidden" / "c.png")
    save(red, root / ".d.png")
    save(red, root / "index" / "e.png")  # the index folder itself is excluded
    (root / "notes.txt").write_text("not an image")
    items = scan_catalog(root, exclude=[root / "index"])
    assert [it.id for it in items] == ["a.JPG", "sub/deeper/b.png"]


def test_text_and_metadata_first_match_wins(tmp_path):
    root = tmp_path / "cat"
    for name in ("a.png", "b.png", "c.png"):
        save(Image.new("RGB", (4, 4)), root / name)
    (root / "catalog.jsonl").write_text(json.dumps({"image": "./a.png", "title": "Red shoe", "text": "leather",
                                                    "price": 30}) + "\n\n")
    (root / "catalog.csv").write_text("image,title\nb.png,ignored because jsonl wins\n")
    (root / "b.txt").write_text("Blue bag\nsecond line is not the title\n")
    items = {it.id: it for it in scan_catalog(root)}
    assert items["a.png"].title == "Red shoe" and items["a.png"].metadata == {"price": 30}
    assert items["a.png"].full_text == "Red shoe. leather"
    assert items["b.png"].title == "Blue bag"
    assert items["c.png"].title == "" and items["c.png"].full_text == ""


def test_csv_metadata(tmp_path):
    root = tmp_path / "cat"
    save(Image.new("RGB", (4, 4)), root / "x" / "a.png")
    (root / "catalog.csv").write_text("image,title,brand\nx/a.png,Green hat,acme\n")
    (item,) = scan_catalog(root)
    assert item.title == "Green hat" and item.metadata == {"brand": "acme"}


def test_malformed_metadata_line_is_named(tmp_path):
    root = tmp_path / "cat"
    save(Image.new("RGB", (4, 4)), root / "a.png")
    (root / "catalog.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(CatalogError, match=r"catalog.jsonl:2"):
        scan_catalog(root)


def test_missing_empty_and_non_folder_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        scan_catalog(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CatalogError, match="no images"):
        scan_catalog(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(CatalogError, match="not a folder"):
        scan_catalog(tmp_path / "file.png")


# ------------------------------------------------------------------------------------------ decoding
def test_bad_files_raise_with_a_reason(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(tmp_path / "zero.jpg")
    (tmp_path / "text.png").write_text("this is not a png")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        load_image(tmp_path / "text.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")


def test_modes_become_rgb(tmp_path):
    cmyk = save(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # red in CMYK
    r, g, b = load_image(cmyk).getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60
    assert load_image(save(Image.new("L", (5, 5), 128), tmp_path / "grey.png")).getpixel((0, 0)) == (128, 128, 128)
    sixteen = Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    assert load_image(save(sixteen, tmp_path / "16bit.png")).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert load_image(save(pal, tmp_path / "pal.png")).getpixel((0, 0)) == (0, 0, 255)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white background
    assert load_image(save(rgba, tmp_path / "rgba.png")).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    assert load_image(half).getpixel((0, 0)) == (0, 0, 0)


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(im, tmp_path / "rot.jpg", exif=exif)
    assert load_image(path).size == (20, 40)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = load_image(path).getpixel((4, 4))
    assert r > 200 and b < 50


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(path)


def test_bytes_and_pil_inputs_match_path(sample_catalog, tmp_path):
    path = sample_catalog / "food" / "banana.webp"
    a = np.asarray(load_image(path))
    assert np.array_equal(a, np.asarray(load_image(path.read_bytes())))
    assert np.array_equal(a, np.asarray(load_image(Image.open(path))))
    shutil.copy(path, tmp_path / "b.webp")
    assert np.array_equal(a, np.asarray(load_image(str(tmp_path / "b.webp"))))
