"""Build the training / validation / test corpus (catalog format) from registry packages.

Sources (both MIT): Microsoft Fluent Emoji 3D renders (npm ``@lobehub/fluent-emoji-3d`` 1.1.0) for the
images, npm ``emojibase-data`` 17.0.0 ``en/data.json`` for labels, tags, groups, skin tones and genders.

    npm pack @lobehub/fluent-emoji-3d@1.1.0 emojibase-data@17.0.0
    mkdir -p fluent emojibase && tar xzf lobehub-fluent-emoji-3d-1.1.0.tgz -C fluent \\
        && tar xzf emojibase-data-17.0.0.tgz -C emojibase
    python benchmarks/build_corpus.py --fluent fluent/package --emojibase emojibase/package --out corpus

Output, one catalog folder per split (``catalog.jsonl`` rows: image, title, tags, category, base)::

    corpus/{train,val,test}/images/*.webp   catalog.jsonl   triplets.jsonl
    corpus/{val,test}/queries.jsonl         evaluation queries for ``mmsearch eval``
    corpus/test/photos/*.jpg                 "photos" of test items for image -> image queries
    corpus/splits.json                       which base item went where, and the counts

Splits are by **base item**: an emoji, its skin-tone variants, its woman / man / person variants and
its recoloured edits share one base key (the label without tone and gender words), and the split is
a hash of that key (80 / 10 / 10), so no variant of a test item is ever seen in training.

Composed triplets (``{"reference": id, "text": modifier, "target": id}``), three generators:
- ``skin_tone``: base emoji + "dark skin tone" -> that variant, and one kept tone -> the other. Two of
  the five tones are kept per base (seeded choice) to bound the corpus size.
- ``gender``: "person running" + "woman" -> "woman running" (and every other ordered pair of the
  woman / man / person variants that exist).
- ``recolour``: an object (food, travel, activities, objects groups) + "in red" -> the same render with
  the hue of its saturated object pixels set to red (transparent background untouched, so only the
  object changes). One colour per object among red, yellow, green, blue, purple, pink, skipping
  colours within 30 degrees of the object's own median hue and objects with little saturated colour.

Size: about 3,000 images (256 x 256); backbone feature extraction for the default model takes about
5-10 minutes on 2 CPU cores, once (it is cached by file hash). Everything scales linearly in images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_catalog import as_photo, find_asset  # noqa: E402

GROUPS = {0: "smileys", 1: "people", 2: "component", 3: "animals", 4: "food", 5: "travel", 6: "activities",
          7: "objects", 8: "symbols", 9: "flags"}
RECOLOUR_GROUPS = {4, 5, 6, 7}
COLOURS = {"red": 0, "yellow": 42, "green": 85, "blue": 165, "purple": 195, "pink": 230}  # PIL hue 0..255
COLOUR_WORDS = set(COLOURS) | {"orange", "brown", "black", "white", "gold", "golden", "silver", "grey", "gray"}
TONES = {1: "light skin tone", 2: "medium-light skin tone", 3: "medium skin tone", 4: "medium-dark skin tone",
         5: "dark skin tone"}
_GENDER = re.compile(r"^(woman|man|person)\s+")


def split_of(base: str) -> str:
    h = int(hashlib.sha256(base.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 80 else ("val" if h < 90 else "test")


def base_key(label: str) -> tuple[str, str | None]:
    """("running", "woman") for "woman running"; (label, None) when there is no gender word."""
    label = label.replace("’", "'").split(":")[0].strip()
    m = _GENDER.match(label)
    if m and len(label) > m.end():
        return label[m.end():], m.group(1)
    return label, None


def recolour(src: Path, hue: int, min_share: float = 0.15) -> Image.Image | None:
    """Set the hue of the saturated object pixels to ``hue``; None if the object is mostly grey or
    already that colour. The transparent background is untouched."""
    im = Image.open(src).convert("RGBA")
    alpha = np.asarray(im.getchannel("A"))
    hsv = np.asarray(im.convert("RGB").convert("HSV")).copy()
    obj = alpha > 0
    sat = obj & (hsv[..., 1] > 60) & (hsv[..., 2] > 40)
    if obj.sum() == 0 or sat.sum() < min_share * obj.sum():
        return None
    own = int(np.median(hsv[..., 0][sat]))
    if min(abs(own - hue), 256 - abs(own - hue)) < 22:  # ~30 degrees
        return None
    hsv[..., 0][sat] = hue
    rgb = Image.fromarray(hsv, "HSV").convert("RGB")
    out = rgb.convert("RGBA")
    out.putalpha(Image.fromarray(alpha))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fluent", type=Path, required=True, help="extracted @lobehub/fluent-emoji-3d package")
    ap.add_argument("--emojibase", type=Path, required=True, help="extracted emojibase-data package")
    ap.add_argument("--out", type=Path, default=Path("corpus"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tones", type=int, default=2, help="skin tones kept per base emoji (of 5)")
    ap.add_argument("--max-photos", type=int, default=150, help="image -> image test queries")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    assets = args.fluent / "assets"
    data = json.loads((args.emojibase / "en" / "data.json").read_text(encoding="utf-8"))

    rows: dict[str, list[dict]] = defaultdict(list)
    triplets: dict[str, list[dict]] = defaultdict(list)
    by_root: dict[str, dict[str, str]] = defaultdict(dict)  # root -> gender word -> id (base tone)
    missing = 0

    def add(split: str, src: Path | Image.Image, name: str, title: str, tags, group, base: str, kind: str) -> str:
        rel = f"images/{name}.webp"
        dst = args.out / split / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Image.Image):
            src.save(dst, lossless=True)
        else:
            dst.write_bytes(src.read_bytes())
        rows[split].append({"image": rel, "title": title, "tags": list(tags or [])[:8],
                            "category": GROUPS.get(group, "other"), "base": base, "kind": kind})
        return rel

    for e in data:
        if e.get("group") in (2, None):  # skin-tone swatches, regional letters
            continue
        root, gender = base_key(e["label"])
        split = split_of(root)
        try:
            src = find_asset(assets, e["hexcode"])
        except FileNotFoundError:
            missing += 1
            continue
        title = e["label"].replace("’", "'")
        rid = add(split, src, e["hexcode"].lower(), title, e.get("tags"), e.get("group"), root, "emoji")
        if gender:
            by_root[root][gender] = rid
        skins = [s for s in e.get("skins", []) if isinstance(s.get("tone"), int) and s["tone"] in TONES]
        kept = []
        for s in sorted(rng.sample(skins, min(args.tones, len(skins))), key=lambda s: s["tone"]):
            try:
                ssrc = find_asset(assets, s["hexcode"])
            except FileNotFoundError:
                missing += 1
                continue
            sid = add(split, ssrc, s["hexcode"].lower(), s["label"].replace("’", "'"), e.get("tags"),
                      e.get("group"), root, "skin_tone")
            triplets[split].append({"reference": rid, "text": TONES[s["tone"]], "target": sid, "kind": "skin_tone"})
            kept.append((s["tone"], sid))
        for (ta, a), (tb, b) in zip(kept, kept[1:]):
            triplets[split].append({"reference": a, "text": TONES[tb], "target": b, "kind": "skin_tone"})
            triplets[split].append({"reference": b, "text": TONES[ta], "target": a, "kind": "skin_tone"})
        if e.get("group") in RECOLOUR_GROUPS:
            colour = rng.choice(sorted(COLOURS))
            edited = recolour(src, COLOURS[colour])
            if edited is not None:
                tags = [t for t in e.get("tags", []) if t not in COLOUR_WORDS]  # the old colour is gone
                cid = add(split, edited, f"{e['hexcode'].lower()}-{colour}", f"{title} in {colour}", tags,
                          e.get("group"), root, "recolour")
                triplets[split].append({"reference": rid, "text": f"in {colour}", "target": cid, "kind": "recolour"})

    # gender variants: every ordered pair among woman / man / person renders of one root
    for root, variants in by_root.items():
        split = split_of(root)
        for ga, a in variants.items():
            for gb, b in variants.items():
                if ga != gb:
                    triplets[split].append({"reference": a, "text": gb, "target": b, "kind": "gender"})

    counts = {}
    for split in ("train", "val", "test"):
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "catalog.jsonl", "w", encoding="utf-8") as fh:
            for r in rows[split]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(folder / "triplets.jsonl", "w", encoding="utf-8") as fh:
            for t in triplets[split]:
                fh.write(json.dumps(t, ensure_ascii=False) + "\n")
        counts[split] = {"images": len(rows[split]), "bases": len({r["base"] for r in rows[split]}),
                         "triplets": len(triplets[split])}
        if split != "train":
            write_queries(folder, rows[split], triplets[split], args.max_photos if split == "test" else 0, rng)
    (args.out / "splits.json").write_text(json.dumps({
        "seed": args.seed, "rule": "sha256(base)[:8] % 100: <80 train, <90 val, else test", "counts": counts,
        "missing_assets": missing,
        "bases": {s: sorted({r["base"] for r in rows[s]}) for s in ("train", "val", "test")}}, indent=1))
    print(json.dumps(counts))


def write_queries(folder: Path, rows: list[dict], triplets: list[dict], n_photos: int, rng: random.Random) -> None:
    """queries.jsonl: text -> image (each item's title), photo -> image, and composed queries."""
    queries = [{"image": None, "text": r["title"], "target": [r["image"]], "kind": "text"} for r in rows]
    emoji = [r for r in rows if r["kind"] == "emoji"]
    for r in rng.sample(emoji, min(n_photos, len(emoji))):
        photo = folder / "photos" / (Path(r["image"]).stem + ".jpg")
        photo.parent.mkdir(parents=True, exist_ok=True)
        as_photo(folder / r["image"], photo)
        queries.append({"image": f"photos/{photo.name}", "text": None, "target": [r["image"]], "kind": "photo"})
    queries += [{"image": t["reference"], "text": t["text"], "target": [t["target"]], "kind": t["kind"]}
                for t in triplets]
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
