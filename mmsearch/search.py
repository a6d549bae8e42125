"""SearchEngine: open an index, encode queries, fuse, search, and return hits with metadata."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import faiss
import numpy as np
import torch
from PIL import Image

from .config import RankingCfg
from .data import load_image
from .device import autocast
from .embed import encode_texts
from .errors import ImageDecodeError, IndexIncompatibleError, QueryError
from .factory import create_model, list_models
from .index import read_manifest, resolve_snapshot, sha256_file
from .preprocess import ResizeCropU8, normalize_batch
from .ranking import combine, text_part, top_k

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes | Image.Image


@dataclass
class SearchHit:
    rank: int
    id: str
    path: str
    score: float
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Channel:
    index: faiss.Index
    ids: np.ndarray  # (n,) item ids of the rows of ``vectors``
    vectors: np.ndarray  # (n, dim) float16
    row_of: dict[int, int]  # item id -> row

    def rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of item_ids present in this channel, their vectors as float32 (m, dim))."""
        rows = np.array([self.row_of.get(int(i), -1) for i in item_ids], dtype=np.int64)
        present = rows >= 0
        return present, self.vectors[rows[present]].astype(np.float32)


class SearchEngine:
    """A loaded index plus the model that built it.

    Example:
        >>> from mmsearch import SearchEngine                            # doctest: +SKIP
        >>> engine = SearchEngine.open("index")                          # doctest: +SKIP
        >>> hits = engine.search(image="photo.jpg", text="red shoes", k=5)   # doctest: +SKIP
        >>> hits[0].id, hits[0].score                                    # doctest: +SKIP
    """

    def __init__(self, path: str | Path, device: str = "auto", ranking: RankingCfg | None = None,
                 verify: bool = True):
        self.path = Path(path)
        self.device = device
        self.ranking = ranking or RankingCfg()
        self._verify = verify
        self.model = None
        self._load()

    @classmethod
    def open(cls, path: str | Path = "index", device: str = "auto", ranking: RankingCfg | None = None,
             verify: bool = True) -> "SearchEngine":
        """Open the index at ``path`` (an index folder or one snapshot) with the model that built it."""
        return cls(path, device=device, ranking=ranking, verify=verify)

    # ------------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        manifest = read_manifest(self.path)
        snap = Path(manifest["_snapshot"])
        if self._verify:
            for name, digest in manifest.get("files", {}).items():
                if not (snap / name).is_file() or sha256_file(snap / name) != digest:
                    raise IndexIncompatibleError(f"index file {snap / name} is missing or damaged (checksum "
                                                 f"mismatch); rebuild the index with `mmsearch index`")
        ref = manifest["model"]["ref"]
        model_ref = str(snap / ref) if ref not in list_models() else ref
        if ref not in list_models() and not Path(model_ref).is_file():
            raise IndexIncompatibleError(f"index {snap} was built with model {ref!r}, which this mmsearch "
                                         f"does not have (known: {', '.join(list_models())}); rebuild the index")
        if self.model is None or getattr(self, "_model_ref", None) != (model_ref, manifest["model"]["fingerprint"]):
            model, preprocess, tokenizer = create_model(model_ref, device=self.device)
            if model.fingerprint() != manifest["model"]["fingerprint"]:
                raise IndexIncompatibleError(
                    f"index {snap} was built with a different {manifest['model']['name']!r} model (fingerprint "
                    f"{manifest['model']['fingerprint']}, this install has {model.fingerprint()}); rebuild it "
                    f"with `mmsearch index CATALOG --out {self.path}`")
            self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
            self._model_ref = (model_ref, manifest["model"]["fingerprint"])
        with open(snap / "items.jsonl", encoding="utf-8") as fh:
            self.items = [json.loads(line) for line in fh]
        self.channels: dict[str, Channel] = {}
        for name, meta in manifest["channels"].items():
            ids = np.load(snap / meta["ids"])
            self.channels[name] = Channel(index=faiss.read_index(str(snap / meta["faiss"])), ids=ids,
                                          vectors=np.load(snap / meta["embeddings"], mmap_mode="r"),
                                          row_of={int(i): r for r, i in enumerate(ids)})
        self.manifest = manifest
        self.snapshot = snap

    def reload(self) -> bool:
        """Pick up a rebuilt index; returns True if the snapshot changed. The model is reused when the same."""
        if resolve_snapshot(self.path) == self.snapshot:
            return False
        self._load()
        return True

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------------------------ encoding
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _load_query_image(self, image: ImageInput) -> Image.Image:
        try:
            return load_image(image, draft_size=2 * self.model.cfg.image.resize_size)
        except ImageDecodeError as exc:
            where = f" {image}" if isinstance(image, (str, Path)) else ""
            raise QueryError(f"cannot read query image{where}: {exc}") from None

    def encode_image_channels(self, images: Sequence[ImageInput]) -> dict[str, np.ndarray]:
        """Per-channel unit embeddings of query images: ``image`` (n, D) and, if present, ``visual``."""
        # The batched fast path of embed.py: uint8 crops, one normalise, channels_last, autocast (issue 5).
        cfg = self.model.cfg.image
        u8 = torch.stack([ResizeCropU8(cfg)(self._load_query_image(im)) for im in images]).to(self._device())
        batch = normalize_batch(u8, cfg.mean, cfg.std, channels_last=True)
        self.model.image_tower.to(memory_format=torch.channels_last)  # layout only; a no-op after the first query
        with torch.inference_mode(), autocast(self._device()):
            return {k: v.float().cpu().numpy() for k, v in self.model.encode_image_channels(batch).items()}

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space; images as paths, bytes or PIL images."""
        return self.encode_image_channels(images)["image"]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space."""
        return encode_texts(self.model, self.tokenizer, list(texts))

    # ------------------------------------------------------------------------------------- ranking
    def _candidates(self, channel: str, queries: np.ndarray, n: int) -> np.ndarray:
        """(B, n) candidate item ids from one channel's FAISS index (-1 where fewer exist)."""
        ch = self.channels.get(channel)
        if ch is None or ch.index.ntotal == 0:
            return np.full((len(queries), 0), -1, np.int64)
        _, ids = ch.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, ch.index.ntotal))
        return ids

    def _sims(self, channel: str, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of candidates present in ``channel``, cosine similarity to q, 0 where absent)."""
        present, vecs = self.channels[channel].rows(cand)
        sims = np.zeros(len(cand), np.float32)
        sims[present] = vecs @ q
        return present, sims

    def search_vectors(self, image: dict[str, np.ndarray] | None, text: np.ndarray | None, k: int = 10,
                       image_weight: float | None = None) -> list[list[SearchHit]]:
        """Rank the index for already-encoded queries (B rows in each given array); see ranking.py."""
        if image is None and text is None:
            raise QueryError("a query needs an image, a text, or both")
        w = self.ranking.image_weight if image_weight is None else float(image_weight)
        if not 0.0 <= w <= 1.0:
            raise QueryError(f"image weight must be between 0 and 1, got {w}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        n_cand = max(self.ranking.candidates, 4 * k)
        learned = image is not None and text is not None and self.model.cfg.fusion != "sum" and 0.0 < w < 1.0
        if learned:
            with torch.inference_mode():
                fused = self.model.fuse(torch.from_numpy(image["image"]).to(self._device()),
                                        torch.from_numpy(text).to(self._device()), w).float().cpu().numpy()
        img_channel = "visual" if "visual" in self.channels and image is not None and "visual" in image else "image"
        batch = len(text) if text is not None else len(next(iter(image.values())))  # type: ignore[union-attr]
        pools = []
        if learned:
            pools.append(self._candidates("image", fused, n_cand))
        else:
            if image is not None:
                pools.append(self._candidates(img_channel, image[img_channel], n_cand))
            if text is not None:
                pools.append(self._candidates("image", text, n_cand))
                pools.append(self._candidates("text", text, n_cand))
        results = []
        for b in range(batch):
            cand = np.unique(np.concatenate([p[b] for p in pools]))
            cand = cand[cand >= 0]
            if learned:
                scores = self._sims("image", fused[b], cand)[1]
            else:
                ipart = self._sims(img_channel, image[img_channel][b], cand)[1] if image is not None else None
                tpart = None
                if text is not None:
                    txt_img = self._sims("image", text[b], cand)[1]
                    if "text" in self.channels:
                        has_text, txt_txt = self._sims("text", text[b], cand)
                    else:
                        has_text, txt_txt = np.zeros(len(cand), bool), np.zeros(len(cand), np.float32)
                    tpart = text_part(txt_img, txt_txt, has_text, self.ranking.item_text_weight)
                scores = combine(ipart, tpart, w)
            ids, best = top_k(scores, cand, k)
            results.append([self._hit(r, int(i), float(s)) for r, (i, s) in enumerate(zip(ids, best), 1)])
        return results

    def _hit(self, rank: int, item_id: int, score: float) -> SearchHit:
        row = self.items[item_id]
        return SearchHit(rank=rank, id=row["id"], path=row["path"], score=score, title=row.get("title", ""),
                         metadata=row.get("metadata", {}))

    def search(self, image: ImageInput | None = None, text: str | None = None, k: int = 10,
               image_weight: float | None = None) -> list[SearchHit]:
        """Search by photo, text, or both.

        Args:
            image: a path, raw bytes or a PIL image, or None.
            text: the query text, or None. Empty or whitespace-only text counts as no text.
            k: number of hits.
            image_weight: weight of the photo in a photo + text query (default 0.5); see ranking.py.

        Returns:
            Up to ``k`` :class:`SearchHit`, best first.
        """
        return self.search_batch([{"image": image, "text": text}], k=k, image_weight=image_weight)[0]

    def search_batch(self, queries: Iterable[dict[str, Any]], k: int = 10,
                     image_weight: float | None = None) -> list[list[SearchHit]]:
        """Many queries at once (``{"image": ..., "text": ...}`` each); results in the same order."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if q.get("image") is None and not (q.get("text") or "").strip():
                raise QueryError(f"query {i + 1} has neither an image nor a text")
        results: list[list[SearchHit] | None] = [None] * len(queries)
        # Group by query type so each group is one batched encode and one ranking pass.
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.get("image") is not None, bool((q.get("text") or "").strip())), []).append(i)
        for (has_img, has_txt), idx in groups.items():
            img = self.encode_image_channels([queries[i]["image"] for i in idx]) if has_img else None
            txt = self.encode_texts([queries[i]["text"] for i in idx]) if has_txt else None
            for i, hits in zip(idx, self.search_vectors(img, txt, k=k, image_weight=image_weight)):
                results[i] = hits
        return results  # type: ignore[return-value]
