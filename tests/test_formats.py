"""Phone and camera formats (HEIC, AVIF, camera RAW) through the one image gate, and EXIF photo metadata.

The HEIC and AVIF files are written by the plugins in the test; the DNG by :func:`make_dng` below (a minimal
uncompressed Bayer DNG that LibRaw reads for real: no rawpy mock).
"""

from __future__ import annotations

import io
import json
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from mmsearch.catalog import formats
from mmsearch.catalog.gate import ImageRejected, open_image
from mmsearch.catalog.images import load_image
from mmsearch.catalog.photometa import camera_name, iso_datetime, photo_metadata
from mmsearch.catalog.scan import scan_catalog
from mmsearch.errors import ImageDecodeError


def photo_exif(orientation: int = 1, when: str = "2019:06:01 12:30:00", gps: bool = True) -> Image.Exif:
    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0112] = "Apple", "iPhone 12", orientation
    ex.get_ifd(0x8769)[0x9003] = when
    if gps:
        ex[0x8825] = {1: "N", 2: (48.0, 51.0, 0.0), 3: "E", 4: (2.0, 21.0, 0.0)}
    return ex


def red_left(w: int = 64, h: int = 32) -> Image.Image:
    """Red left half, blue right half: a rotation is visible in the result."""
    im = Image.new("RGB", (w, h), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, w // 2, h))
    return im


def make_dng(path, width: int = 64, height: int = 48, orientation: int = 1, make: str = "Canon",
             model: str = "EOS 5D") -> None:
    """A minimal valid DNG: one uncompressed 16-bit RGGB Bayer IFD with the tags LibRaw needs."""
    raw = np.full((height, width), 800, np.uint16)
    raw[0::2, 0::2] = 3000  # R sites bright: a reddish picture
    data = raw.astype("<u2").tobytes()
    entries: list[tuple[int, int, int, bytes]] = []

    def add(tag: int, typ: int, vals) -> None:
        if typ == 2:  # ASCII
            b = vals.encode() + b"\0"
            entries.append((tag, typ, len(b), b))
        elif typ in (5, 10):  # (S)RATIONAL
            b = b"".join(struct.pack("<II" if typ == 5 else "<ii", *v) for v in vals)
            entries.append((tag, typ, len(vals), b))
        else:
            fmt = {1: "B", 3: "H", 4: "I"}[typ]
            entries.append((tag, typ, len(vals), struct.pack(f"<{len(vals)}{fmt}", *vals)))

    tags = [(254, 4, [0]), (256, 4, [width]), (257, 4, [height]), (258, 3, [16]), (259, 3, [1]),
            (262, 3, [32803]), (271, 2, make), (272, 2, model), (273, 4, [0]), (274, 3, [orientation]),
            (277, 3, [1]), (278, 4, [height]), (279, 4, [len(data)]), (284, 3, [1]),
            (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]),  # CFA repeat 2x2, pattern RGGB
            (50706, 1, [1, 4, 0, 0]), (50708, 2, f"{make} {model}"), (50717, 4, [4095]),  # DNG version, white
            (50721, 10, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),  # ColorMatrix1
            (50728, 5, [(1, 1), (1, 1), (1, 1)]), (50778, 3, [21])]  # AsShotNeutral, D65 illuminant
    for tag, typ, vals in tags:
        add(tag, typ, vals)
    entries.sort()
    extra_at = 8 + 2 + 12 * len(entries) + 4
    ifd, extra, strip_field = bytearray(struct.pack("<H", len(entries))), bytearray(), 0
    for tag, typ, count, b in entries:
        if len(b) <= 4:
            ifd += struct.pack("<HHI", tag, typ, count) + b.ljust(4, b"\0")
            strip_field = len(ifd) - 4 if tag == 273 else strip_field
        else:
            ifd += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
            extra += b + b"\0" * (len(b) % 2)
    ifd += struct.pack("<I", 0)
    ifd[strip_field:strip_field + 4] = struct.pack("<I", extra_at + len(extra))
    with open(path, "wb") as fh:
        fh.write(b"II*\0" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + data)


def save_heic(path, im: Image.Image, exif: Image.Exif) -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the formats extra: pip install 'mmsearch[formats]'")
    pillow_heif.register_heif_opener()
    im.save(path, format="HEIF", exif=exif.tobytes(), quality=90)


def save_avif(path, im: Image.Image, exif: Image.Exif) -> None:
    if not formats.supported()["AVIF"]:
        pytest.skip("no AVIF support: Pillow >= 11.3 or pillow-avif-plugin (the formats extra)")
    im.save(path, format="AVIF", exif=exif.tobytes(), quality=90)


def mean_rgb(im: Image.Image, box) -> tuple[float, ...]:
    return tuple(np.asarray(im.crop(box), dtype=np.float64).mean(axis=(0, 1)))


# ------------------------------------------------------------------------------------- HEIC / AVIF / RAW
@pytest.mark.parametrize("save", [save_heic, save_avif], ids=["heic", "avif"])
def test_heic_and_avif_read_upright_with_photo_metadata(tmp_path, save):
    path = tmp_path / f"photo.{'heic' if save is save_heic else 'avif'}"
    save(path, red_left(), photo_exif(orientation=6))  # 6: turn 90 degrees clockwise to view
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (32, 64)  # upright: the 64 x 32 picture stands on its side
    top, bottom = mean_rgb(im, (4, 4, 28, 28)), mean_rgb(im, (4, 36, 28, 60))
    assert top[0] > 150 and top[2] < 100 and bottom[2] > 150  # the red half is on top after the rotation
    assert photo_metadata(path) == {"taken_at": "2019-06-01T12:30:00", "camera": "Apple iPhone 12", "has_gps": True}
    with open_image(io.BytesIO(path.read_bytes())) as up:  # an upload passes the same gate
        assert up.format in ("HEIF", "AVIF")


def test_dng_decodes_through_rawpy_upright(tmp_path):
    pytest.importorskip("rawpy", reason="the formats extra: pip install 'mmsearch[formats]'")
    path = tmp_path / "shot.dng"
    make_dng(path, orientation=6)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (24, 32)  # half size (LibRaw), turned upright from 64 x 48
    r, g, b = mean_rgb(im, (0, 0, 24, 32))
    assert r > b  # the bright red sites came through the demosaic
    assert load_image(path.read_bytes()).size == (24, 32)  # bytes: known as a DNG by its header
    assert photo_metadata(path) == {"camera": "Canon EOS 5D", "has_gps": False}
    with pytest.raises(ImageRejected) as exc:
        open_image(path, max_pixels=1000)  # header checks before LibRaw decodes
    assert exc.value.kind == "bomb"
    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"II*\0" + b"\0" * 100)
    with pytest.raises(ImageDecodeError, match="RAW"):
        load_image(bad)


def test_missing_extra_is_one_clear_line(tmp_path, monkeypatch):
    """Without pillow-heif / rawpy a HEIC or a DNG is rejected with a line naming the extra."""
    heic, dng = tmp_path / "a.heic", tmp_path / "b.dng"
    # the container header is all the gate looks at before it gives up
    heic.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    make_dng(dng)
    formats.register_plugins()
    monkeypatch.delitem(Image.OPEN, "HEIF", raising=False)  # as if pillow-heif were not installed
    monkeypatch.setitem(sys.modules, "rawpy", None)  # import rawpy -> ImportError
    for path, what in ((heic, "HEIC/HEIF"), (dng, "camera RAW")):
        with pytest.raises(ImageRejected) as exc:
            load_image(path)
        msg = str(exc.value)
        assert exc.value.kind == "format" and "\n" not in msg
        assert msg == f"{what} image: reading it needs the optional formats extra (pip install 'mmsearch[formats]')"


def test_scan_picks_up_phone_and_raw_files(tmp_path):
    for name in ("a.HEIC", "b.heif", "c.avif", "d.dng", "e.CR2", "f.nef", "g.arw", "h.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [it.id for it in scan_catalog(tmp_path)] == ["a.HEIC", "b.heif", "c.avif", "d.dng", "e.CR2", "f.nef",
                                                        "g.arw", "h.jpg"]


# ------------------------------------------------------------------------------------------ EXIF metadata
def test_jpeg_exif_date_camera_gps_and_rotation(tmp_path):
    path = tmp_path / "p.jpg"
    red_left().save(path, exif=photo_exif(orientation=6), quality=95)
    assert photo_metadata(path) == {"taken_at": "2019-06-01T12:30:00", "camera": "Apple iPhone 12", "has_gps": True}
    im = load_image(path)
    assert im.size == (32, 64) and mean_rgb(im, (4, 4, 28, 28))[0] > 150  # EXIF rotation applied: red on top
    plain = tmp_path / "plain.jpg"
    red_left().save(plain)
    assert photo_metadata(plain) == {}  # no camera EXIF: no fields (a product shot stays as it was)
    nogps = tmp_path / "nogps.jpg"
    red_left().save(nogps, exif=photo_exif(gps=False, when="0000:00:00 00:00:00"))
    assert photo_metadata(nogps) == {"camera": "Apple iPhone 12", "has_gps": False}


def test_exif_field_helpers():
    assert iso_datetime("2019:06:01 12:30:00\0") == "2019-06-01T12:30:00"
    assert iso_datetime("2019-06-01 12:30:00") == "2019-06-01T12:30:00"
    assert iso_datetime("    :  :     :  :  ") is None and iso_datetime(None) is None
    assert camera_name("NIKON CORPORATION", "NIKON D750") == "NIKON D750"
    assert camera_name("Canon", "EOS 5D") == "Canon EOS 5D"
    assert camera_name(" ", "X100V\0") == "X100V" and camera_name(None, None) == ""


def test_catalog_row_wins_over_exif(tmp_path):
    red_left().save(tmp_path / "a.jpg", exif=photo_exif())
    red_left().save(tmp_path / "b.jpg", exif=photo_exif(when="2021:01:02 03:04:05"))
    (tmp_path / "catalog.jsonl").write_text(json.dumps({"image": "a.jpg", "taken_at": "1999-12-31T00:00:00"}) + "\n")
    items = {it.id: it for it in scan_catalog(tmp_path)}
    assert items["a.jpg"].metadata == {"taken_at": "1999-12-31T00:00:00", "camera": "Apple iPhone 12",
                                       "has_gps": True}
    assert items["b.jpg"].metadata["taken_at"] == "2021-01-02T03:04:05"


def test_where_filters_on_exif_fields(tmp_path):
    """Built into an index, taken_at / camera / has_gps filter as documented (ISO dates compare as text)."""
    from mmsearch import SearchEngine, build_index

    cat = tmp_path / "cat"
    cat.mkdir()
    for name, when, gps in (("old.jpg", "2018:12:31 23:59:59", False), ("mid.jpg", "2019:06:01 12:30:00", True),
                            ("new.jpg", "2020:01:01 00:00:00", True)):
        red_left().save(cat / name, exif=photo_exif(when=when, gps=gps))
    red_left().save(cat / "product.jpg")
    build_index(cat, out=tmp_path / "index", model="tiny", device="cpu", num_workers=0, progress=False)
    engine = SearchEngine.open(tmp_path / "index", device="cpu")

    def ids(*where):
        return sorted(h.id for h in engine.search(text="a photo", k=10, where=list(where)))

    assert ids("taken_at>=2019-01-01", "taken_at<2020-01-01") == ["mid.jpg"]
    assert ids("taken_at>=2019-06-01T12:30:00") == ["mid.jpg", "new.jpg"]  # ISO strings compare in time order
    assert ids("taken_at<2019-06") == ["old.jpg"]  # a prefix works for < and >=
    assert ids("has_gps=true") == ["mid.jpg", "new.jpg"]
    assert ids("has_gps=false") == ["old.jpg"]
    assert ids("camera=Apple iPhone 12") == ["mid.jpg", "new.jpg", "old.jpg"]


def test_cli_summary_names_the_extra(tmp_path, monkeypatch):
    """The index summary prints the reason as written: rich markup must not eat "[formats]"."""
    from typer.testing import CliRunner

    from mmsearch.cli import app

    cat = tmp_path / "cat"
    cat.mkdir()
    red_left().save(cat / "a.jpg")
    (cat / "b.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    formats.register_plugins()
    monkeypatch.delitem(Image.OPEN, "HEIF", raising=False)
    result = CliRunner().invoke(app, ["index", str(cat), "--index", str(tmp_path / "i"), "--model", "tiny",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "b.heic: HEIC/HEIF image: reading it needs the optional formats extra (pip install " \
           "'mmsearch[formats]')" in result.stdout


def test_photo_metadata_rereads_a_changed_file(tmp_path):
    import os

    path = tmp_path / "p.jpg"
    red_left().save(path, exif=photo_exif(when="2019:06:01 12:30:00"))
    assert photo_metadata(path)["taken_at"] == "2019-06-01T12:30:00"
    red_left().save(path, exif=photo_exif(when="2021:02:03 04:05:06"))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock must not hide the change
    assert photo_metadata(path)["taken_at"] == "2021-02-03T04:05:06"


def test_sniff_knows_containers_and_raw_headers(tmp_path):
    assert formats.sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic") == "HEIF"
    assert formats.sniff(b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf") == "AVIF"  # AVIF by a compatible brand
    assert formats.sniff(b"II*\0\x10\0\0\0CR\x02\0" + b"\0" * 20) == "RAW"  # Canon CR2
    make_dng(tmp_path / "x.dng")
    assert formats.sniff((tmp_path / "x.dng").read_bytes()[:4096]) == "RAW"  # DNGVersion in IFD0
    plain = io.BytesIO()
    red_left().save(plain, format="TIFF")
    assert formats.sniff(plain.getvalue()[:4096]) is None and formats.sniff(b"\xff\xd8\xff") is None
