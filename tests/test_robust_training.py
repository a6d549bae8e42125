"""Issue 13's training and preprocessing changes: same-text masking in the contrastive loss, WiSE-FT weight
interpolation (also through ``train``), bridge prompt ensembles, and the image geometry config field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmsearch.config import ImageTowerCfg, TrainCfg
from mmsearch.models.crop import pad_square_pil, resize_crop_pil
from mmsearch.models.preprocess import PilPreprocess, ResizeCropU8, resize_crop_tensor
from mmsearch.train.loop import train
from mmsearch.train.loss import contrastive_loss, same_text_mask
from mmsearch.train.wise import interpolate, interpolated, trainable_state


# --------------------------------------------------------------------------------------------- masking
def test_same_text_pairs_are_not_negatives():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    txt[1] = txt[0]  # two items share a caption ("cat")
    ids = torch.tensor([7, 7, 1, 2])
    masked = contrastive_loss(img, txt, 10.0, text_ids=ids)
    # by hand: drop column 1 from row 0 and column 0 from row 1, in both directions
    logits = 10.0 * img @ txt.T
    keep = ~same_text_mask(ids, 4)
    i2t = [F.cross_entropy(logits[r][keep[r]][None], torch.tensor([int(keep[r][:r].sum())])) for r in range(4)]
    t2i = [F.cross_entropy(logits.T[r][keep[r]][None], torch.tensor([int(keep[r][:r].sum())])) for r in range(4)]
    torch.testing.assert_close(masked, 0.5 * (torch.stack(i2t).mean() + torch.stack(t2i).mean()))
    assert masked < contrastive_loss(img, txt, 10.0)  # the duplicate no longer counts as a mistake
    # distinct ids: exactly the unmasked loss; explicit one-process sizes give the same masked loss
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, text_ids=torch.arange(4)), contrastive_loss(img, txt, 10.0))
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, [4], ids), masked)


def test_same_text_mask_offsets_rows_of_a_shard():
    ids = torch.tensor([3, 3, 5, 3])
    m = same_text_mask(ids, 2, offset=2)  # rows 2 and 3 of the global batch
    assert m.tolist() == [[False, False, False, False], [True, True, False, False]]


# ---------------------------------------------------------------------------------------------- WiSE-FT
def test_interpolate_ends_and_middle():
    a, b = {"w": torch.zeros(2, 2), "n": torch.tensor(1)}, {"w": torch.ones(2, 2), "n": torch.tensor(5)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(interpolate(a, b, 0.25)["w"], torch.full((2, 2), 0.25))
    assert int(interpolate(a, b, 0.5)["n"]) == 5  # integer tensors are not mixed
    with pytest.raises(ValueError):
        interpolate(a, b, 1.5)


def test_interpolated_context_restores_the_tuned_weights():
    net = torch.nn.Linear(3, 2)
    start = trainable_state(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    tuned = net.weight.detach().clone()
    with interpolated(net, start, 0.5):
        torch.testing.assert_close(net.weight, start["weight"] + 0.5)
    torch.testing.assert_close(net.weight, tuned)


def test_train_saves_the_wise_mix_and_alpha(small_catalog, tmp_path):
    from mmsearch.models.factory import build_named_model, read_checkpoint

    cfg = TrainCfg(epochs=2, batch_size=6, loss_classify=0.0)
    full = train(small_catalog, out=tmp_path / "a1", model="tiny", cfg=cfg, device="cpu", progress=False)
    half = train(small_catalog, out=tmp_path / "a05", model="tiny", cfg=dataclasses.replace(cfg, wise_alpha=0.5),
                 device="cpu", progress=False)
    start, _ = build_named_model("tiny", with_weights=False)
    s0 = start.state_dict()
    p1, ph = read_checkpoint(full.run_dir / "last.pt"), read_checkpoint(half.run_dir / "last.pt")
    assert ph["extra"]["wise_ft_alpha"] == 0.5 and p1["extra"]["wise_ft_alpha"] == 1.0
    key = "image_tower.head.weight"  # same seed, same steps: the saved weights are the midpoint
    torch.testing.assert_close(ph["state_dict"][key], 0.5 * (s0[key] + p1["state_dict"][key]))
    # state.pt keeps the trained (unmixed) weights for --resume
    state = torch.load(half.run_dir / "state.pt", weights_only=True)
    torch.testing.assert_close(state["model"][key], p1["state_dict"][key])


# ------------------------------------------------------------------------------------- prompt ensembles
def test_bridge_prompts_use_templates_and_synonyms():
    from mmsearch.models.classnames import bridge_prompts

    one = bridge_prompts(("a photo of a {}.",))
    many = bridge_prompts(("a photo of a {}.", "an icon of a {}."), synonyms=True)
    assert len(one) == len(many) == 1000
    assert one[0] == ["a photo of a tench."]
    assert "an icon of a Tinca tinca." in many[0] and "a photo of a tench." in many[0]


def test_ensemble_embedding_is_the_normalised_mean(tmp_path, monkeypatch):
    from mmsearch.config import TextTowerCfg
    from mmsearch.models.classnames import bridge_prompts
    from mmsearch.models.encoders import TextTower, l2n
    from mmsearch.models.factory import imagenet_class_text_embeddings
    from mmsearch.models.tokenizer import WordTokenizer

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    tok = WordTokenizer(None, num_buckets=512, context_length=16)
    tower = TextTower(TextTowerCfg(backbone="lstm", head="linear", context_length=16, vocab_size=512, width=16),
                      16, vocab_size=tok.vocab_size).eval()
    templates = ("a photo of a {}.", "a drawing of a {}.")
    emb = imagenet_class_text_embeddings(tower, tok, "unused {}", templates, synonyms=True)
    assert emb.shape == (1000, 16)
    prompts = bridge_prompts(templates, synonyms=True)[3]
    with torch.no_grad():
        expect = l2n(l2n(tower(tok(prompts))).mean(0, keepdim=True))[0]
    torch.testing.assert_close(emb[3], expect, atol=1e-5, rtol=1e-4)
    # cached: the second call reads the file
    assert torch.equal(imagenet_class_text_embeddings(tower, tok, "unused {}", templates, synonyms=True), emb)


def test_bridge_temperature_flattens_the_class_mix():
    from mmsearch.models.encoders import ImageNetBridge

    class FakeBackbone:
        classify = staticmethod(lambda f: f)

    emb = torch.eye(3)
    feats = torch.tensor([[4.0, 0.0, 0.0]])
    sharp = ImageNetBridge(FakeBackbone(), emb)(feats)
    flat = ImageNetBridge(FakeBackbone(), emb, temperature=4.0)(feats)
    assert sharp[0, 0] > flat[0, 0] and flat[0, 1] > sharp[0, 1]


# ------------------------------------------------------------------------------------------- geometry
def test_pad_keeps_the_whole_object_on_the_pad_colour():
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    out = pad_square_pil(im, 224, (255, 255, 255))
    assert out.size == (224, 224)
    arr = np.asarray(out)
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[112, 0]) == (0, 0, 255) \
        and tuple(arr[112, 223]) == (0, 0, 255)  # both ends of the wide object survive
    crop = np.asarray(resize_crop_pil(im, 256, 224))
    assert (crop[..., 2] > 200).all()  # centre crop: only the middle, no border at all


def test_geometry_field_drives_every_preprocess_path():
    cfg = ImageTowerCfg(geometry="pad", pad_color=(255, 255, 255))
    im = Image.new("RGB", (120, 60), (200, 30, 30))
    u8 = ResizeCropU8(cfg)(im)
    assert u8.shape == (3, 224, 224) and u8[:, 0, 0].tolist() == [255, 255, 255]
    # the device path (tensor twin) agrees with PIL within a few grey levels
    t = resize_crop_tensor(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1), cfg.resize_size,
                           cfg.image_size, cfg.geometry, cfg.pad_color)
    assert (t.int() - u8.int()).abs().max() <= 3
    assert PilPreprocess(cfg)(im).shape == (3, 224, 224)
    # crop configs keep the old behaviour, including the black border around tiny images
    tiny = Image.new("RGB", (50, 50), (255, 255, 255))
    assert ResizeCropU8(ImageTowerCfg(resize_size=100, image_size=64))(tiny)[:, 0, 0].tolist() == [255, 255, 255]
    small = ResizeCropU8(ImageTowerCfg(resize_size=40, image_size=64))(tiny)
    assert small[:, 0, 0].tolist() == [0, 0, 0]
    padded = resize_crop_tensor(torch.full((3, 40, 40), 255, dtype=torch.uint8), 40, 64, "crop", (9, 9, 9))
    assert padded[:, 0, 0].tolist() == [9, 9, 9]


def test_geometry_round_trips_through_a_config_file(tmp_path):
    from mmsearch.config import ModelCfg

    path = tmp_path / "m.json"
    cfg = ModelCfg(image=ImageTowerCfg(geometry="pad", pad_color=(255, 255, 255)))
    from mmsearch.config import to_dict

    path.write_text(json.dumps(to_dict(cfg)))
    back = ModelCfg.from_json_file(str(path))
    assert back.image.geometry == "pad" and tuple(back.image.pad_color) == (255, 255, 255)
