"""Build the sample catalog shipped in mmsearch/sample/ from registry packages.

Images: Microsoft Fluent Emoji 3D renders (npm ``@lobehub/fluent-emoji-3d`` 1.1.0, MIT).
Titles and tags: npm ``emojibase-data`` 17.0.0 (MIT), ``en/data.json``.

    npm pack @lobehub/fluent-emoji-3d@1.1.0 emojibase-data@17.0.0
    mkdir fluent emojibase && tar xzf lobehub-fluent-emoji-3d-1.1.0.tgz -C fluent \
        && tar xzf emojibase-data-17.0.0.tgz -C emojibase
    python benchmarks/make_sample_catalog.py --fluent fluent/package --emojibase emojibase/package

Two emoji are held out of the catalog and saved as JPEG "photos" for the README's query examples.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

CATALOG = {
    "clothing": ["running shoe", "hiking boot", "high-heeled shoe", "woman’s sandal", "woman’s boot",
                 "flat shoe", "ballet shoes", "thong sandal", "t-shirt", "jeans", "dress", "coat", "scarf",
                 "gloves", "socks", "necktie", "kimono", "bikini", "shorts", "one-piece swimsuit",
                 "woman’s clothes", "lab coat", "safety vest", "handbag", "purse", "clutch bag", "backpack",
                 "glasses", "sunglasses", "billed cap", "top hat", "woman’s hat", "ring", "lipstick"],
    "food": ["red apple", "green apple", "banana", "grapes", "strawberry", "lemon", "watermelon",
             "pineapple", "cherries"],
    "vehicle": ["automobile", "taxi", "bus", "bicycle", "motorcycle", "sport utility vehicle", "racing car",
                "airplane"],
    "electronics": ["mobile phone", "laptop", "watch", "camera", "headphone"],
    "other": ["guitar", "teddy bear", "umbrella", "soccer ball"],
}
QUERIES = {"shoe.jpg": "man’s shoe", "peach.jpg": "peach"}


def find_asset(assets: Path, hexcode: str) -> Path:
    hexcode = hexcode.lower()
    for name in (hexcode, hexcode.replace("-fe0f", ""), f"{hexcode}-fe0f"):
        if (assets / f"{name}.webp").exists():
            return assets / f"{name}.webp"
    raise FileNotFoundError(hexcode)


def as_photo(src: Path, dst: Path) -> None:
    """Flatten an RGBA render onto an off-white 480x360 canvas and save it as a JPEG."""
    im = Image.open(src).convert("RGBA")
    canvas = Image.new("RGB", (480, 360), (236, 232, 226))
    im = im.resize((300, 300), Image.Resampling.BICUBIC)
    canvas.paste(im, (100, 40), im)
    canvas.save(dst, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluent", type=Path, required=True)
    ap.add_argument("--emojibase", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("mmsearch/sample/catalog"))
    ap.add_argument("--queries", type=Path, default=Path("mmsearch/sample/queries"))
    args = ap.parse_args()
    assets = args.fluent / "assets"
    data = json.loads((args.emojibase / "en" / "data.json").read_text())
    by_label = {e["label"]: e for e in data}

    rows = []
    for category, labels in CATALOG.items():
        for label in labels:
            entry = by_label[label]
            title = label.replace("’", "'")
            rel = f"{category}/{title.replace(' ', '_').replace(chr(39), '')}.webp"
            (args.out / category).mkdir(parents=True, exist_ok=True)
            shutil.copy(find_asset(assets, entry["hexcode"]), args.out / rel)
            rows.append({"image": rel, "title": title, "category": category, "tags": entry.get("tags", [])})
    with open(args.out / "catalog.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    args.queries.mkdir(parents=True, exist_ok=True)
    for name, label in QUERIES.items():
        as_photo(find_asset(assets, by_label[label]["hexcode"]), args.queries / name)
    print(f"{len(rows)} catalog items in {args.out}, {len(QUERIES)} query photos in {args.queries}")


if __name__ == "__main__":
    main()
