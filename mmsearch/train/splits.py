"""Training data: a catalog (and its composed-query triplets) reduced to cached features and indices."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalog.images import load_image
from ..catalog.scan import CatalogItem, jsonl_objects, scan_catalog
from ..config import TrainCfg
from ..dist.env import DistEnv
from ..errors import MMSearchError
from ..models.dual_encoder import DualEncoder
from ..models.factory import Tokenizer, image_preprocess
from .augment import Policy, policy_for
from .features import image_features, text_features, view_features

log = logging.getLogger(__name__)


class TrainError(MMSearchError):
    """Training cannot start or continue: too little data, a bad triplets file, a mismatched resume."""


@dataclass
class Triplets:
    """Composed-query triplets as positions into a split's items, plus modifier texts."""

    ref: torch.Tensor  # (T,) long
    tgt: torch.Tensor  # (T,) long
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Split:
    """One catalog, reduced to what training needs: cached features and indices.

    With unfrozen backbones (``raw``) nothing is cached: ``img``, ``txt`` and ``mod`` are None until
    :func:`refresh_features` computes them with the current backbones (validation), and training steps
    encode images and ``strings`` from scratch.
    """

    items: list[CatalogItem]  # items whose image loaded
    img: torch.Tensor | None  # (N, F) image backbone features
    pair_pos: torch.Tensor  # (P,) positions of items with text
    variants: list[list[int]]  # per pair: indices into txt / strings (text augmentations)
    txt: torch.Tensor | None  # (V, F) text backbone features of all variant strings
    labels: torch.Tensor  # (N,) category index or -1
    triplets: Triplets
    mod: torch.Tensor | None  # (T, F) text backbone features of the modifiers
    skipped_no_text: int = 0
    skipped_bad_image: int = 0
    strings: list[str] = field(default_factory=list)  # (V,) the variant texts
    policies: list[Policy] = field(default_factory=list)  # (N,) augmentations each item's text allows
    views: torch.Tensor | None = None  # (N, K, F) features of K cached augmented views (frozen + aug_views)
    raw: bool = False


def read_triplets(path: str | Path, known: dict[str, int]) -> list[tuple[int, str, int]]:
    """``{"reference": id, "text": str, "target": id}`` per line -> (ref position, text, target position).

    Malformed lines and unknown ids are errors naming the line. ``known`` maps item id -> position.
    """
    path = Path(path)
    out = []
    for lineno, row in jsonl_objects(path, TrainError, "triplets"):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("reference", "text", "target")):
            raise TrainError(f'{path}:{lineno}: expected {{"reference": id, "text": "...", "target": id}}')
        for key in ("reference", "target"):
            if row[key] not in known:
                raise TrainError(f"{path}:{lineno}: unknown {key} id {row[key]!r} (not an image of the catalog)")
        if not row["text"].strip():
            raise TrainError(f"{path}:{lineno}: empty modifier text")
        out.append((known[row["reference"]], row["text"].strip(), known[row["target"]]))
    return out


def item_texts(item: CatalogItem, templates: tuple[str, ...], max_tags: int, tag_groups: int = 1) -> list[str]:
    """Text augmentations of an item: each template filled with its title, and where the template asks
    for them its tags (``{tags}``: up to ``tag_groups`` variants, each with the next ``max_tags`` tags, so
    more than the first few tags are seen) and its description (``{text}``); templates whose fields the
    item lacks are skipped. A ``captions`` list in the item's metadata adds its texts."""
    title = item.title.strip() or item.full_text
    tags = item.metadata.get("tags")
    tags = [str(t) for t in tags if str(t).strip()] if isinstance(tags, list) else []
    groups = [", ".join(tags[i:i + max_tags]) for i in range(0, len(tags), max(1, max_tags))][:max(1, tag_groups)]
    out = []
    for tpl in templates:
        if ("{tags}" in tpl and not groups) or ("{text}" in tpl and not item.text.strip()):
            continue
        for group in (groups if "{tags}" in tpl else [""]):
            text = tpl.format(title=title, tags=group, text=item.text.strip())
            if text not in out:
                out.append(text)
    caps = item.metadata.get("captions")  # the catalog's own caption variants (build_corpus.py writes them)
    out += [str(c) for c in (caps if isinstance(caps, list) else []) if str(c).strip() and str(c) not in out]
    return out or [title]


def readable_images(paths: list[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """(positions that decode, [(position, reason)]) without running a backbone (unfrozen training)."""
    ok, failed = [], []
    for i, path in enumerate(paths):
        try:
            load_image(path)
            ok.append(i)
        except Exception as exc:  # a bad image is skipped, never fatal
            failed.append((i, str(exc)))
            log.warning("skipping %s: %s", path, exc)
    return ok, failed


def prepare_split(catalog: str | Path, model: DualEncoder, tokenizer: Tokenizer, cfg: TrainCfg,
                  triplets_path: str | Path | None, categories: dict[str, int], augment: bool,
                  progress: bool = True, env: DistEnv | None = None) -> Split:
    """Read a catalog (and its triplets) into a :class:`Split`. Frozen backbones: backbone features of
    every image, text variant and modifier, from the feature cache (plus ``cfg.aug_views`` cached
    augmented views per image when ``augment``). Unfrozen (``cfg.unfreeze``): no features at all."""
    all_items = scan_catalog(catalog)
    raw = cfg.unfreeze > 0
    if raw:
        img, (ok, failed) = None, readable_images([it.path for it in all_items])
    else:
        preprocess = image_preprocess(model.cfg.image)
        img, ok, failed = image_features(model, preprocess, [it.path for it in all_items], progress=progress,
                                         env=env)
    items = [all_items[i] for i in ok]
    pair_pos = [i for i, it in enumerate(items) if it.full_text]
    templates = cfg.text_templates if augment else ("{title}",)
    strings: dict[str, int] = {}
    variants = []
    for i in pair_pos:
        variants.append([strings.setdefault(t, len(strings))
                         for t in item_texts(items[i], templates, cfg.max_tags, cfg.tag_groups)])
    txt = None if raw else text_features(model, tokenizer, list(strings), env=env)
    policies = [policy_for(item_texts(it, cfg.text_templates, cfg.max_tags, cfg.tag_groups) + [it.full_text])
                for it in items]
    views = None
    if augment and cfg.aug_views > 0 and not raw:
        views = view_features(model, [it.path for it in items], img, policies, cfg, cfg.aug_views,
                              progress=progress, env=env)
    labels = torch.tensor([categories.get(str(it.metadata.get("category")), -1) if "category" in it.metadata else -1
                           for it in items], dtype=torch.long)
    trip: list[tuple[int, str, int]] = []
    if triplets_path:
        rows = read_triplets(triplets_path, {it.id: i for i, it in enumerate(all_items)})
        pos_of = {it.id: i for i, it in enumerate(items)}
        trip = [(pos_of[all_items[r].id], t, pos_of[all_items[g].id]) for r, t, g in rows
                if all_items[r].id in pos_of and all_items[g].id in pos_of]  # images that failed are skipped
    triplets = Triplets(torch.tensor([r for r, _, _ in trip], dtype=torch.long),
                        torch.tensor([g for _, _, g in trip], dtype=torch.long), [t for _, t, _ in trip])
    mod = None if raw else text_features(model, tokenizer, triplets.texts, env=env)
    return Split(items=items, img=img, pair_pos=torch.tensor(pair_pos, dtype=torch.long), variants=variants,
                 txt=txt, labels=labels, triplets=triplets, mod=mod, skipped_no_text=len(items) - len(pair_pos),
                 skipped_bad_image=len(failed), strings=list(strings), policies=policies, views=views, raw=raw)


def refresh_features(split: Split, model: DualEncoder, tokenizer: Tokenizer) -> None:
    """Backbone features of a split with the current (partly trained) backbones, not cached."""
    paths = [it.path for it in split.items]
    split.img, _, _ = image_features(model, image_preprocess(model.cfg.image), paths, progress=False,
                                     use_cache=False)
    split.txt = text_features(model, tokenizer, split.strings, use_cache=False)
    split.mod = text_features(model, tokenizer, split.triplets.texts, use_cache=False)


def category_index(catalog: str | Path) -> dict[str, int]:
    cats = sorted({str(it.metadata["category"]) for it in scan_catalog(catalog) if "category" in it.metadata})
    return {c: i for i, c in enumerate(cats)}
