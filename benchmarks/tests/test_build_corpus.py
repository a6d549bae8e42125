"""benchmarks/build_corpus.py on small synthetic packages: splits by base item across domains, the emoji
folders unchanged by extra domains, Fashion-MNIST / openclipart / Noto rows, and fetching from a cache."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import build_corpus as bc
import numpy as np
import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[2] / "mmsearch" / "sample" / "catalog"


def emoji_entry(i: int, label: str, group: int, skins: int = 0, version: float = 1.0) -> dict:
    hexcode = f"1f{i:03x}"
    e = {"label": label, "hexcode": hexcode.upper(), "emoji": chr(0x1F000 + i), "group": group,
         "tags": ["thing", f"tag{i}"], "version": version}
    if skins:
        e["skins"] = [{"label": f"{label}: {bc.TONES[t]}", "hexcode": f"{hexcode}-1f3f{t + 10:x}".upper(),
                       "emoji": chr(0x1F000 + i) + chr(0x1F3FA + t), "tone": t, "version": version}
                      for t in range(1, skins + 1)]
    return e


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """Fake unpacked packages: Fluent assets + emojibase data, Fashion-MNIST idx files, an openclipart tree."""
    root = tmp_path_factory.mktemp("packages")
    renders = sorted(SAMPLE.rglob("*.webp"))
    # 24 emoji: objects (recoloured), people with skin tones and woman / man / person variants
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for n in range(200):  # four objects in each split, whatever the hash does
        label = f"gadget {n}"
        if len(by_split[bc.split_of(label)]) < 4:
            by_split[bc.split_of(label)].append(label)
    data = [emoji_entry(i, label, 7) for i, label in enumerate(sorted(sum(by_split.values(), [])))]
    data += [emoji_entry(12 + i, f"{g} juggling {i}", 1, skins=3) for i in range(3) for g in ("person", "woman", "man")]
    data += [emoji_entry(30 + i, f"new thing {i}", 8, version=16.0) for i in range(3)]  # newer than the Noto font
    data.append({"label": "light skin tone", "hexcode": "1F3FB", "group": 2})  # a swatch: never an item
    assets = root / "fluent" / "assets"
    assets.mkdir(parents=True)
    k = 0
    for e in data:
        for h in [e["hexcode"]] + [s["hexcode"] for s in e.get("skins", [])]:
            shutil.copy(renders[k % len(renders)], assets / f"{h.lower()}.webp")
            k += 1
    (root / "emojibase" / "en").mkdir(parents=True)
    (root / "emojibase" / "en" / "data.json").write_text(json.dumps(data))
    # Fashion-MNIST: idx files (16-byte image header, 8-byte label header), 6 images per class
    fm = root / "fashion" / "usr/share/datasets/fashion-mnist"
    fm.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (fm / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(16) + images.tobytes()))
        (fm / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(8) + labels.tobytes()))
    # openclipart: 3 folders, names shared by several clips ("star_1", "star_2" -> "star")
    oc = root / "openclipart" / "usr/share/openclipart/png"
    for folder, names in {"animals/birds": ["cormorant", "eagle", "eagle_2", "owl_big"],
                          "shapes": ["star_1", "star_2", "star_3", "circle", "square", "triangle"],
                          "signs_and_symbols/flags": ["norway", "italy", "peace", "arrowLeft", "arrowRight"]}.items():
        (oc / folder).mkdir(parents=True)
        for j, name in enumerate(names):
            Image.new("RGBA", (40 + j, 30), (10 * j, 100, 200, 255)).save(oc / folder / f"{name}.png")
    Image.new("L", (2500, 2000)).save(oc / "animals/birds" / "giant_whale.png")  # over the pixel limit below
    return {"fluent": root / "fluent", "emojibase": root / "emojibase", "fashion": root / "fashion",
            "openclipart": root / "openclipart"}


class FakeNoto:
    """Stands in for the colour font (not in the repository): a flat render per emoji, none for one."""

    def __init__(self, path):
        pass

    def __call__(self, emoji: str):
        if emoji.endswith(chr(0x1F3FA + 3)):  # pretend the font draws this tone as two glyphs
            return None
        return Image.new("RGBA", (136, 128), (ord(emoji[0]) % 256, 80, 40, 255))


def build(out: Path, packages: dict[str, Path], *extra: str) -> dict:
    return bc.main(["--fluent", str(packages["fluent"]), "--emojibase", str(packages["emojibase"]),
                    "--out", str(out), "--max-photos", "3", *extra])


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "catalog.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpora(packages, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(bc, "NotoRenderer", FakeNoto)
    # the benchmark's sample, scaled to this tiny tree: 3 clips per seed
    monkeypatch_module.setattr(bc, "GENERALIZATION_SAMPLES", ((3, 0), (3, 1)))
    monkeypatch_module.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # giant_whale.png: 5M pixels
    base = tmp_path_factory.mktemp("corpora")
    build(base / "emoji", packages)
    build(base / "all", packages, "--domains", "fluent,noto", "--noto", str(base), "--fashion", str(packages["fashion"]),
          "--openclipart", str(packages["openclipart"]), "--fashion-per-class", "4",
          "--fashion-test-per-class", "2", "--openclipart-per-base", "2")
    return base / "emoji", base / "all"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_extra_domains_leave_the_emoji_folders_unchanged(corpora):
    emoji, everything = corpora
    for split in ("val", "test"):
        for name in ("catalog.jsonl", "triplets.jsonl", "queries.jsonl"):
            assert (emoji / split / name).read_bytes() == (everything / split / name).read_bytes(), (split, name)
    fluent_train = [r for r in rows(everything / "train") if "domain" not in r]
    assert fluent_train == rows(emoji / "train")
    assert {r.get("domain") for r in rows(everything / "train")} == {None, "noto", "fashion-mnist", "openclipart"}


def test_no_base_item_is_both_trained_on_and_held_out(corpora):
    _, everything = corpora
    train_bases = {r["base"] for r in rows(everything / "train")}
    held = [f for f in everything.iterdir() if f.is_dir() and f.name != "train"]
    assert {f.name for f in held} >= {"val", "test", "val-noto", "test-noto", "test-fashion", "test-openclipart"}
    for folder in held:
        assert not train_bases & {r["base"] for r in rows(folder)}, folder.name
    # an emoji and its Noto twin (and their variants) share the base, hence the split
    for split in ("val", "test"):
        fluent = {r["base"] for r in rows(everything / split)}
        noto = {r["base"] for r in rows(everything / f"{split}-noto")}
        assert noto and noto <= fluent


def test_triplets_point_at_items_of_their_own_folder(corpora):
    _, everything = corpora
    kinds = set()
    for folder in everything.iterdir():
        if not folder.is_dir():
            continue
        ids = {r["image"] for r in rows(folder)}
        for line in (folder / "triplets.jsonl").read_text().splitlines():
            t = json.loads(line)
            assert t["reference"] in ids and t["target"] in ids, (folder.name, t)
            kinds.add(t["kind"])
            if t["kind"] == "recolour":
                assert t["text"].removeprefix("in ") in bc.COLOURS
    assert kinds == {"skin_tone", "gender", "recolour"}


def test_noto_rows_skip_emoji_the_font_lacks(corpora):
    _, everything = corpora
    noto = [r for f in everything.iterdir() if f.is_dir() for r in rows(f) if r.get("domain") == "noto"]
    titles = {r["title"] for r in noto}
    assert titles and not any(t.startswith("new thing") for t in titles)  # emojibase version 16 > the font's 15
    assert not any("medium skin tone" in t for t in titles)  # drawn as two glyphs: skipped
    assert all(Path(r["image"]).name.startswith("noto-") for r in noto)
    splits = json.loads((everything / "splits.json").read_text())
    assert splits["missing"]["noto"] > 0 and splits["missing"]["fluent"] == 0


def test_fashion_rows_follow_the_official_split(corpora):
    _, everything = corpora
    train = [r for r in rows(everything / "train") if r.get("domain") == "fashion-mnist"]
    val = rows(everything / "val-fashion") if (everything / "val-fashion").is_dir() else []
    test = rows(everything / "test-fashion")
    assert len(train) + len(val) == 40 and len(test) == 20  # 4 / 2 per class
    assert all(":train:" in r["base"] for r in train + val) and all(":t10k:" in r["base"] for r in test)
    assert {r["title"] for r in test} == set(bc.FASHION_NAMES)
    with Image.open(everything / "test-fashion" / test[0]["image"]) as im:
        assert im.size == (224, 224) and im.mode == "RGB"
    queries = [json.loads(line) for line in (everything / "test-fashion" / "queries.jsonl").read_text().splitlines()]
    assert len(queries) == 10
    for q in queries:  # every image of the class is a correct answer
        assert sorted(q["target"]) == sorted(r["image"] for r in test if r["title"] == q["text"])


def test_openclipart_names_clean_and_benchmark_sample_held_out(corpora, packages):
    import bench_generalization as bg

    _, everything = corpora
    clips = [r for f in everything.iterdir() if f.is_dir() for r in rows(f) if r.get("domain") == "openclipart"]
    by_title = {r["title"]: r for r in clips}
    assert {"star", "eagle", "arrow left", "owl big"} <= set(by_title)
    assert sum(1 for r in clips if r["title"] == "star") == 2  # three "star" clips, two kept
    assert by_title["cormorant"]["tags"] == ["animals", "birds"] and by_title["cormorant"]["category"] == "animals"
    assert by_title["norway"]["category"] == "signs and symbols"
    root = packages["openclipart"] / "usr/share/openclipart/png"
    sampled = {" ".join(bg.openclipart_words(p, root)[0]) for seed in (0, 1) for p in bg.sample_openclipart(root, 3, seed)}
    test_titles = {r["title"] for r in rows(everything / "test-openclipart")}
    train_titles = {r["title"] for r in rows(everything / "train") if r.get("domain") == "openclipart"}
    assert sampled and sampled - {"giant whale"} <= test_titles and not sampled & train_titles
    assert "giant whale" not in {r["title"] for r in clips}  # over Pillow's pixel limit: skipped and counted
    assert json.loads((everything / "splits.json").read_text())["missing"]["openclipart"] == 1


def test_fetch_unpacks_a_cached_archive_without_downloading(tmp_path, packages, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "emojibase-data-17.0.0.tgz", "w:gz") as tar:  # what `npm pack` leaves
        tar.add(packages["emojibase"], arcname="package")
    real_run, calls = subprocess.run, []

    def run(cmd, **kw):
        calls.append(cmd[0])
        return real_run(cmd, **kw)

    monkeypatch.setattr(bc.subprocess, "run", run)
    root = bc.fetch("emojibase", cache)
    assert (root / "en" / "data.json").is_file() and calls == ["tar"]
    assert bc.fetch("emojibase", cache) == root and calls == ["tar"]  # unpacked once

    def offline(cmd, **kw):  # no archive and no network: one clear error
        return subprocess.CompletedProcess(cmd, 1, "", "npm ERR! network request failed\n")

    monkeypatch.setattr(bc.subprocess, "run", offline)
    with pytest.raises(SystemExit, match="could not fetch @lobehub/fluent-emoji-3d@1.1.0.*network request failed"):
        bc.fetch("fluent", cache)


def test_unknown_domain_or_missing_source_is_a_clear_error(packages, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc.parse_args(["--fluent", str(packages["fluent"]), "--emojibase", str(packages["emojibase"]),
                       "--domains", "fluent,photos"])
    assert "unknown domain(s) ['photos']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bc.parse_args(["--fluent", str(packages["fluent"]), "--emojibase", str(packages["emojibase"]),
                       "--domains", "fashion"])
    assert "--fashion (an unpacked package) or --fetch DIR is needed" in capsys.readouterr().err
