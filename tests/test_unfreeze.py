"""``train --unfreeze N``: which backbone weights train, what checkpoints carry, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.config import TrainCfg
from mmsearch.errors import ModelError
from mmsearch.train.loop import init_model, train
from mmsearch.train.unfreeze import backbone_blocks

runner = CliRunner()

# tiny: TinyCNN stages are features.{0,1,2} ... features.{9,10,11} (conv, bn, relu); the LSTM text
# backbone is embed -> lstm. --unfreeze 1 trains the last CNN stage and the LSTM.
LAST_CNN_STAGE = ("image_tower.backbone.features.9.", "image_tower.backbone.features.10.")
LSTM = ("text_tower.backbone.lstm.",)


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "mmsearch-cache"))


def backbone_params(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters() if ".backbone." in k}


def test_blocks_of_each_backbone():
    net, _, _ = init_model("tiny", TrainCfg(unfreeze=2))
    assert [n for n, _ in backbone_blocks(net.image_tower.backbone)] == [f"features.stage{i}" for i in range(4)]
    assert [n for n, _ in backbone_blocks(net.text_tower.backbone)] == ["embed", "lstm"]
    trains = {k for k, p in net.named_parameters() if ".backbone." in k and p.requires_grad}
    assert trains == {k for k, _ in net.named_parameters()
                      if k.startswith(("image_tower.backbone.features.6.", "image_tower.backbone.features.7.")
                                      + LAST_CNN_STAGE + ("text_tower.backbone.",))}
    with pytest.raises(ModelError, match="only 2 blocks"):
        init_model("tiny", TrainCfg(unfreeze=3))


def test_unfreeze_1_trains_exactly_the_last_blocks(small_catalog, tmp_path):
    from mmsearch import create_model
    from mmsearch.models.factory import build_named_model

    cfg = TrainCfg(epochs=2, batch_size=6, lr=1e-2, unfreeze=1, warmup_frac=0.0, backbone_lr_scale=0.5)
    rep = train(small_catalog, out=tmp_path / "run", model="tiny", cfg=cfg, device="cpu", progress=False)
    fresh, _ = build_named_model("tiny", with_weights=False)
    trained, _, _ = create_model(str(rep.checkpoint), device="cpu")
    before, after = backbone_params(fresh), backbone_params(trained)
    expected = {k for k in before if k.startswith(LAST_CNN_STAGE + LSTM)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected
    # batch norm keeps its statistics (eval mode), also inside the trained stage
    for k, v in fresh.state_dict().items():
        if "running_" in k:
            torch.testing.assert_close(trained.state_dict()[k], v, msg=k)
    ckpt = torch.load(rep.checkpoint, weights_only=True)
    rec = ckpt["trained_backbone"]
    assert rec["unfreeze"] == 1 and rec["image"] == ["features.stage3"] and rec["text"] == ["lstm"]
    assert set(rec["keys"]) == expected and expected <= set(ckpt["state_dict"])
    # A checkpoint that lost the trained backbone weights is refused instead of loading untrained ones.
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k not in expected}
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match="lack their weights"):
        create_model(str(tmp_path / "broken.pt"), device="cpu")


def test_unfrozen_step_gives_gradients_to_the_trained_blocks_only(small_catalog):
    from mmsearch.catalog.scan import scan_catalog
    from mmsearch.train.loss import contrastive_loss
    from mmsearch.train.splits import prepare_split
    from mmsearch.train.step import RawImages, StepModel
    from mmsearch.train.unfreeze import set_train_mode

    cfg = TrainCfg(unfreeze=1, aug_views=1)
    net, tok, _ = init_model("tiny", cfg)
    tr = prepare_split(small_catalog, net, tok, cfg, None, {}, augment=True, progress=False)
    assert tr.raw and tr.img is None and len(tr.items) == len(scan_catalog(small_catalog))
    for tower in (net.image_tower, net.text_tower):
        set_train_mode(tower.backbone, True)
    step = StepModel(net, None, raw=True)
    pos = tr.pair_pos[:6]
    images = RawImages(net, cfg)([tr.items[int(i)].path for i in pos], [tr.policies[int(i)] for i in pos])
    tokens = tok([tr.strings[tr.variants[r][0]] for r in range(6)])
    out = step(images, tokens)
    contrastive_loss(out["img"], out["txt"], out["scale"]).backward()
    got = {k for k, p in net.named_parameters() if ".backbone." in k and p.grad is not None
           and float(p.grad.abs().sum()) > 0}
    assert got == {k for k, _ in net.named_parameters() if k.startswith(LAST_CNN_STAGE + LSTM)}
    assert net.image_tower.backbone.features[10].training is False  # batch norm stays in eval mode


def test_unfreeze_cli_smoke_and_bad_value(small_catalog, tmp_path):
    from mmsearch import build_index

    ids = [json.loads(line)["image"] for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
    trip = small_catalog / "triplets.jsonl"
    trip.write_text(json.dumps({"reference": ids[0], "text": "in red", "target": ids[1]}) + "\n"
                    + json.dumps({"reference": ids[2], "text": "for women", "target": ids[3]}) + "\n")
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(run), "--epochs", "1",
                              "--batch-size", "6", "--unfreeze", "1", "--aug-views", "1", "--composed", str(trip),
                              "--val", str(small_catalog), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Trained 1 epoch(s) on 12 pairs and 2 triplets" in res.output
    m = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert m["composed"] > 0 and 0.0 <= m["val_recall"] <= 1.0
    report = build_index(small_catalog, out=tmp_path / "idx", model=run / "model.pt", device="cpu",
                         num_workers=0, progress=False)
    assert report.indexed == 12
    bad = runner.invoke(app, ["train", str(small_catalog), "-m", "tiny", "--out", str(tmp_path / "r2"),
                              "--unfreeze", "9", "--device", "cpu"])
    assert bad.exit_code == 1 and "--unfreeze 9" in bad.output and "only 4 blocks" in bad.output
    assert not (tmp_path / "r2" / "state.pt").exists()
