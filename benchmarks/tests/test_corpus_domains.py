"""The wider corpus (benchmarks/corpus_domains.py through build_corpus.py) on tiny fake packages: emoji
styles joined on codepoints / names with triplets in every style, icon sets, freedesktop themes and
openclipart SVG metadata; captions per row; one split per base item across domains. No network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("resvg_py")
import build_corpus as bc
import corpus_domains as cd

SAMPLE = Path(__file__).resolve().parents[2] / "mmsearch" / "sample" / "catalog"
CIRCLE = '<circle cx="16" cy="16" r="12" fill="#e33"/>'
BOX = '<rect x="4" y="8" width="24" height="16" fill="#36c"/>'
OPENCLIPART = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 width="200" height="100" viewBox="0 0 200 100">
 <metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{desc}</dc:description>
 <dc:subject><rdf:Bag><rdf:li>{kw}</rdf:li><rdf:li>clip art</rdf:li></rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata>
 <rect x="10" y="10" width="180" height="80" fill="#0a0"/></svg>"""


def iconify(icons: dict[str, str], size: int = 32, chars: dict | None = None, categories: dict | None = None) -> dict:
    return {"icons.json": {"prefix": "x", "width": size, "height": size,
                           "icons": {n: {"body": b} for n, b in icons.items()}},
            "chars.json": chars or {}, "metadata.json": {"categories": categories or {}}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pkgs")
    data = [
        {"label": "red apple", "hexcode": "1F34E", "emoji": "\U0001F34E", "group": 4, "tags": ["fruit"]},
        {"label": "waving hand", "hexcode": "1F44B", "emoji": "\U0001F44B", "group": 1, "tags": ["hello"],
         "skins": [{"label": f"waving hand: {bc.TONES[t]}", "hexcode": f"1F44B-{0x1F3FA + t:X}", "tone": t,
                    "emoji": "\U0001F44B" + chr(0x1F3FA + t)} for t in (1, 5)]},
        {"label": "person running", "hexcode": "1F3C3", "emoji": "\U0001F3C3", "group": 1, "tags": ["run"]},
        {"label": "woman running", "hexcode": "1F3C3-200D-2640-FE0F", "emoji": "x", "group": 1, "tags": ["run"]},
    ]
    (root / "emojibase/package/en").mkdir(parents=True)
    (root / "emojibase/package/en/data.json").write_text(json.dumps(data))
    assets = root / "fluent/package/assets"
    assets.mkdir(parents=True)
    renders = sorted(SAMPLE.rglob("*.webp"))
    hexes = [h for e in data for h in [e["hexcode"]] + [s["hexcode"] for s in e.get("skins", [])]]
    for k, h in enumerate(hexes):
        shutil.copy(renders[k % len(renders)], assets / f"{h.lower()}.webp")
    # an emoji style joined on codepoints (chars.json), one on CLDR name slugs
    flat = {"red-apple": CIRCLE, "waving-hand": BOX, "waving-hand-dark-skin-tone": CIRCLE,
            "waving-hand-light-skin-tone": BOX, "person-running": BOX, "woman-running": CIRCLE}
    sets = {"fluent-flat": iconify(flat, chars={"1f34e": "red-apple", "1f44b": "waving-hand"}),
            "emojione": iconify({"red-apple": CIRCLE, "waving-hand": BOX}, 64),
            "mdi": iconify({"camera": BOX, "camera-outline": BOX, "food-apple": CIRCLE, "car-sports": BOX}, 24,
                           categories={"Food / Drink": ["food-apple"]})}
    for name, files in sets.items():
        (root / name / "package").mkdir(parents=True)
        for fname, payload in files.items():
            (root / name / "package" / fname).write_text(json.dumps(payload))
    for theme in cd.THEMES:
        (root / theme / "usr/share/icons").mkdir(parents=True)
    adw = root / "adwaita-icon-theme/usr/share/icons/Adwaita"
    for size in (16, 48):
        (adw / f"{size}x{size}/devices").mkdir(parents=True)
        Image.new("RGBA", (size, size), (200, 0, 0, 255)).save(adw / f"{size}x{size}/devices/camera-photo.png")
    (adw / "scalable/devices").mkdir(parents=True)
    (adw / "scalable/devices/camera-photo-symbolic.svg").write_text(f"<svg viewBox='0 0 32 32'>{CIRCLE}</svg>")
    oc = root / "openclipart-svg/usr/share/openclipart/svg/food"
    oc.mkdir(parents=True)
    for k, (title, kw) in enumerate([("Red Apple", "fruit"), ("Red Apple", "fruit"), ("Red Apple", "fruit"),
                                     ("Sports car", "vehicle")]):
        (oc / f"clip_{k}.svg").write_text(OPENCLIPART.format(title=title, desc="A shiny thing", kw=kw))
    out = root / "corpus"
    bc.main(["--fetch", str(root), "--domains", "fluent-flat,emojione,mdi,freedesktop,openclipart-svg",
             "--out", str(out), "--max-photos", "0"])
    return out


def rows(corpus: Path) -> list[dict]:
    out = []
    for cat in corpus.glob("*/catalog.jsonl"):
        for line in cat.read_text().splitlines():
            r = json.loads(line)
            r["folder"] = cat.parent.name
            out.append(r)
    return out


def test_emoji_styles_join_on_codepoints_and_names(corpus):
    by = {}
    for r in rows(corpus):
        by.setdefault(r.get("domain", "fluent"), []).append(r)
    flat = {r["title"] for r in by["fluent-flat"]}
    # chars.json join, slug join for skin tones and the gender variant (fe0f dropped)
    assert {"red apple", "waving hand", "waving hand: dark skin tone", "woman running"} <= flat
    assert {r["title"] for r in by["emojione"]} == {"red apple", "waving hand"}
    for r in by["fluent-flat"]:
        assert r["captions"][0] == r["title"] and f"an emoji of {r['title']}" in r["captions"]
        assert Image.open(corpus / r["folder"] / r["image"]).size == (cd.RENDER, cd.RENDER)


def test_every_style_gets_its_own_triplets(corpus):
    trips = []
    for t in corpus.glob("*/triplets.jsonl"):
        ids = {json.loads(line)["image"] for line in (t.parent / "catalog.jsonl").read_text().splitlines()}
        for line in t.read_text().splitlines():
            tr = json.loads(line)
            assert tr["reference"] in ids and tr["target"] in ids
            trips.append((tr["reference"], tr["kind"]))
    kinds_flat = {k for ref, k in trips if "fluent-flat-" in ref}
    assert {"skin_tone", "gender"} <= kinds_flat


def test_icons_words_tags_and_outline_twins(corpus):
    mdi = [r for r in rows(corpus) if r.get("domain") == "mdi"]
    assert sorted(r["title"] for r in mdi) == ["camera", "car sports", "food apple"]  # outline twin dropped
    apple = next(r for r in mdi if r["title"] == "food apple")
    assert apple["tags"] == ["food drink"] and "an icon of food apple" in apple["captions"]
    fd = [r for r in rows(corpus) if r.get("domain") == "freedesktop"]
    assert [r["title"] for r in fd] == ["camera photo"] and fd[0]["tags"] == ["devices"]  # symbolic dropped
    assert Image.open(corpus / fd[0]["folder"] / fd[0]["image"]).size == (48, 48)  # the biggest file


def test_openclipart_svg_uses_real_metadata(corpus):
    oc = [r for r in rows(corpus) if r.get("domain") == "openclipart-svg"]
    assert sorted(r["title"] for r in oc) == ["Red Apple", "Red Apple", "Sports car"]  # 2 per title
    car = next(r for r in oc if r["title"] == "Sports car")
    assert car["tags"] == ["vehicle"] and car["text"] == "A shiny thing" and "a drawing of Sports car" in car["captions"]
    assert Image.open(corpus / car["folder"] / car["image"]).size == (256, 128)  # whole drawing, aspect kept


def test_one_split_per_base_across_domains(corpus):
    split_of_base: dict[str, set[str]] = {}
    for r in rows(corpus):
        split_of_base.setdefault(r["base"], set()).add(r["folder"].split("-")[0])
    assert all(len(s) == 1 for s in split_of_base.values()), split_of_base


def test_svg_size_and_words():
    assert cd.svg_size('<svg viewBox="0 0 48 24" width="10">') == (48.0, 24.0)
    assert cd.svg_size('<svg width="30" height="20">') == (30.0, 20.0)
    assert cd.words("cameraPhoto") == "camera photo" and cd.words("weather-storm_2") == "weather storm 2"
    assert cd.icon_base("camera outline") == "camera" and cd.icon_base("camera 2") == "camera"
    assert cd.render_svg("not an svg") is None
    # physical units without a viewBox (old Inkscape files), which resvg refuses as they are
    assert cd.px_root('<svg width="210mm" height="297mm">') == \
        '<svg width="793.70" height="1122.52" viewBox="0 0 793.70 1122.52">'
    im = cd.render_svg('<svg xmlns="http://www.w3.org/2000/svg" width="20mm" height="10mm"><rect width="40" '
                       'height="20" fill="#f00"/></svg>', 100)
    assert im is not None and im.size == (100, 50)
