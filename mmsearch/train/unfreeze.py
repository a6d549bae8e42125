"""Which backbone blocks train under ``mmsearch train --unfreeze N``: the last N blocks of each backbone.

Blocks, first to last:

- ``efficientnet_lite0`` (8): the 7 stages ``net.blocks.0`` ... ``net.blocks.6``, then the 1x1 head
  convolution (``conv_head`` + ``bn2``, 320 -> 1280 channels); ``--unfreeze 1`` trains the head
  convolution only. The ImageNet classifier is never a block: the zero-shot bridge head uses it as is.
- ``tiny_cnn`` (4): its four conv + batch-norm stages.
- ``minilm`` (6): its transformer layers (the embeddings stay frozen; the pooler is unused).
- ``lstm`` (2): the word embedding, then the LSTM (all its layers, both directions).

Batch-norm layers keep their pretraining statistics (eval mode) even inside trained blocks: small
training batches would otherwise overwrite them. Their scale and shift still train, and dropout is on
in trained blocks only (:func:`set_train_mode`).
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelError
from ..models.encoders import LSTMText, MiniLM, TinyCNN


def backbone_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the backbone's blocks in forward order; names are relative to the backbone."""
    if isinstance(backbone, TinyCNN):
        layers = list(backbone.features)
        return [(f"features.stage{i // 3}", nn.ModuleList(layers[i:i + 3])) for i in range(0, len(layers), 3)]
    if isinstance(backbone, MiniLM):
        return [(f"net.encoder.layer.{i}", layer) for i, layer in enumerate(backbone.net.encoder.layer)]
    if isinstance(backbone, LSTMText):
        return [("embed", backbone.embed), ("lstm", backbone.lstm)]
    net = getattr(backbone, "net", None)
    if net is not None and hasattr(net, "blocks") and hasattr(net, "conv_head"):  # EfficientNet (timm)
        return [(f"net.blocks.{i}", b) for i, b in enumerate(net.blocks)] + \
            [("net.conv_head+bn2", nn.ModuleList([net.conv_head, net.bn2]))]
    raise ModelError(f"--unfreeze does not know the blocks of {type(backbone).__name__}")


def unfreeze_last(backbone: nn.Module, n: int) -> list[str]:
    """Freeze ``backbone``, then make its last ``n`` blocks trainable; returns the trained blocks' names.
    ``n`` larger than the number of blocks is an error (it would silently mean "everything")."""
    blocks = backbone_blocks(backbone)
    if n > len(blocks):
        raise ModelError(f"--unfreeze {n}: the {type(backbone).__name__} backbone has only {len(blocks)} blocks")
    for p in backbone.parameters():
        p.requires_grad_(False)
    chosen = blocks[len(blocks) - n:] if n else []
    for _, block in chosen:
        for p in block.parameters():
            p.requires_grad_(True)
    return [name for name, _ in chosen]


def set_train_mode(backbone: nn.Module, training: bool) -> None:
    """Train mode (dropout on) only for the blocks that train; batch norm always uses stored statistics."""
    backbone.eval()
    if not training:
        return
    for _, block in backbone_blocks(backbone):
        params = list(block.parameters())
        if params and all(p.requires_grad for p in params):
            block.train()
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trained_keys(prefix: str, backbone: nn.Module) -> list[str]:
    """state_dict keys (with ``prefix``) of the backbone's trainable parameters."""
    return [f"{prefix}{name}" for name, p in backbone.named_parameters() if p.requires_grad]


def trained_blocks(backbone: nn.Module) -> list[str]:
    """Names of the blocks whose parameters all train (what :func:`unfreeze_last` chose)."""
    return [name for name, block in backbone_blocks(backbone)
            if list(block.parameters()) and all(p.requires_grad for p in block.parameters())]


def trained_backbone_record(net: nn.Module, n: int) -> dict | None:
    """What a checkpoint records about unfrozen backbones (None when both are frozen)."""
    if n == 0:
        return None
    return {"unfreeze": n, "image": trained_blocks(net.image_tower.backbone),
            "text": trained_blocks(net.text_tower.backbone),
            "keys": trained_keys("image_tower.backbone.", net.image_tower.backbone)
            + trained_keys("text_tower.backbone.", net.text_tower.backbone)}
