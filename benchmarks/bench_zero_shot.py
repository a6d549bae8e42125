"""Zero-shot quality of the bridge model: which channel should rank image queries?

Gallery: N Fluent Emoji 3D renders (npm @lobehub/fluent-emoji-3d, MIT), indexed WITHOUT titles.
Queries: the same N emoji drawn in another style (Noto Color Emoji font, Debian fonts-noto-color-emoji,
OFL-1.1) -> a cross-style image lookup with exactly one correct item; and each emoji's emojibase label as
a text query (text -> image through the ImageNet-label bridge only, since the gallery has no titles).

    npm pack @lobehub/fluent-emoji-3d@1.1.0 emojibase-data@17.0.0   # then tar xzf each into a folder
    apt-get download fonts-noto-color-emoji && dpkg-deb -x fonts-noto-color-emoji_*.deb noto
    python benchmarks/bench_zero_shot.py --fluent fluent/package --emojibase emojibase/package \
        --noto-font noto/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf --n 300

Writes benchmarks/results/zero_shot.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmsearch import SearchEngine, build_index


def render_noto(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    return canvas if canvas.getbbox() else None


def metrics(ranks: list[int]) -> dict[str, float]:
    r = np.asarray(ranks, dtype=float)
    return {"R@1": float(np.mean(r <= 1)), "R@10": float(np.mean(r <= 10)), "MRR": float(np.mean(1.0 / r))}


def rank_of(target: int, order: list[int]) -> int:
    return order.index(target) + 1 if target in order else 10 ** 9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluent", type=Path, required=True)
    ap.add_argument("--emojibase", type=Path, required=True)
    ap.add_argument("--noto-font", type=Path, required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="bridge", help="model to index with (the zero-shot bridge by default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zero_shot.json"))
    args = ap.parse_args()

    data = json.loads((args.emojibase / "en" / "data.json").read_text())
    font = ImageFont.truetype(str(args.noto_font), 109)
    pool = []
    for e in data:  # base emoji only (variants would be near-duplicate targets)
        hexcode = e["hexcode"].lower()
        asset = next((args.fluent / "assets" / f"{h}.webp" for h in (hexcode, hexcode.replace("-fe0f", ""))
                      if (args.fluent / "assets" / f"{h}.webp").exists()), None)
        if asset is not None and e.get("group") not in (None, 2):  # group 2 = skin-tone components
            pool.append((e, asset))
    random.Random(args.seed).shuffle(pool)

    work = Path(tempfile.mkdtemp(prefix="mmsearch-zs-"))
    gallery, queries, labels = work / "gallery", work / "queries", []
    gallery.mkdir()
    queries.mkdir()
    for e, asset in pool:
        if len(labels) == args.n:
            break
        im = render_noto(font, e["emoji"])
        if im is None:
            continue
        name = f"{len(labels):04d}"
        shutil.copy(asset, gallery / f"{name}.webp")
        im.save(queries / f"{name}.png")
        labels.append(e["label"])

    t0 = time.perf_counter()
    build_index(gallery, out=work / "index", model=args.model, device="cpu", progress=False)
    build_s = time.perf_counter() - t0
    engine = SearchEngine.open(work / "index", device="cpu")
    n = len(labels)
    pos = {row["id"]: i for i, row in enumerate(engine.items)}
    target = [pos[f"{i:04d}.webp"] for i in range(n)]

    q_img = engine.encode_image_channels([queries / f"{i:04d}.png" for i in range(n)])
    q_txt = engine.encode_texts(labels)
    results = {}
    for name, image, text in [
        ("image->image, raw visual channel (shipped)", {"visual": q_img["visual"]}, None),
        ("image->image, bridge channel", {"image": q_img["image"]}, None),
        ("text->image, bridge channel (no titles)", None, q_txt),
    ]:
        hits = engine.search_vectors(image, text, k=n)
        ranks = [rank_of(t, [pos[h.id] for h in hs]) for t, hs in zip(target, hits)]
        results[name] = metrics(ranks)
    results["chance"] = metrics(list(range(1, n + 1)))
    report = {"n": n, "seed": args.seed, "model": args.model, "build_seconds": round(build_s, 1), "results": results,
              "command": "python benchmarks/bench_zero_shot.py --n %d --seed %d --model %s (see docstring)"
                          % (n, args.seed, args.model)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'ranking':48s} {'R@1':>6s} {'R@10':>6s} {'MRR':>6s}   (N = {n})")
    for name, m in results.items():
        print(f"{name:48s} {m['R@1']:6.3f} {m['R@10']:6.3f} {m['MRR']:6.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
