"""Training: losses, fusions, the train entry point (CLI and API), resume, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.config import TrainCfg
from mmsearch.models.fusion import FUSIONS, build_fusion
from mmsearch.train.loop import TrainError, train
from mmsearch.train.loss import classification_loss, composed_loss, contrastive_loss
from mmsearch.train.splits import read_triplets

runner = CliRunner()


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    # One feature cache for the whole module (so extraction happens once), never the user's.
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "mmsearch-cache"))


def write_triplets(catalog: Path, rows: list[dict]) -> Path:
    path = catalog / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def catalog_ids(catalog: Path) -> list[str]:
    return [json.loads(line)["image"] for line in (catalog / "catalog.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ losses
def test_contrastive_loss_matches_hand_computed_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 10 * img @ txt.T = [[10, 6], [0, 8]]
    # image->text rows: [10, 6] (target 0), [0, 8] (target 1); text->image rows: [10, 0] (0), [6, 8] (1)
    i2t = (math.log(math.exp(10) + math.exp(6)) - 10 + math.log(1 + math.exp(8)) - 8) / 2
    t2i = (math.log(math.exp(10) + 1) - 10 + math.log(math.exp(6) + math.exp(8)) - 8) / 2
    assert contrastive_loss(img, txt, 10.0).item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)


def test_composed_loss_hand_value_and_duplicate_targets_masked():
    fused = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # logits = 5 * fused @ target.T = [[4, 0], [3, 5]]; targets on the diagonal
    expect = (math.log(math.exp(4) + 1) - 4 + math.log(math.exp(3) + math.exp(5)) - 5) / 2
    assert composed_loss(fused, target, 5.0).item() == pytest.approx(expect, rel=1e-5)
    # Both rows want the same image: the other copy is not a negative, so each row's loss is 0.
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    masked = composed_loss(same, same, 5.0, target_ids=torch.tensor([7, 7]))
    assert masked.item() == pytest.approx(0.0, abs=1e-6)
    assert composed_loss(same, same, 5.0).item() == pytest.approx(math.log(2), rel=1e-5)


def test_classification_loss_ignores_items_without_category():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, -1, 1])
    expect = ((math.log(math.exp(2) + 1) - 2) + (math.log(math.exp(5) + math.exp(-5)) + 5)) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(expect, rel=1e-5)
    none = classification_loss(logits, torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0


# ----------------------------------------------------------------------------------------------- fusions
@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_each_fusion_gives_unit_vectors_and_gradients(kind):
    torch.manual_seed(0)
    fusion = build_fusion(kind, 16)
    img = F.normalize(torch.randn(5, 16), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(5, 16), dim=-1).requires_grad_()
    out = fusion(img, txt, 0.5)
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    (out * torch.randn(5, 16)).sum().backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0  # both sides influence the query
    params = list(fusion.parameters())
    if kind == "sum":
        assert params == []
    else:
        assert params and all(p.grad is not None for p in params if p.requires_grad)
        assert sum(float(p.grad.abs().sum()) for p in params) > 0
        # the concat fusion's input is image dim + text dim
        if kind == "concat":
            assert fusion.mlp[0].in_features == 32


# ------------------------------------------------------------------------------------------------ train
def test_train_cli_one_epoch_smoke(small_catalog, tmp_path):
    from mmsearch import build_index, create_model

    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):  # two categories, so the classifier term is on too
        r["category"] = "shoes" if i < 6 else "other"
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = catalog_ids(small_catalog)
    trip = write_triplets(small_catalog, [{"reference": ids[0], "text": "in red", "target": ids[1]},
                                          {"reference": ids[2], "text": "for women", "target": ids[3]}])
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(small_catalog), "--model", "tiny", "--out", str(run), "--epochs", "1",
                              "--batch-size", "8", "--composed", str(trip), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Trained 1 epoch(s) on 12 pairs and 2 triplets" in res.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    assert m["epoch"] == 1 and all(math.isfinite(m[k]) for k in ("loss", "contrastive", "composed", "classify"))
    # The checkpoint is a model: it loads, differs from the fresh config, and indexes a catalog.
    trained, _, _ = create_model(str(run / "model.pt"), device="cpu")
    fresh, _, _ = create_model("tiny", device="cpu")
    assert trained.fingerprint() != fresh.fingerprint()
    head_t = trained.image_tower.head.weight
    assert not torch.allclose(head_t, fresh.image_tower.head.weight)
    torch.testing.assert_close(trained.image_tower.backbone.features[0].weight,
                               fresh.image_tower.backbone.features[0].weight)  # frozen backbone
    report = build_index(small_catalog, out=tmp_path / "idx", model=run / "model.pt", device="cpu",
                         num_workers=0, progress=False)
    assert report.indexed == 12


def test_training_lowers_the_loss_and_learns_pairs(small_catalog, tmp_path):
    from mmsearch import create_model
    from mmsearch.catalog.scan import scan_catalog
    from mmsearch.encode.pipeline import encode_image_files, encode_texts

    cfg = TrainCfg(epochs=60, batch_size=12, lr=1e-2, loss_classify=0.0, warmup_frac=0.0)
    rep = train(small_catalog, out=tmp_path / "run", model="tiny", cfg=cfg, device="cpu", progress=False)
    assert rep.metrics[-1]["contrastive"] < 0.5 * rep.metrics[0]["contrastive"]
    # Text -> image on the training pairs, through the real encoders: far above chance (1/12).
    items = scan_catalog(small_catalog)
    for name, floor in ((rep.checkpoint, 0.75), ("tiny", None)):
        model, preprocess, tok = create_model(str(name), device="cpu")
        img = encode_image_files(model, preprocess, [it.path for it in items], num_workers=0,
                                 progress=False).channels["image"]
        txt = encode_texts(model, tok, [it.title for it in items])
        r1 = float(((txt @ img.T).argmax(1) == range(len(items))).mean())
        if floor is not None:
            assert r1 >= floor
        else:
            assert r1 < 0.75  # the untrained model does not already do it


@pytest.mark.parametrize("mode", [{"epochs": 3}, {"epochs": 2, "aug_views": 2},
                                  {"epochs": 2, "unfreeze": 1, "aug_views": 1}],
                         ids=["frozen", "frozen-cached-views", "unfrozen-augmented"])
def test_resume_matches_uninterrupted_run(small_catalog, tmp_path, monkeypatch, mode):
    from mmsearch.train import loop as train_mod

    ids = catalog_ids(small_catalog)
    trip = write_triplets(small_catalog, [{"reference": ids[i], "text": f"edit {i}", "target": ids[i + 1]}
                                          for i in range(0, 10, 2)])
    # several steps per epoch, dropout in the fusion; with --unfreeze the backbones' trained blocks too
    cfg = TrainCfg(batch_size=5, fusion="combiner", **mode)

    def run(out, resume=False):
        return train(small_catalog, out=out, model="tiny", cfg=cfg, composed=trip, val=small_catalog,
                     device="cpu", resume=resume, progress=False)

    run(tmp_path / "full")
    # The same run killed during its second epoch, then resumed.
    real_epoch, calls = train_mod.run_epoch, []

    def dying_epoch(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(train_mod, "run_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split")
    monkeypatch.setattr(train_mod, "run_epoch", real_epoch)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    run(tmp_path / "split", resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], msg=k)
    ma = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in ma] == [json.loads(x)["loss"] for x in mb]


# ------------------------------------------------------------------------------------------- bad input
def test_triplets_with_unknown_id_or_bad_line_name_the_line(small_catalog, tmp_path):
    ids = catalog_ids(small_catalog)
    known = {i: n for n, i in enumerate(ids)}
    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"reference": ids[0], "text": "x", "target": ids[1]}) + "\n\n"
                   + json.dumps({"reference": "nope.webp", "text": "x", "target": ids[1]}) + "\n")
    with pytest.raises(TrainError, match=r"t\.jsonl:3: unknown reference id 'nope.webp'"):
        read_triplets(bad, known)
    bad.write_text('{"reference": "a"\n')
    with pytest.raises(TrainError, match=r"t\.jsonl:1: not valid JSON"):
        read_triplets(bad, known)
    bad.write_text(json.dumps({"reference": ids[0], "target": ids[1]}) + "\n")
    with pytest.raises(TrainError, match=r"t\.jsonl:1: expected"):
        read_triplets(bad, known)
    # through the CLI: one red line, exit 1, no run folder left behind
    res = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r"),
                              "--composed", str(bad), "--device", "cpu"])
    assert res.exit_code == 1
    assert "Error:" in res.output and "t.jsonl:1" in res.output
    assert not (tmp_path / "r" / "state.pt").exists()


def test_tiny_catalogs_and_textless_items(tmp_path, small_catalog):
    one = tmp_path / "one"
    one.mkdir()
    src = next(small_catalog.rglob("*.webp"))
    (one / "a.webp").write_bytes(src.read_bytes())
    (one / "a.txt").write_text("a thing\n")
    res = runner.invoke(app, ["train", str(one), "-m", "tiny", "--out", str(tmp_path / "r1"), "--device", "cpu"])
    assert res.exit_code == 1 and "at least 2" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["train", str(empty), "-m", "tiny", "--out", str(tmp_path / "r2"), "--device", "cpu"])
    assert res.exit_code == 1 and "no images" in res.output
    # Items without text are left out of the pair losses and counted.
    rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    for r in rows[:4]:
        r["title"] = ""
    (small_catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r3"),
                              "--epochs", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "on 8 pairs" in res.output and "4 item(s) without text" in res.output


def test_resume_and_rerun_guards(small_catalog, tmp_path):
    res = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r"),
                              "--resume", "--device", "cpu"])
    assert res.exit_code == 1 and "nothing to resume" in res.output
    ok = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r"),
                             "--epochs", "1", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r"),
                                "--epochs", "1", "--device", "cpu"])
    assert again.exit_code == 1 and "already holds a run" in again.output
    other = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r"),
                                "--epochs", "2", "--lr", "0.1", "--resume", "--device", "cpu"])
    assert other.exit_code == 1 and "same data and settings" in other.output


def test_frozen_bridge_has_nothing_to_train(small_catalog, tmp_path, monkeypatch):
    from mmsearch.config import ModelCfg
    from mmsearch.train import loop as train_mod

    # A config with fixed heads and the sum fusion: nothing but the temperature would learn.
    cfg = ModelCfg.from_json_file(Path(train_mod.__file__).parents[1] / "models" / "configs" / "tiny.json")
    cfg.image.head, cfg.text.head, cfg.embed_dim = "identity", "identity", 128
    cfg.text.width = 64  # bidirectional LSTM: 128-d, the CNN: 8 * 16 = 128-d
    monkeypatch.setattr(train_mod, "get_model_config", lambda name: cfg)
    monkeypatch.setattr(train_mod, "build_named_model", lambda name, with_weights=True: train_mod.build_model(cfg))
    with pytest.raises(TrainError, match="nothing to train"):
        train(small_catalog, out=tmp_path / "r", model="tiny", device="cpu", progress=False)


def test_named_config_loads_its_shipped_weights(small_catalog, tmp_path, monkeypatch):
    import dataclasses

    from mmsearch.errors import ModelError
    from mmsearch.models import factory

    rep = train(small_catalog, out=tmp_path / "run", model="tiny", cfg=TrainCfg(epochs=1, batch_size=6),
                device="cpu", progress=False)
    shipped = tmp_path / "weights"
    shipped.mkdir()
    (shipped / "tiny-trained.pt").write_bytes(rep.checkpoint.read_bytes())
    tiny = factory.get_model_config("tiny")
    monkeypatch.setattr(factory, "weights_dir", lambda: shipped)
    monkeypatch.setattr(factory, "get_model_config",
                        lambda name: dataclasses.replace(tiny, name=name, weights="tiny-trained.pt"))
    monkeypatch.setattr(factory, "list_models", lambda: ["tiny", "tiny-trained"])
    named, _, _ = factory.create_model("tiny-trained", device="cpu")
    trained, _, _ = factory.create_model(str(rep.checkpoint), device="cpu")
    torch.testing.assert_close(named.image_tower.head.weight, trained.image_tower.head.weight)
    fresh, _ = factory.build_named_model("tiny-trained", with_weights=False)
    assert not torch.allclose(fresh.image_tower.head.weight, trained.image_tower.head.weight)
    (shipped / "tiny-trained.pt").unlink()
    with pytest.raises(ModelError, match="needs weights tiny-trained.pt"):
        factory.create_model("tiny-trained", device="cpu")


@pytest.mark.slow
def test_shipped_default_has_trained_heads_and_retrains_from_the_bridge():
    from mmsearch.models.encoders import l2n
    from mmsearch.models.factory import build_named_model

    shipped, _ = build_named_model("default")
    fresh, _ = build_named_model("default", with_weights=False)
    bridge, _ = build_named_model("bridge")
    assert float(shipped.image_tower.head.mlp[-1].weight.detach().abs().sum()) > 0
    assert float(fresh.image_tower.head.mlp[-1].weight.detach().abs().sum()) == 0
    feats = torch.randn(3, shipped.image_tower.num_features)
    with torch.no_grad():
        # training from scratch starts exactly at the zero-shot bridge's embedding (the head's output is
        # normalised into the embedding; with zero_shot_mix its norm differs, its direction does not) ...
        torch.testing.assert_close(l2n(fresh.image_tower.head(feats)), l2n(bridge.image_tower.head(feats)))
        # ... and the shipped weights moved away from it
        assert not torch.allclose(l2n(shipped.image_tower.head(feats)), l2n(bridge.image_tower.head(feats)),
                                  atol=1e-3)
    assert shipped.fingerprint() != fresh.fingerprint()
