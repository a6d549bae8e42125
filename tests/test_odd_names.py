"""A file name with a newline: served by /items and its thumbnail, kept whole by --print0; a folder deeper
than PATH_MAX is reported as skipped instead of silently missing."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from mmsearch.catalog.scan import scan_catalog
from mmsearch.cli import app

NAME = "two\nlines.webp"


@pytest.fixture(scope="module")
def odd_index(tmp_path_factory, sample_catalog):
    from mmsearch import build_index

    cat = tmp_path_factory.mktemp("odd") / "catalog"
    cat.mkdir()
    photos = sorted(sample_catalog.rglob("*.webp"))
    (cat / NAME).write_bytes(photos[0].read_bytes())
    (cat / "plain.webp").write_bytes(photos[1].read_bytes())
    out = cat.parent / "index"
    build_index(cat, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    return out, cat


def test_items_and_thumbnail_of_a_name_with_a_newline(odd_index):
    from fastapi.testclient import TestClient

    from mmsearch import SearchEngine
    from mmsearch.server import ServeCfg, create_app

    out, _ = odd_index
    with TestClient(create_app(SearchEngine.open(out, device="cpu"), ServeCfg(reload_interval_s=0))) as client:
        item = client.get(f"/items/{quote(NAME)}")
        assert item.status_code == 200, item.text
        assert item.json()["id"] == NAME
        thumb = client.get(item.json()["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        assert client.post(f"/search/by-item/{quote(NAME)}", data={"k": "2"}).status_code == 200


def test_print0_keeps_a_name_with_a_newline_whole(odd_index):
    out, cat = odd_index
    runner = CliRunner()
    res = runner.invoke(app, ["list", "--index", str(out), "--print0"])
    assert res.exit_code == 0, res.output
    assert sorted(res.stdout.split("\0")[:-1]) == sorted([str(cat / NAME), str(cat / "plain.webp")])
    res = runner.invoke(app, ["query", "shoe", "--index", str(out), "--print0", "--no-server", "-k", "2"])
    assert res.exit_code == 0, res.output
    assert str(cat / NAME) in res.stdout.split("\0")
    res = runner.invoke(app, ["similar", "plain.webp", "--index", str(out), "--print0", "-k", "1"])
    assert res.exit_code == 0 and res.stdout == f"{cat / NAME}\0"
    res = runner.invoke(app, ["query", "shoe", "--index", str(out), "--paths", "--no-server", "-k", "2"])
    assert res.exit_code == 0 and "use --print0" in res.output  # the line-per-path form warns on stderr
    res = runner.invoke(app, ["query", "shoe", "--index", str(out), "--print0", "--json"])
    assert res.exit_code == 2 and "--print0" in res.output


def test_folder_deeper_than_path_max_is_reported(tmp_path, sample_catalog):
    photo = sorted(sample_catalog.rglob("*.webp"))[0].read_bytes()
    (tmp_path / "top.webp").write_bytes(photo)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(22):  # 22 x 201 characters: past Linux's 4096
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        f = os.open("deep.webp", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, photo)
        os.close(f)
    finally:
        os.close(fd)
    skipped: list[dict] = []
    items = scan_catalog(tmp_path, skipped=skipped)
    assert [it.id for it in items] == ["top.webp"]
    assert len(skipped) == 1 and "PATH_MAX" in skipped[0]["reason"] and skipped[0]["id"].startswith("ddd")
