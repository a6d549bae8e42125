"""Issue 20 item 4: thumbnail memory is bounded (shrunk on decode, bounded decodes, one per file shared by
concurrent requests, freed memory handed back). 20 concurrent first requests for a 64 MP BMP peaked at 7.7 GB."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from mmsearch.catalog import images as images_mod
from mmsearch.server import files
from mmsearch.server.files import ThumbnailCache


def conversions(monkeypatch) -> list[tuple[int, int]]:
    """Sizes of the images load_image converts to RGB (each conversion copies the image it is given)."""
    seen: list[tuple[int, int]] = []
    real = images_mod._to_rgb

    def spy(im):
        seen.append(im.size)
        return real(im)

    monkeypatch.setattr(images_mod, "_to_rgb", spy)
    return seen


@pytest.mark.parametrize("fmt, mode, suffix", [("JPEG", "RGB", "jpg"), ("PNG", "RGB", "png"), ("BMP", "RGB", "bmp"),
                                               ("PNG", "P", "png"), ("PNG", "1", "png"), ("TIFF", "RGBA", "tif"),
                                               ("WEBP", "RGB", "webp")])
def test_a_large_image_is_shrunk_on_decode(tmp_path, monkeypatch, fmt, mode, suffix):
    path = tmp_path / f"big.{suffix}"
    Image.new(mode, (4000, 3000), 1 if mode in ("1", "P") else (200, 30, 30, 255)[:len(mode)]).save(path, format=fmt)
    seen = conversions(monkeypatch)
    data = files.make_thumbnail(path, 256)
    thumb = Image.open(__import__("io").BytesIO(data))
    assert thumb.format == "WEBP" and max(thumb.size) == 256 and thumb.size == (256, 192)
    # JPEG: DCT scaling to 1/4 (1000 x 750); others: reduce(7) right after decoding (571 x 428)
    assert seen and all(max(s) <= 1000 for s in seen), seen


def test_reduce_keeps_the_orientation_and_the_long_side(tmp_path):
    im = Image.new("RGB", (4000, 2000), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    im.save(tmp_path / "r.png", exif=exif)
    out = images_mod.load_image(tmp_path / "r.png", draft_size=512, reduce=True)
    assert out.size == (286, 572) and out.mode == "RGB"  # reduce(7): long side still at least 512
    assert images_mod.load_image(tmp_path / "r.png").size == (2000, 4000)  # without reduce: untouched


def slow_counting_thumbnails(monkeypatch, gate: threading.Event) -> dict:
    stats = {"calls": [], "running": 0, "peak": 0}
    lock = threading.Lock()

    def fake(path: Path, size: int) -> bytes:
        with lock:
            stats["calls"].append(path.name)
            stats["running"] += 1
            stats["peak"] = max(stats["peak"], stats["running"])
        gate.wait(20)
        with lock:
            stats["running"] -= 1
        return f"thumb of {path.name}".encode()

    monkeypatch.setattr(files, "make_thumbnail", fake)
    return stats


def wait_until(cond, what: str) -> None:
    for _ in range(2000):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_concurrent_requests_for_one_file_share_one_decode(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(path)
    gate = threading.Event()
    stats = slow_counting_thumbnails(monkeypatch, gate)
    cache = ThumbnailCache(64, workers=2)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(cache.get(path))) for _ in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.shared == 19, "19 requests waiting on the first one's decode")
    gate.set()
    for t in threads:
        t.join(20)
    assert stats["calls"] == ["a.png"]  # decoded once
    assert len(out) == 20 and len({d for d, _ in out}) == 1
    assert cache.misses == 1 and cache.shared == 19
    assert cache.get(path)[0] == b"thumb of a.png" and stats["calls"] == ["a.png"] and cache.hits == 1
    cache.close()


def test_decodes_are_bounded_and_a_failure_is_not_cached(tmp_path, monkeypatch):
    paths = []
    for n in range(6):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (10, 10)).save(paths[-1])
    gate = threading.Event()
    stats = slow_counting_thumbnails(monkeypatch, gate)
    cache = ThumbnailCache(64, workers=2)
    futures = [cache.submit(p, cache.etag(p)) for p in paths]
    wait_until(lambda: stats["running"] == 2, "two decodes running")
    time.sleep(0.2)  # (no timing assert: only gives a third decode the chance to start, if it could)
    assert stats["running"] == 2 and len(stats["calls"]) == 2
    gate.set()
    assert [f.result(20) for f in futures] == [f"thumb of {p.name}".encode() for p in paths]
    assert stats["peak"] == 2 and sorted(stats["calls"]) == sorted(p.name for p in paths)

    def broken(path: Path, size: int) -> bytes:
        raise images_mod.ImageDecodeError("corrupt")

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"x")
    monkeypatch.setattr(files, "make_thumbnail", broken)
    for _ in range(2):  # the failure reaches the caller, and the next request tries again
        with pytest.raises(images_mod.ImageDecodeError):
            cache.get(bad)
    assert cache.misses == 8
    cache.close()


def test_a_large_decode_hands_memory_back(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(files, "release_free_memory", lambda: calls.append(1))
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    files.make_thumbnail(tmp_path / "small.png", 64)
    assert calls == []
    files.make_thumbnail(tmp_path / "big.png", 64)
    assert calls == [1]
    files.release_free_memory()  # the real one: harmless wherever it runs


def test_a_request_that_goes_away_does_not_cancel_a_shared_decode(tmp_path, monkeypatch):
    import asyncio

    paths = []
    for n in range(2):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (10, 10)).save(paths[-1])
    gate = threading.Event()
    stats = slow_counting_thumbnails(monkeypatch, gate)
    cache = ThumbnailCache(64, workers=1)

    async def scenario() -> bytes:
        busy = asyncio.ensure_future(cache.fetch(paths[0], cache.etag(paths[0])))  # holds the only worker
        tag = cache.etag(paths[1])
        gone, stays = (asyncio.ensure_future(cache.fetch(paths[1], tag)) for _ in range(2))  # queued, shared
        await asyncio.sleep(0.05)
        gone.cancel()  # its client disconnected
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        return await stays

    assert asyncio.run(scenario()) == b"thumb of 1.png"
    assert cache.get(paths[1])[0] == b"thumb of 1.png" and stats["calls"] == ["0.png", "1.png"]
    cache.close()
