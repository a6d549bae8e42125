"""The BERT encoder of all-MiniLM-L6-v2 on plain torch ops, built from its ``config.json`` and loaded from
its ``model.safetensors``.

Why not transformers' ``BertModel``: importing its modelling code pulls in torch._dynamo,
torch.distributed.tensor, scipy and most of transformers, about 6 s of a 10 s cold start on 2 cores
(benchmarks/results/cold_start_cpu.md), for a forward pass of a dozen torch calls. The module tree and
parameter names are BertModel's, so the packaged weights load unchanged and the model fingerprint (which
hashes parameter names and values) stays what indexes built with BertModel recorded. The outputs equal
BertModel's (tests/test_cold_start.py compares them on padded batches).

Only what a sentence encoder needs: absolute positions, one segment, bidirectional attention, no cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BertCfg:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    pad_token_id: int = 0

    @classmethod
    def from_json_file(cls, path: str) -> "BertCfg":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("hidden_act", "gelu") != "gelu" or data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only gelu activations and absolute positions are supported")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Embeddings(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        # the same additions in the same order as BertModel: (words + segment 0) + positions
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings.weight[:length]
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, length, width = x.shape
        shape = (b, length, self.heads, width // self.heads)
        q, k, v = (lin(x).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))  # (B, H, L, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, length, width)


class AddNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BertSelfOutput and BertOutput."""

    def __init__(self, cfg: BertCfg, in_dim: int):
        super().__init__()
        self.dense = nn.Linear(in_dim, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class Pooler(nn.Module):
    """Unused by mean pooling; kept so the parameters (and the fingerprint) are BertModel's."""

    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class BertEncoder(nn.Module):
    """``forward(input_ids, attention_mask) -> last hidden state (B, L, H)``."""

    def __init__(self, cfg: BertCfg):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)

    @classmethod
    def from_folder(cls, path: str) -> "BertEncoder":
        """A model folder with ``config.json`` and ``model.safetensors`` (as transformers saves them)."""
        from safetensors.torch import load_file

        model = cls(BertCfg.from_json_file(os.path.join(path, "config.json")))
        state = load_file(os.path.join(path, "model.safetensors"))
        state.pop("embeddings.position_ids", None)  # a buffer older transformers versions saved
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L): True = attend
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x
