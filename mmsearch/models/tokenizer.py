"""Text tokenizers with one call shape: ``tok(texts) -> {"input_ids", "attention_mask"}`` (B, L) tensors."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Iterable

import torch

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)

PAD, UNK = 0, 1


class WordTokenizer:
    """Word-level tokenizer for the LSTM text tower.

    Known words map to their vocabulary index; unknown words are hashed (crc32, stable across runs)
    into ``num_buckets`` extra ids, so a random-init model still tells unseen words apart.
    Lower-cased; punctuation marks are tokens of their own.
    """

    def __init__(self, vocab: list[str] | None = None, num_buckets: int = 4096, context_length: int = 64):
        self.vocab = list(vocab or [])
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}  # 0 = pad, 1 = unused (kept for UNK)
        self.num_buckets = num_buckets
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return 2 + len(self.vocab) + self.num_buckets

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int = 20000, min_count: int = 1, **kw) -> "WordTokenizer":
        counts = Counter(w for t in texts for w in _WORD.findall(t.lower()))
        vocab = [w for w, c in counts.most_common(max_size) if c >= min_count]
        return cls(vocab, **kw)

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in _WORD.findall(text.lower())[: self.context_length]:
            i = self.index.get(w)
            if i is None:
                i = 2 + len(self.vocab) + zlib.crc32(w.encode("utf-8")) % self.num_buckets
            ids.append(i)
        return ids or [UNK]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        seqs = [self.encode(t) for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def state(self) -> dict:
        return {"kind": "word", "vocab": self.vocab, "num_buckets": self.num_buckets,
                "context_length": self.context_length}


class HFTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json`` in a local folder), padded to the longest text
    of the batch and truncated to ``context_length``.

    Uses the ``tokenizers`` library directly: the same tokens as ``transformers.AutoTokenizer`` (tested),
    without the seconds AutoTokenizer spends resolving its class at start-up.
    """

    def __init__(self, path: str, context_length: int = 64):
        import os

        from tokenizers import Tokenizer

        self.path = path
        self.context_length = context_length
        self.tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tok.enable_truncation(max_length=context_length)
        pad = self.tok.padding or {}
        self.tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                pad_token=pad.get("pad_token", "[PAD]"))  # no length: pad to the longest

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tok.encode_batch([str(t) for t in texts])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def state(self) -> dict:
        return {"kind": "hf", "context_length": self.context_length}
