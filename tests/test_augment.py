"""Image augmentation: the text-aware decisions, the transforms, cached views, and text variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mmsearch.catalog.scan import CatalogItem
from mmsearch.config import TrainCfg
from mmsearch.models.factory import get_model_config
from mmsearch.train.augment import AugmentedPreprocess, Policy, aug_key, forbids_colour_jitter, forbids_flip, policy_for
from mmsearch.train.splits import item_texts


@pytest.mark.parametrize("text, expect", [
    ("backhand index pointing left", True), ("right arrow", True), ("Arrow pointing RIGHT", True),
    ("north-east arrow", True), ("counterclockwise arrows button", True), ("keycap: 7", True),
    ("flag: Japan", True), ("input latin letters", True), ("ten o'clock", True),
    ("running shoe", False), ("backhand index pointing up", False), ("red apple", False),
    ("copyright", False), ("brightness", False), ("", False),
])
def test_flip_is_forbidden_by_directions_and_writing(text, expect):
    assert forbids_flip(text) is expect


@pytest.mark.parametrize("text, expect", [
    ("red apple", True), ("a photo of a Blue car", True), ("sneaker in purple", True), ("grey t-shirt", True),
    ("waving hand: medium-dark skin tone", True), ("thumbs up, dark skin-tone", True),
    ("woman: blond hair", True), ("rainbow flag", True),
    ("running shoe", False), ("credit card", False), ("redo", False), ("bluetooth speaker", False),
    ("woman running", False), ("", False),
])
def test_colour_jitter_is_forbidden_by_colour_words(text, expect):
    assert forbids_colour_jitter(text) is expect


def test_policy_of_an_item_is_what_every_text_allows():
    assert policy_for(["running shoe", "a photo of running shoe"]) == Policy(flip=True, jitter=True)
    assert policy_for(["car", "car, red, fast"]) == Policy(flip=True, jitter=False)  # a tag names a colour
    assert policy_for(["left arrow", "blue"]) == Policy(flip=False, jitter=False)
    assert Policy(True, False) & Policy(False, True) == Policy(False, False)


def _image() -> Image.Image:
    """An asymmetric, colourful 40x40 test image (a mirror or hue shift changes it)."""
    x = torch.linspace(0, 255, 40).round().to(torch.uint8)
    arr = torch.stack([x.expand(40, 40), x.expand(40, 40).t(), torch.full((40, 40), 60, dtype=torch.uint8)], -1)
    return Image.fromarray(arr.numpy(), "RGB")


@pytest.mark.slow
def test_augmented_views_obey_the_policy_and_the_seed():
    icfg = get_model_config("tiny").image
    whole = TrainCfg(aug_crop_scale=(1.0, 1.0), aug_jitter=0.4)  # the crop keeps the whole (square) image
    im = _image()
    none = AugmentedPreprocess(icfg, whole, Policy(flip=False, jitter=False))
    base = none(im, seed=0)
    assert base.shape == (3, icfg.image_size, icfg.image_size)
    for seed in range(6):  # nothing meaning-changing is allowed: every view is the plain square
        torch.testing.assert_close(none(im, seed=seed), base)
    flip = AugmentedPreprocess(icfg, whole, Policy(flip=True, jitter=False))
    views = [flip(im, seed=s) for s in range(8)]
    assert any(torch.equal(v, base) for v in views)
    assert any(torch.allclose(v, base.flip(-1)) for v in views)  # some views are exact mirrors
    jitter = AugmentedPreprocess(icfg, whole, Policy(flip=False, jitter=True))
    assert not torch.allclose(jitter(im, seed=1), base, atol=0.05)
    torch.testing.assert_close(jitter(im, seed=1), jitter(im, seed=1))  # a seed fixes a view
    crop = AugmentedPreprocess(icfg, TrainCfg(aug_crop_scale=(0.2, 0.5)), Policy(False, False))
    assert not torch.allclose(crop(im, seed=1), crop(im, seed=2))
    # The cache key changes with every augmentation setting.
    keys = {aug_key(c) for c in (TrainCfg(), dataclasses.replace(TrainCfg(), aug_jitter=0.1),
                                 dataclasses.replace(TrainCfg(), aug_flip=False),
                                 dataclasses.replace(TrainCfg(), aug_crop_scale=(0.5, 1.0)))}
    assert len(keys) == 4 and aug_key(TrainCfg()) == aug_key(TrainCfg())


def test_text_variants_cover_tags_in_groups_and_descriptions():
    item = CatalogItem(id="a.webp", path="a.webp", title="running shoe", text="for trail runs",
                       metadata={"tags": ["athletic", "fast", "shoe", "sneaker", "sport"]})
    tpl = ("{title}", "a photo of {title}", "{title}, {tags}", "{title}: {text}")
    assert item_texts(item, tpl, max_tags=2) == ["running shoe", "a photo of running shoe",
                                                 "running shoe, athletic, fast", "running shoe: for trail runs"]
    assert item_texts(item, tpl[2:3], max_tags=2, tag_groups=5) == [
        "running shoe, athletic, fast", "running shoe, shoe, sneaker", "running shoe, sport"]
    bare = CatalogItem(id="b.webp", path="b.webp", title="cup")
    assert item_texts(bare, tpl, max_tags=2, tag_groups=3) == ["cup", "a photo of cup"]  # no tags, no text


def test_cached_views_are_reused_and_keyed_by_settings(small_catalog, tmp_path, monkeypatch):
    from mmsearch.models.factory import build_named_model, image_preprocess
    from mmsearch.train import features

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    net, _ = build_named_model("tiny")
    paths = sorted(str(p) for p in small_catalog.rglob("*.webp"))[:4]
    plain, ok, _ = features.image_features(net, image_preprocess(net.cfg.image), paths, progress=False)
    assert ok == [0, 1, 2, 3]
    pols = [Policy(), Policy(), Policy(False, False), Policy()]
    calls = []
    real = net.image_tower.backbone.forward
    monkeypatch.setattr(net.image_tower.backbone, "forward", lambda x: calls.append(len(x)) or real(x))
    cfg = TrainCfg(aug_views=2)
    a = features.view_features(net, paths, plain, pols, cfg, 2, progress=False)
    assert a.shape == (4, 2, plain.shape[1]) and sum(calls) == 8
    assert not torch.allclose(a[:, 0], plain) and not torch.allclose(a[:, 0], a[:, 1])  # views differ
    b = features.view_features(net, paths, plain, pols, cfg, 2, progress=False)
    torch.testing.assert_close(a, b)
    assert sum(calls) == 8  # all from the cache
    features.view_features(net, paths, plain, pols, dataclasses.replace(cfg, aug_jitter=0.1), 2, progress=False)
    assert sum(calls) == 16  # other settings: other views
    features.view_features(net, paths, plain, pols, cfg, 3, progress=False)
    assert sum(calls) == 20  # one more view each; the first two are reused
