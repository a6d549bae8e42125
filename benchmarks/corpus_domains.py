"""More corpus domains for ``build_corpus.py``: emoji in other styles, named icon sets, desktop icon themes
and openclipart with its SVG metadata. Every source is a registry package (see ``../shared/DATA.md``);
vector art is rendered offline with ``resvg-py`` (PyPI).

Domains (one visual style each, so leave-one-domain-out measures a style never trained on):

- emoji styles, joined to emojibase on codepoints (iconify ``chars.json``), on the CLDR name slug, or on
  the Unicode character name (fxemoji): ``fluent-flat``, ``noto-svg``, ``twemoji``, ``emojione``,
  ``fxemoji``, ``streamline-emojis``. Each goes through ``add_emoji`` like Fluent 3D, so one emoji in N
  styles shares its base (and split) and every style gets its skin-tone / gender / recolour triplets;
- named icon sets: ``mdi`` (Material Design Icons; ``-outline`` twins dropped), ``icon-park``,
  ``flat-color-icons``, ``streamline`` (title = the icon name in words, tags = the set's category);
- ``freedesktop``: Adwaita, Breeze, elementary and Faenza icon themes (one file per theme and icon name,
  the biggest, symbolic and -dark variants dropped; title = the freedesktop name in words, e.g.
  "camera photo"; tag = the context folder, e.g. "devices");
- ``openclipart-svg``: Debian ``openclipart-svg``: ``dc:title`` as title, the ``dc:subject`` keywords as
  tags and ``dc:description`` as text (the real metadata, not cleaned file names).

Every row gets ``captions``: several texts for the same image (title, a style template such as "an icon
of {title}" or "a drawing of {title}", title plus tags, the description); training draws one per epoch.
Splits follow ``split_of(base)`` (the base of an icon is its name in words, hashed with the domain's family,
so the same concept in two icon sets lands in one split).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Callable

from PIL import Image

RENDER = 224  # long side of rendered vector art (the model's input size)

# domain -> (npm package, how its emoji names join emojibase: chars | slug | unicode)
EMOJI_SETS = {
    "fluent-flat": ("@iconify-json/fluent-emoji-flat@1.2.6", "chars"),
    "noto-svg": ("@iconify-json/noto@1.2.9", "chars"),
    "twemoji": ("@iconify-json/twemoji@1.2.5", "chars"),
    "emojione": ("@iconify-json/emojione@1.2.3", "slug"),
    "fxemoji": ("@iconify-json/fxemoji@1.2.2", "unicode"),
    "streamline-emojis": ("@iconify-json/streamline-emojis@1.2.4", "slug"),
}
ICON_SETS = {"mdi": "@iconify-json/mdi@1.2.3", "icon-park": "@iconify-json/icon-park@1.2.4",
             "flat-color-icons": "@iconify-json/flat-color-icons@1.2.3", "streamline": "@iconify-json/streamline@1.2.5"}
THEMES = ("adwaita-icon-theme", "breeze-icon-theme", "elementary-icon-theme", "faenza-icon-theme")


def packages() -> dict[str, tuple[str, str, str, str]]:
    """``build_corpus.PACKAGES`` entries of these sources: source -> (registry, spec, archive glob, folder)."""
    out = {}
    for domain, spec in [(d, s) for d, (s, _) in EMOJI_SETS.items()] + list(ICON_SETS.items()):
        name, version = spec.rsplit("@", 1)
        out[domain] = ("npm", spec, f"{name[1:].replace('/', '-')}-{version}.tgz", domain)
    for theme in THEMES:
        out[theme] = ("apt", theme, f"{theme}_*_all.deb", theme)
    out["openclipart-svg"] = ("apt", "openclipart-svg", "openclipart-svg_*_all.deb", "openclipart-svg")
    return out
NEW_DOMAINS = tuple(EMOJI_SETS) + tuple(ICON_SETS) + ("freedesktop", "openclipart-svg")
# what the picture is, for caption templates
STYLE_WORD = {**{d: "emoji" for d in EMOJI_SETS}, **{d: "icon" for d in ICON_SETS}, "freedesktop": "icon",
              "openclipart-svg": "drawing"}


_UNITS = {"px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}


def px_root(svg: str) -> str:
    """An SVG whose root has width/height in physical units ("210mm") and no viewBox, which resvg refuses
    ("invalid size"): the same drawing with a viewBox in user units (px) and unitless width/height."""
    start = svg.find("<svg")
    end = svg.find(">", start)
    head = svg[start:end]
    if start < 0 or "viewBox" in head:
        return svg
    dims = {}
    for key in ("width", "height"):
        m = re.search(rf'(\s{key}\s*=\s*["\'])\s*([\d.]+)\s*(px|pt|pc|mm|cm|in)\s*(["\'])', head)
        if not m:
            return svg
        dims[key] = (m, float(m.group(2)) * _UNITS[m.group(3)])
    for key, (m, v) in dims.items():
        head = head.replace(m.group(0), f"{m.group(1)}{v:.2f}{m.group(4)}")
    w, h = dims["width"][1], dims["height"][1]
    return svg[:start] + head + f' viewBox="0 0 {w:.2f} {h:.2f}"' + svg[end:]


def render_svg(svg: str, size: int = RENDER) -> Image.Image | None:
    """SVG markup -> RGBA image whose long side is ``size`` (transparent background); None if it fails."""
    import io

    import resvg_py

    try:
        svg = px_root(svg)
        w, h = svg_size(svg)
        scale = size / max(w, h)
        png = resvg_py.svg_to_bytes(svg_string=svg, width=max(1, round(w * scale)), height=max(1, round(h * scale)),
                                    skip_system_fonts=True)
        im = Image.open(io.BytesIO(bytes(png)))
        im.load()
        return im.convert("RGBA")
    except Exception:  # a broken drawing is skipped, never fatal
        return None


def svg_size(svg: str) -> tuple[float, float]:
    """(width, height) from the root's viewBox, else its width/height, else 1 x 1."""
    head = svg[:svg.find(">", svg.find("<svg")) + 1]
    m = re.search(r'viewBox\s*=\s*["\']\s*([-\d.eE]+)[\s,]+([-\d.eE]+)[\s,]+([-\d.eE]+)[\s,]+([-\d.eE]+)', head)
    if m and float(m.group(3)) > 0 and float(m.group(4)) > 0:
        return float(m.group(3)), float(m.group(4))
    dims = []
    for key in ("width", "height"):
        m = re.search(rf'\s{key}\s*=\s*["\']\s*([\d.]+)', head)
        dims.append(float(m.group(1)) if m and float(m.group(1)) > 0 else 1.0)
    return dims[0], dims[1]


def iconify_svg(data: dict, name: str) -> str | None:
    """The SVG of icon ``name`` of an iconify JSON set (aliases followed once)."""
    icon = data["icons"].get(name)
    if icon is None:
        alias = data.get("aliases", {}).get(name)
        icon = data["icons"].get(alias["parent"]) if alias else None
    if icon is None:
        return None
    w, h = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{icon["body"]}</svg>')


def slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.replace("’", "'")).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", text.replace("'", "")).strip("-")


def norm_hex(h: str) -> str:
    return "-".join(p for p in h.lower().split("-") if p != "fe0f")


def emoji_names(data: list[dict]) -> list[tuple[str, str, str]]:
    """(hexcode, emoji, label) of every emojibase entry and skin variant."""
    out = []
    for e in data:
        out.append((e["hexcode"], e.get("emoji", ""), e["label"]))
        out += [(s["hexcode"], s.get("emoji", ""), s["label"]) for s in e.get("skins", [])]
    return out


def iconify_emoji_images(pkg: Path, data: list[dict], join: str) -> Callable[[str, str], Image.Image | None]:
    """``image_of(hexcode, emoji)`` for an iconify emoji set, joined to emojibase by ``join``."""
    icons = json.loads((pkg / "icons.json").read_text(encoding="utf-8"))
    names = set(icons["icons"]) | set(icons.get("aliases", {}))
    by_hex: dict[str, str] = {}
    if join == "chars":
        chars = json.loads((pkg / "chars.json").read_text(encoding="utf-8"))
        by_hex = {norm_hex(h): n for h, n in chars.items()}
    for hexcode, emoji, label in emoji_names(data):
        key = norm_hex(hexcode)
        if key in by_hex:
            continue
        if join in ("chars", "slug"):
            s = slug(label)
            if s in names:
                by_hex[key] = s
        elif join == "unicode" and len(emoji.replace("\ufe0f", "")) == 1:
            try:
                s = re.sub(r"[^a-z0-9]", "", unicodedata.name(emoji.replace("\ufe0f", "")).lower())
            except ValueError:
                continue
            if s in names:
                by_hex[key] = s

    def image_of(hexcode: str, _emoji: str) -> Image.Image | None:
        name = by_hex.get(norm_hex(hexcode))
        svg = iconify_svg(icons, name) if name else None
        return render_svg(svg) if svg else None

    return image_of


def captions(title: str, tags: list[str], style: str, text: str = "") -> list[str]:
    """Several texts for one image: title, a style template, title + tags, the description."""
    article = "an" if style[0] in "aeiou" else "a"
    out = [title, f"{article} {style} of {title}"]
    if tags:
        out.append(f"{title}, {', '.join(tags[:5])}")
    if text and len(text) < 200:
        out.append(text)
    return list(dict.fromkeys(c.strip() for c in out if c.strip()))


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(name: str) -> str:
    """An icon name as words: "camera-photo" / "camera_photo" / "cameraPhoto" -> "camera photo"."""
    name = _CAMEL.sub(" ", name)
    return re.sub(r"\s+", " ", re.sub(r"[^0-9A-Za-z']+", " ", name)).strip().lower()


_ICON_NOISE = re.compile(r"\b(outline|outlined|filled|fill|solid|remix|variant|box|circle|sharp|rounded|"
                         r"symbolic|alt|\d+)\b")


def icon_base(name: str) -> str:
    """The concept of an icon name ("camera outline" and "camera 2" -> "camera"), for the split."""
    return re.sub(r"\s+", " ", _ICON_NOISE.sub(" ", name)).strip() or name


def add_icon_set(corpus, split_of, held_out, pkg: Path, domain: str, limit: int = 0) -> None:
    """An iconify icon set: title = the name in words, tags = the set's category."""
    icons = json.loads((pkg / "icons.json").read_text(encoding="utf-8"))
    meta_path = pkg / "metadata.json"
    category = {}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for cat, members in (meta.get("categories") or {}).items():
            for n in members:
                category.setdefault(n, cat)
    names = sorted(icons["icons"])
    if domain == "mdi":  # "-outline" twins of an icon add near-duplicates with the same text
        names = [n for n in names if not (n.endswith("-outline") and n[:-8] in icons["icons"])]
    if domain == "streamline":
        names = [n for n in names if not n.endswith("-remix") and not n.endswith("-solid")]
    n_added = 0
    for n in names:
        if limit and n_added >= limit:
            break
        title = words(n)
        cat = category.get(n, "")
        tags = [words(cat)] if cat else []
        base = icon_base(title)
        im = render_svg(iconify_svg(icons, n) or "")
        if im is None:
            corpus.missing += 1
            continue
        corpus.add(held_out(domain)(split_of(f"icon:{base}")), im, f"{domain}-{hashlib.sha1(n.encode()).hexdigest()[:10]}",
                   title, tags, words(cat) or "icon", f"icon:{base}", "icon", domain, ext="png",
                   captions=captions(title, tags, "icon"))
        n_added += 1


def theme_icons(srcs: dict[str, Path]) -> dict[tuple[str, str], tuple[Path, str]]:
    """(theme, icon name) -> (biggest file, context folder) across the unpacked freedesktop theme packages
    ``srcs`` (package -> the folder holding usr/)."""
    best: dict[tuple[str, str], tuple[int, Path, str]] = {}
    for theme_pkg, src in sorted(srcs.items()):
        root = src / "usr/share/icons"
        if not root.is_dir():
            continue
        for p in root.rglob("*"):
            if p.is_symlink() or not p.is_file() or p.suffix not in (".svg", ".png"):
                continue
            theme = p.relative_to(root).parts[0]
            if theme.lower().endswith(("dark", "-dark", "mono", "ambiance", "radiance")) or "symbolic" in p.name \
                    or "cursors" in p.parts:
                continue
            parts = p.relative_to(root).parts
            size = next((int(m.group(1)) for q in parts for m in [re.match(r"^(\d+)(x\d+)?$", q)] if m), 0)
            score = 10_000 if p.suffix == ".svg" and size == 0 else (1000 + size if p.suffix == ".svg" else size)
            context = next((q for q in parts[1:-1] if not re.match(r"^(\d+(x\d+)?|scalable.*|\d+@\d+x)$", q)), "")
            key = (theme_pkg, p.stem)
            if key not in best or score > best[key][0]:
                best[key] = (score, p, context)
    return {k: (p, c) for k, (_, p, c) in best.items()}


def add_freedesktop(corpus, split_of, held_out, srcs: dict[str, Path], limit: int = 0) -> None:
    n_added = 0
    for (theme, name), (path, context) in sorted(theme_icons(srcs).items()):
        if limit and n_added >= limit:
            break
        if path.suffix == ".svg":
            im = render_svg(path.read_text(encoding="utf-8", errors="ignore"))
        else:
            try:
                with Image.open(path) as f:
                    im = f.convert("RGBA")
                if max(im.size) < 32:
                    im = None
            except OSError:
                im = None
        if im is None:
            corpus.missing += 1
            continue
        title = words(name)
        tags = [words(context)] if context else []
        base = icon_base(title)
        corpus.add(held_out("freedesktop")(split_of(f"icon:{base}")), im,
                   f"fd-{hashlib.sha1(f'{theme}/{name}'.encode()).hexdigest()[:10]}", title, tags,
                   words(context) or "icon", f"icon:{base}", "icon", "freedesktop", ext="png",
                   captions=captions(title, tags, "icon"))
        n_added += 1


NS = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
      "cc": "http://web.resource.org/cc/"}
_DROP_KEYWORDS = {"unsorted", "clip art", "clipart", "image", "media", "png", "public domain", "svg", "externalsource",
                  "remix", "openclipart"}


def openclipart_meta(svg: str) -> tuple[str, list[str], str]:
    """(dc:title of the work, keywords, dc:description) from an openclipart SVG's RDF metadata."""
    try:
        root = ET.fromstring(svg.encode("utf-8", "ignore"))
    except ET.ParseError:
        return "", [], ""
    work = root.find(".//cc:Work", NS)
    if work is None:
        return "", [], ""
    title = (work.findtext("dc:title", "", NS) or "").strip()
    desc = (work.findtext("dc:description", "", NS) or "").strip()
    kws = [li.text.strip().lower() for li in work.findall("dc:subject/rdf:Bag/rdf:li", NS) if li.text and li.text.strip()]
    return title, [k for k in kws if k not in _DROP_KEYWORDS], desc


def add_openclipart_svg(corpus, split_of, held_out, src: Path, per_title: int = 2, limit: int = 0) -> None:
    """Openclipart SVGs with their real titles; at most ``per_title`` drawings per (lower-cased) title."""
    root = src / "usr/share/openclipart/svg"
    seen: dict[str, int] = defaultdict(int)
    n_added = 0
    for p in sorted(root.rglob("*.svg*")):
        if limit and n_added >= limit:
            break
        raw = p.read_bytes()
        if p.suffix == ".svgz":
            raw = gzip.decompress(raw)
        svg = raw.decode("utf-8", "ignore")
        title, kws, desc = openclipart_meta(svg)
        title = re.sub(r"\s+", " ", title.replace("_", " ")).strip()
        if not title or len(title) > 80:
            continue
        key = title.lower()
        if seen[key] >= per_title:
            continue
        im = render_svg(svg, 256)
        if im is None or im.getextrema()[3][1] == 0:  # failed or fully transparent
            corpus.missing += 1
            continue
        seen[key] += 1
        top = p.relative_to(root).parts[0].replace("_", " ")
        corpus.add(held_out("openclipart-svg")(split_of(f"openclipart:{key}")), im,
                   f"ocs-{hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest()[:12]}", title, kws[:8] or [top],
                   top, f"openclipart:{key}", "clipart", "openclipart-svg", ext="png",
                   captions=captions(title, kws, "drawing", desc), text=desc[:300])
        n_added += 1
