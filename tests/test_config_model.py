"""Configs, the factory, tokenizer and checkpoints, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from mmsearch import create_model, list_models
from mmsearch.config import ModelCfg, from_dict, to_dict
from mmsearch.errors import ModelError
from mmsearch.models.factory import get_model_config, load_checkpoint, save_checkpoint
from mmsearch.models.tokenizer import WordTokenizer


def test_named_configs_round_trip_through_json(tmp_path):
    assert {"default", "tiny"} <= set(list_models())
    for name in ("default", "tiny"):
        cfg = get_model_config(name)
        path = tmp_path / f"{name}.json"
        path.write_text(cfg.to_json())
        assert ModelCfg.from_json_file(path) == cfg


def test_unknown_config_field_is_an_error():
    data = to_dict(get_model_config("tiny"))
    data["image"]["widht"] = 3
    with pytest.raises(ValueError, match="widht"):
        from_dict(ModelCfg, data)


def test_unknown_model_name_names_the_choices():
    with pytest.raises(ModelError, match="default"):
        create_model("no-such-model", device="cpu")


def test_tiny_model_embeds_unit_vectors_of_its_dimension():
    model, preprocess, tokenizer = create_model("tiny", device="cpu")
    with torch.inference_mode():
        img = model.encode_image(torch.randn(3, 3, 64, 64))
        txt = model.encode_text(tokenizer(["red shoes", "a very long text " * 50, "🍎 pomme"]))
    assert img.shape == (3, 64) and txt.shape == (3, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(txt[0], txt[2])


def test_random_init_is_deterministic_per_config():
    a, _, _ = create_model("tiny", device="cpu")
    b, _, _ = create_model("tiny", device="cpu")
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.image_tower.head.weight.add_(1e-3)
    assert a.fingerprint() != b.fingerprint()


def test_word_tokenizer_known_unknown_and_padding():
    tok = WordTokenizer.from_texts(["red shoes", "blue shoes"], num_buckets=16, context_length=8)
    assert tok.vocab[0] == "shoes"
    out = tok(["red shoes", "green"])
    assert out["input_ids"].shape == (2, 2)
    assert out["attention_mask"].tolist() == [[1, 1], [1, 0]]
    green = tok.encode("green")[0]
    assert green >= 2 + len(tok.vocab)  # hashed bucket, beyond the vocabulary
    assert WordTokenizer(tok.vocab, num_buckets=16).encode("green")[0] == green  # stable across instances
    assert len(tok.encode("x " * 100)) == 8


def test_checkpoint_round_trip_keeps_embeddings(tmp_path):
    model, preprocess, tokenizer = create_model("tiny", device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "mmsearch-checkpoint" and payload["config"]["name"] == "tiny"
    loaded, _, _ = create_model(str(path), device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encode_image(x), model.eval().encode_image(x))
        torch.testing.assert_close(loaded.encode_text(tokenizer(["a b c"])), model.encode_text(tokenizer(["a b c"])))
    assert loaded.fingerprint() == model.fingerprint()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ModelError, match="not an mmsearch checkpoint"):
        load_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(junk)


def test_residual_head_output_mix_with_the_zero_shot_start():
    """zero_shot_mix k: the head returns k * l2n(start) + (1 - k) * l2n(start + correction); k = 0 is the
    plain residual, and an untrained correction (zero) leaves the start's direction at any k."""
    from torch import nn

    from mmsearch.models.encoders import ResidualHead, l2n

    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    plain, mixed = ResidualHead(base, 6, 4), ResidualHead(base, 6, 4, keep=0.3)
    assert torch.allclose(l2n(mixed(x)), l2n(base(x)), atol=1e-6)  # zero-initialised correction
    for head in (plain, mixed):
        nn.init.normal_(head.mlp[-1].weight)
    mixed.mlp.load_state_dict(plain.mlp.state_dict())
    start, trained = l2n(base(x)), l2n(plain(x))
    assert torch.allclose(plain(x), base(x) + plain.mlp(x))
    assert torch.allclose(mixed(x), 0.3 * start + 0.7 * trained, atol=1e-6)
    assert not torch.allclose(l2n(mixed(x)), trained, atol=1e-3)
