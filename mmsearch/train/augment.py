"""Training-time image augmentation that respects what the text says.

Each training image gets a :class:`Policy` from its texts (title, tags, a triplet's modifier):

- a horizontal flip is off when the text gives a direction or shows writing ("arrow pointing left",
  "keycap 3", a flag, a clock face): the mirror image would no longer match the words;
- colour jitter is off when the text names a colour or a skin tone ("red apple", "in blue",
  "dark skin tone"): a hue shift would make the text wrong;
- a random resized crop is always allowed.

:func:`forbids_flip` and :func:`forbids_colour_jitter` are the pure decisions (unit-tested); the
transforms themselves are torchvision's. With frozen backbones, ``aug_views`` augmented views per image
are made once, each from a seed derived from (file hash, view index, augmentation settings), so they
are cached like plain features; with unfrozen backbones a fresh view is drawn every step.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable

import torch
from PIL import Image

from ..config import ImageTowerCfg, TrainCfg
from ..models.preprocess import normalize_batch, pil_to_u8

# Words whose meaning flips with a mirror image: directions, and things that carry writing or a
# fixed handedness (mirrored letters, digits, flags and clock faces are wrong).
DIRECTION_WORDS = frozenset("""
left right leftward leftwards rightward rightwards east west northeast northwest southeast southwest
clockwise counterclockwise anticlockwise
letter letters text word words number numbers digit digits keycap flag flags clock abc abcd 1234
""".split())
# Colour names (basic and common fashion colours) and the colour-bearing phrases of emoji names.
COLOUR_WORDS = frozenset("""
red orange yellow green blue purple violet pink brown black white grey gray gold golden silver beige tan
navy teal turquoise cyan magenta maroon crimson scarlet olive lime indigo lavender ivory cream khaki coral
bronze copper amber burgundy mint peach rose ruby emerald sapphire colour color coloured colored colourful
colorful blond blonde redhead ginger rainbow multicolour multicolor
""".split())
_WORD = re.compile(r"[a-z0-9]+")
_SKIN_TONE = re.compile(r"\bskin[\s-]+tones?\b")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def forbids_flip(text: str) -> bool:
    """True if a horizontal mirror image would contradict ``text`` (a direction, or writing)."""
    return not _words(text).isdisjoint(DIRECTION_WORDS)


def forbids_colour_jitter(text: str) -> bool:
    """True if ``text`` names a colour or a skin tone, so the colours are part of what it says."""
    return bool(_SKIN_TONE.search(text.lower())) or not _words(text).isdisjoint(COLOUR_WORDS)


@dataclass(frozen=True)
class Policy:
    """Which meaning-changing augmentations one image may get."""

    flip: bool = True
    jitter: bool = True

    def __and__(self, other: "Policy") -> "Policy":
        return Policy(self.flip and other.flip, self.jitter and other.jitter)

    @property
    def code(self) -> str:  # part of a cached view's key
        return f"f{int(self.flip)}j{int(self.jitter)}"


def policy_for(texts: Iterable[str]) -> Policy:
    """The policy allowed by every text of an item (all its templates, tags, modifiers)."""
    texts = list(texts)
    return Policy(flip=not any(forbids_flip(t) for t in texts),
                  jitter=not any(forbids_colour_jitter(t) for t in texts))


def aug_settings(cfg: TrainCfg) -> dict:
    return {"crop_scale": list(cfg.aug_crop_scale), "flip": cfg.aug_flip, "jitter": cfg.aug_jitter}


def aug_key(cfg: TrainCfg) -> str:
    """A short hash of the augmentation settings: cached views made with other settings are not reused."""
    return hashlib.sha256(json.dumps(aug_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]


def view_seed(file_digest: str, view: int, key: str) -> int:
    """The seed of one cached view: the same file, view index and settings give the same view."""
    return int(hashlib.sha256(f"{file_digest}|{view}|{key}".encode()).hexdigest()[:15], 16)


class AugmentedPreprocess:
    """PIL RGB image -> (3, S, S) normalised float: random resized crop, then (where the policy allows)
    a horizontal flip with probability 1/2 and colour jitter. Randomness comes from torch's global RNG,
    or from ``seed`` when given (a cached view)."""

    def __init__(self, image_cfg: ImageTowerCfg, cfg: TrainCfg, policy: Policy):
        from torchvision import transforms as T  # training only: keeps torchvision off the search path

        self.image_cfg = image_cfg
        steps = [T.RandomResizedCrop(image_cfg.image_size, scale=tuple(cfg.aug_crop_scale),
                                     interpolation=T.InterpolationMode.BICUBIC)]
        if cfg.aug_flip and policy.flip:
            steps.append(T.RandomHorizontalFlip())
        if cfg.aug_jitter > 0 and policy.jitter:
            j = cfg.aug_jitter
            steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 3)))
        self.transform = T.Compose(steps)

    def __call__(self, im: Image.Image, seed: int | None = None) -> torch.Tensor:
        if seed is None:
            out = self.transform(im)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self.transform(im)
        return normalize_batch(pil_to_u8(out).unsqueeze(0), self.image_cfg.mean, self.image_cfg.std)[0]
