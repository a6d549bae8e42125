"""The photo domains of benchmarks/build_corpus.py (benchmarks/corpus_photos.py) on a tiny fake ../shared/photos:
split by class (a test class has no training image), COCO evaluation-only with its captions as queries,
WordNet paraphrase queries, and a photo-only build that needs no emoji package."""

from __future__ import annotations

import json
from pathlib import Path

import build_corpus as bc
import corpus_photos as cp
import pytest
from PIL import Image


def fake_wordnet(root: Path) -> Path:
    """index.noun + data.noun in the WordNet 3.0 layout (byte offsets as synset ids)."""
    synsets = [("insectivore", [], None), ("hedgehog Erinaceus_europaeus", ["insectivore"], None),
               ("shoe", ["footwear"], None), ("footwear footgear", [], None)]
    lines, offsets, off = [], {}, 0
    # two passes: the lines have fixed-width offsets, so lengths do not depend on the values
    for _ in range(2):
        lines, off = [], 0
        for words, hyper, _ in synsets:
            ws = words.split()
            ptrs = "".join(f" @ {offsets.get(h, 0):08d} n 0000" for h in hyper)
            line = (f"{off:08d} 05 n {len(ws):02x} " + " ".join(f"{w} 0" for w in ws)
                    + f" {len(hyper):03d}{ptrs} | a gloss\n")
            offsets[ws[0]] = off
            lines.append(line)
            off += len(line.encode())
    d = root / "usr/share/wordnet"
    d.mkdir(parents=True)
    (d / "data.noun").write_text("".join(lines))
    index = [f"{w.split()[0].lower()} n 1 1 @ 1 0 {offsets[w.split()[0]]:08d}" for w, _, _ in synsets]
    index.append(f"erinaceus_europaeus n 1 0 1 0 {offsets['hedgehog']:08d}")
    (d / "index.noun").write_text("  1 a header line\n" + "\n".join(sorted(index)) + "\n")
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    sets = {"clothing-cc0": [("Shoes", "shoes"), ("Hat", "hat"), ("Dress", "dress"), ("Pants", "pants"),
                             ("Skirt", "skirt"), ("Shorts", "shorts")],
            "caltech101-ccby": [(f"class_{k}", f"thing {k}") for k in range(12)] + [("hedgehog", "hedgehog")]}
    for name, classes in sets.items():
        (root / name / "images").mkdir(parents=True)
        rows = []
        for k, (label, text) in enumerate(classes):
            for j in range(3):
                f = f"{label}_{j}.jpg"
                Image.new("RGB", (32, 24), (20 * k, 10 * j, 99)).save(root / name / "images" / f)
                rows.append({"file": f, "text": ("kids' " if j == 2 and name == "clothing-cc0" else "") + text,
                             "label": label, "kids": j == 2})
        (root / name / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "coco-mini-ccby" / "images").mkdir(parents=True)
    rows = []
    for k in range(3):
        Image.new("RGB", (30, 30), (0, 80 * k, 0)).save(root / "coco-mini-ccby" / "images" / f"{k:012d}.jpg")
        rows.append({"file": f"{k:012d}.jpg", "text": f"a dog number {k}", "label": None, "coco_id": k,
                     "captions": [f"a dog number {k}", f"A brown dog {k} on grass.", f"dog {k}"]})
    (root / "coco-mini-ccby" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_wordnet_synonyms_and_hypernyms(tmp_path):
    wn = cp.WordNet(fake_wordnet(tmp_path))
    assert wn.lookup("hedgehog") == (["Erinaceus europaeus"], ["insectivore"])
    assert wn.lookup("shoes") == (["shoe"], ["footwear", "footgear"])  # plural -> singular first
    assert wn.lookup("no such thing") == ([], [])


def test_photo_only_build(shared, tmp_path):
    out = tmp_path / "corpus"
    counts = bc.main(["--domains", "photo-clothing,photo-caltech,photo-coco", "--photos", str(shared),
                      "--wordnet", str(fake_wordnet(tmp_path / "wn")), "--out", str(out)])
    assert set(counts) <= {"train", "test-photo-clothing", "test-photo-caltech", "test-photo-coco"}
    assert not (out / "val").exists() and not (out / "test").exists()  # no emoji built
    rows = {f: [json.loads(x) for x in (out / f / "catalog.jsonl").read_text().splitlines()] for f in counts}
    train_classes = {r["base"] for r in rows["train"]}
    for f in ("test-photo-clothing", "test-photo-caltech"):
        test_classes = {r["base"] for r in rows.get(f, [])}
        assert not (test_classes & train_classes)  # split by class
        for r in rows.get(f, []):
            assert cp.photo_split(r["base"]) == "test"
    # kids' rows share their class (title and split) with the grown-up rows
    clothing = [r for f in rows for r in rows[f] if r.get("domain") == "photo-clothing"]
    assert {r["title"] for r in clothing} == {"shoes", "hat", "dress", "pants", "skirt", "shorts"}
    assert any(r["tags"] == ["kids"] for r in clothing)
    # COCO: evaluation only, queried by its human captions
    assert not [r for r in rows["train"] if r["domain"] == "photo-coco"]
    coco = rows["test-photo-coco"]
    assert len(coco) == 3 and coco[0]["queries"]["caption"][1].startswith("A brown dog")
    queries = [json.loads(x) for x in (out / "test-photo-coco" / "queries.jsonl").read_text().splitlines()]
    assert sum(q["kind"] == "caption" for q in queries) == 9 and all(len(q["target"]) == 1 for q in queries)
    # paraphrases from WordNet on the held-out classes; synonyms (never hypernyms) among the training texts
    hog = [r for f in rows for r in rows[f] if r["title"] == "hedgehog"]
    assert hog and hog[0]["queries"]["paraphrase"] == ["Erinaceus europaeus", "insectivore"]
    assert "Erinaceus europaeus" in hog[0]["captions"] and "insectivore" not in hog[0]["captions"]
    assert all((out / f / r["image"]).is_file() for f in rows for r in rows[f])


def test_missing_photos_folder_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc.main(["--domains", "photo-caltech", "--photos", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "caltech101-ccby/items.jsonl" in capsys.readouterr().err
