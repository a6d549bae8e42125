"""The artifacts the package ships (mmsearch/models/shipped.py) match what they were made from.

When one of these fails after a config or checkpoint change, regenerate them: the message names the command.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mmsearch.models import classnames, shipped


def test_shipped_class_embeddings_match_the_prompts_of_every_bridge_config():
    problems = shipped.stale()
    assert not problems, "shipped artifacts are stale; run `" + shipped.REGENERATE + "`:\n" + "\n".join(problems)
    assert set(shipped.bridge_models()) >= {"default", "bridge"}


def test_shipped_class_embeddings_equal_a_recomputation_of_some_classes():
    keys = shipped.class_embedding_keys()
    name = "default"
    emb = classnames.class_embeddings(keys[name], 1000)
    assert emb is not None and emb.dtype == np.float16 and emb.shape == (1000, 384)
    classes = [0, 1, 417, 999]
    again = shipped.compute_class_embeddings(name, classes)
    np.testing.assert_allclose(emb[classes].astype(np.float32), again, atol=2e-3, rtol=0,
                               err_msg=f"stale shipped class embeddings: run `{shipped.REGENERATE}`")


def test_the_model_uses_the_shipped_file_and_computes_nothing(tmp_path, monkeypatch):
    from mmsearch.models.factory import imagenet_class_text_embeddings

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    cfg = shipped.builtin_config("default")

    class NoCompute:
        cfg = SimpleNamespace(backbone="minilm")

        def __call__(self, batch):
            raise AssertionError("computed the class embeddings although they are shipped")

    emb = imagenet_class_text_embeddings(NoCompute(), None, cfg.image.bridge_template,
                                         tuple(cfg.image.bridge_templates), cfg.image.bridge_synonyms)
    assert tuple(emb.shape) == (1000, 384) and str(emb.dtype) == "torch.float32"
    assert not list(tmp_path.iterdir())  # nothing computed, nothing cached


def test_other_prompts_are_not_answered_by_the_shipped_file(tmp_path, monkeypatch):
    from mmsearch.models.factory import imagenet_class_text_embeddings

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    calls = []

    class Counting:
        cfg = SimpleNamespace(backbone="minilm")

        def __call__(self, batch):
            import torch

            calls.append(len(batch))
            return torch.ones(len(batch), 4)

    emb = imagenet_class_text_embeddings(Counting(), lambda texts: texts, "a sketch of a {}.")
    assert calls and tuple(emb.shape) == (1000, 4)  # computed: the key of these prompts is not shipped
    assert list(tmp_path.glob("imagenet_text_*.pt"))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


# ------------------------------------------------------------------------------------ ONNX graphs
def test_every_builtin_model_has_a_current_fingerprint_record_and_graphs():
    problems = shipped.stale_models()
    assert not problems, "shipped models are stale; run `" + shipped.REGENERATE + "`:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["default", "bridge"])
def test_shipped_graphs_compute_what_the_checkpoint_computes(name, sample_catalog):
    torch = pytest.importorskip("torch")
    from mmsearch.encode.lean import _decode
    from mmsearch.models import graphs, known
    from mmsearch.models.factory import create_model
    from mmsearch.models.onnx import normalize_u8, tokenize_numpy

    model, _, tokenizer = create_model(name, device="cpu")
    fp = model.fingerprint()
    assert known.lookup(name).fingerprint == fp, f"stale fingerprint record: run `{shipped.REGENERATE}`"
    entry = graphs.entry_for(fp)
    assert entry is not None, f"no shipped graphs for {name} ({fp}): run `{shipped.REGENERATE}`"
    towers = graphs.ShippedTowers(entry, threads=1)
    icfg = model.cfg.image
    paths = [sample_catalog / p for p in ("clothing/running_shoe.webp", "vehicle/taxi.webp", "food/lemon.webp")]
    u8 = np.stack([_decode(str(p), icfg) for p in paths])
    x = normalize_u8(u8, icfg.mean, icfg.std)
    got = towers.image_channels(x)
    with torch.inference_mode():
        want = model.encode_image_channels(torch.from_numpy(x))
    for ch in want:  # float16 weights, float32 arithmetic
        cos = (got[ch] * want[ch].numpy()).sum(1)
        assert cos.min() > 0.9999, (name, ch, cos)
    texts = ["red shoes", "a yellow taxi in the city", "lemon"]
    tok = graphs.tokenizer_for(entry)
    ids, mask = tokenize_numpy(tok, texts)
    ref_ids = tokenizer(texts)["input_ids"].numpy()
    assert (ids == ref_ids).all()  # the shipped tokenizer files are MiniLM's
    with torch.inference_mode():
        want_t = model.encode_text(tokenizer(texts)).numpy()
    cos = (towers.text(ids, mask) * want_t).sum(1)
    assert cos.min() > 0.9999, cos
