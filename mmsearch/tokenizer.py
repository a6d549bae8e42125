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
    """A Hugging Face tokenizer loaded from a local folder, padded and truncated to ``context_length``."""

    def __init__(self, path: str, context_length: int = 64):
        from transformers import AutoTokenizer

        self.path = path
        self.context_length = context_length
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self.tok(list(texts), padding=True, truncation=True, max_length=self.context_length,
                       return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def state(self) -> dict:
        return {"kind": "hf", "context_length": self.context_length}
