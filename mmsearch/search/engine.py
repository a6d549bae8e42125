"""SearchEngine: open an index, encode queries, fuse, search, and return hits with metadata."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import faiss
import numpy as np
from PIL import Image

from ..config import RankingCfg
from ..index import ann
from ..index.ann import IndexSpec
from ..errors import ImageDecodeError, IndexIncompatibleError, QueryError
from ..models.registry import list_models
from ..index.filters import WhereSpec, parse_where
from ..index.snapshot import read_manifest, resolve_snapshot, verify_snapshot
from .paging import Paging, arrange
from .ranking import combine, text_part, top_k
from ..index.store import ItemStore
from . import hybrid as _hybrid
from . import runtime as _runtime
from .filtercache import FilterCache
from ..models.crop import resize_crop_pil
from ..models.onnx import normalize_u8, tokenize_numpy

if TYPE_CHECKING:
    import torch

    from ..index.plan import BuildReport
    from ..models.dual_encoder import DualEncoder

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
    ids: np.ndarray  # (n,) item ids (fids) of the rows of ``vectors``, ascending
    vectors: np.ndarray  # (n, dim) float16, memory-mapped
    spec: IndexSpec

    def rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of item_ids present in this channel, their vectors as float32 (m, dim))."""
        item_ids = np.asarray(item_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), max(0, len(self.ids) - 1))
        present = (self.ids[pos] == item_ids) if len(self.ids) else np.zeros(len(item_ids), bool)
        return present, np.asarray(self.vectors[pos[present]], dtype=np.float32)


class _RankingSetting:
    """An engine attribute that reads and replaces one field of the engine's :class:`RankingCfg`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, engine: Any, owner: Any = None) -> Any:
        return getattr(RankingCfg if engine is None else engine.ranking, self.name)

    def __set__(self, engine: Any, value: Any) -> None:
        engine.ranking = dataclasses.replace(engine.ranking, **{self.name: value})


class SearchEngine:
    """A loaded index plus the model that built it.

    Example:
        >>> from mmsearch import SearchEngine                            # doctest: +SKIP
        >>> engine = SearchEngine.open("index")                          # doctest: +SKIP
        >>> hits = engine.search(image="photo.jpg", text="red shoes", k=5)   # doctest: +SKIP
        >>> hits[0].id, hits[0].score                                    # doctest: +SKIP
        >>> engine.search(text="shoes", where={"price": ("<", 50)})      # doctest: +SKIP
    """

    # RankingCfg's search settings, readable and settable on the engine as before
    exact_filter_max = _RankingSetting("exact_filter_max")
    filter_strategy = _RankingSetting("filter_strategy")
    overfetch_from = _RankingSetting("overfetch_from")

    def __init__(self, path: str | Path, device: str = "auto", ranking: RankingCfg | None = None,
                 verify: bool = True, runtime: str | None = None, lazy_model: bool = False):
        self.path = Path(path)
        self.device = device
        self._lazy_model = lazy_model  # the model opens at the first encode (list, export: never)
        self.runtime = runtime  # query encoders: auto | onnx | torch (models/onnx.py)
        self._filters = FilterCache()  # ids matching recent --where filters, per snapshot
        self.ranking = ranking or RankingCfg()
        self._verify = verify
        self.model: DualEncoder | None = None
        self._load()

    @classmethod
    def open(cls, path: str | Path = "index", device: str = "auto", ranking: RankingCfg | None = None,
             verify: bool = True, runtime: str | None = None, lazy_model: bool = False) -> "SearchEngine":
        """Open the index at ``path`` (an index folder or one snapshot) with the model that built it;
        ``runtime`` runs the query encoders in ``onnx`` (onnxruntime), ``torch`` or ``auto``;
        ``lazy_model``: open the model only when a query is first encoded (tools that only read items)."""
        return cls(path, device=device, ranking=ranking, verify=verify, runtime=runtime, lazy_model=lazy_model)

    def __getattr__(self, name: str) -> Any:
        deferred = self.__dict__.get("_deferred")
        if name in ("model", "preprocess", "tokenizer", "_ort") and deferred is not None:
            self.__dict__["_deferred"] = None
            self._open_model(*deferred)
            return self.__dict__[name]
        raise AttributeError(name)

    # ------------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        manifest = read_manifest(self.path)
        snap = Path(manifest["_snapshot"])
        if self._verify:
            verify_snapshot(snap, manifest)
        ref = manifest["model"]["ref"]
        model_ref = str(snap / ref) if ref not in list_models() else ref
        if ref not in list_models() and not Path(model_ref).is_file():
            raise IndexIncompatibleError(f"index {snap} was built with model {ref!r}, which this mmsearch "
                                         f"does not have (known: {', '.join(list_models())}); rebuild the index")
        key = (model_ref, manifest["model"]["fingerprint"])
        if self.__dict__.get("model") is None or getattr(self, "_model_ref", None) != key:
            if self._lazy_model:
                for name in ("model", "preprocess", "tokenizer", "_ort"):
                    self.__dict__.pop(name, None)
                self._deferred = (model_ref, manifest, key)
            else:
                self._open_model(model_ref, manifest, key)
        channels: dict[str, Channel] = {}
        for name, meta in manifest["channels"].items():
            spec = IndexSpec.from_dict(meta["spec"])
            channels[name] = Channel(index=ann.read(str(snap / meta["faiss"]), spec), ids=np.load(snap / meta["ids"]),
                                     vectors=np.load(snap / meta["embeddings"], mmap_mode="r"), spec=spec)
        old_store = getattr(self, "store", None)
        # swap everything at once so a search running in another thread sees one snapshot or the other
        self.store, self.channels, self.manifest, self.snapshot = (
            ItemStore.open(snap / "items.sqlite"), channels, manifest, snap)
        if old_store is not None:
            old_store.close()

    def _open_model(self, model_ref: str, manifest: dict[str, Any], key: tuple[str, str]) -> None:
        # the exported towers alone when they exist (no torch model load); else the torch model
        lean = _runtime.lean(key[1], self.runtime, self.device, lambda: self._torch_model(model_ref, manifest))
        if lean is not None:
            self.model, self.preprocess, self.tokenizer, self._ort = lean
        else:
            model, self.preprocess, self.tokenizer = self._torch_model(model_ref, manifest, with_parts=True)
            self.model = model
            self._ort = _runtime.ort_towers(model, key[1], self.runtime, self.device, self.tokenizer)
        self._model_ref = key

    def _torch_model(self, model_ref: str, manifest: dict[str, Any], with_parts: bool = False) -> Any:
        """The torch model that built the index (checked by fingerprint); with its preprocess and tokenizer."""
        import torch  # torch, transformers and the weights: only when the torch model is needed

        from ..models.factory import create_model

        model, preprocess, tokenizer = create_model(model_ref, device=self.device)
        if model.fingerprint() != manifest["model"]["fingerprint"]:
            raise IndexIncompatibleError(
                f"index {manifest['_snapshot']} was built with a different {manifest['model']['name']!r} model "
                f"(fingerprint {manifest['model']['fingerprint']}, this install has {model.fingerprint()}); "
                f"rebuild it with `mmsearch index CATALOG --out {self.path}`")
        # the batched query path feeds channels_last batches (layout only: same weights, same fingerprint)
        model.image_tower.to(memory_format=torch.channels_last)
        return (model, preprocess, tokenizer) if with_parts else model

    def reload(self) -> bool:
        """Pick up a rebuilt or updated index; True if the snapshot changed. The model is reused when the same.

        Until then the engine keeps answering from the snapshot it opened, even while another process
        writes the index (snapshots are immutable; the previous one is kept on disk).
        """
        if resolve_snapshot(self.path) == self.snapshot:
            return False
        self._load()
        return True

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def items(self) -> list[dict[str, Any]]:
        """Every item row (``fid``, ``id``, ``path``, ``title``, ``text``, ``metadata``), ordered by fid.

        Reads the whole item store: meant for listings and tools, not for the query path.
        """
        keys = ("fid", "id", "path", "title", "text", "metadata")
        rows = sorted(self.store.all_rows().values(), key=lambda r: r["fid"])
        return [{k: r[k] for k in keys} for r in rows]

    def select(self, where: WhereSpec) -> np.ndarray:
        """Sorted int64 ids (fids) of the items matching ``where`` (see filters.py for the forms)."""
        conditions = parse_where(where)
        self.store.check_fields(conditions)  # a filter on a field no item has is an error, not "no results"
        return self.store.select(conditions)

    # -------------------------------------------------------------------------------- writing
    def add(self, items: list[dict[str, Any]], **kw) -> "BuildReport":
        """Add or update items by id (``{"id", "image", "title", "text", "metadata"}``), then reload."""
        from ..index.build import upsert_items

        report = upsert_items(self.path, items, device=self.device, **kw)
        self.reload()
        return report

    update = add

    def remove(self, ids: Sequence[str], **kw) -> "BuildReport":
        """Remove items by id (all must exist), then reload."""
        from ..index.build import remove_items

        report = remove_items(self.path, ids, **kw)
        self.reload()
        return report

    # ------------------------------------------------------------------------------------ encoding
    def _device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def _load_query_image(self, image: ImageInput) -> Image.Image:
        try:
            from ..catalog.images import load_image

            return load_image(image, draft_size=2 * self.model.cfg.image.resize_size)
        except ImageDecodeError as exc:
            where = f" {image}" if isinstance(image, (str, Path)) else ""
            raise QueryError(f"cannot read query image{where}: {exc}") from None

    def encode_image_channels(self, images: Sequence[ImageInput]) -> dict[str, np.ndarray]:
        """Per-channel unit embeddings of query images: ``image`` (n, D) and, if present, ``visual``."""
        # The batched fast path of embed.py: uint8 crops, one normalise, channels_last, autocast (issue 5).
        cfg = self.model.cfg.image
        if getattr(self, "_ort", None) is not None and "image" in self._ort.sessions:
            u8n = np.stack([np.asarray(resize_crop_pil(self._load_query_image(im).convert("RGB"), cfg.resize_size,
                                                       cfg.image_size, geometry=cfg.geometry, pad_color=cfg.pad_color))
                            .transpose(2, 0, 1) for im in images])  # (B, 3, S, S)
            return self._ort.image_channels(normalize_u8(u8n, cfg.mean, cfg.std))
        import torch

        from ..models.device import autocast
        from ..models.preprocess import ResizeCropU8, normalize_batch

        u8 = torch.stack([ResizeCropU8(cfg)(self._load_query_image(im)) for im in images]).to(self._device())
        batch = normalize_batch(u8, cfg.mean, cfg.std, channels_last=True)
        with torch.inference_mode(), autocast(self._device()):
            return {k: v.float().cpu().numpy() for k, v in self.model.encode_image_channels(batch).items()}

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space; images as paths, bytes or PIL images."""
        return self.encode_image_channels(images)["image"]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space."""
        if getattr(self, "_ort", None) is not None and "text" in self._ort.sessions and len(texts):
            return self._ort.text(*tokenize_numpy(self.tokenizer, list(texts)))
        from ..encode.pipeline import encode_texts

        return encode_texts(self.model, self.tokenizer, list(texts))

    # ------------------------------------------------------------------------------------- ranking
    def _candidates(self, channel: str, queries: np.ndarray, n: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """(B, n) candidate item ids from one channel's FAISS index (-1 where fewer exist), among ``allowed``."""
        ch = self.channels.get(channel)
        if ch is None or ch.index.ntotal == 0:
            return np.full((len(queries), 0), -1, np.int64)
        if allowed is not None:
            allowed = self._filters.in_channel(channel, allowed, ch.ids)
            if not len(allowed):
                return np.full((len(queries), 0), -1, np.int64)
            strategy = self.filter_strategy
            if strategy == "auto":
                strategy = "overfetch" if len(allowed) >= self.overfetch_from * ch.index.ntotal else "selector"
            selector = None
            if strategy == "selector":  # built once per filter and channel, not per query
                ids = allowed
                selector = self._filters.attached(ids, f"channel:{channel}", f"selector:{channel}",
                                                  lambda: ann.id_selector(ids))
            return ann.filtered_search(ch.index, queries, n, allowed, ch.spec.params, strategy, selector)
        _, ids = ch.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, ch.index.ntotal))
        return ids

    def _sims(self, channel: str, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of candidates present in ``channel``, cosine similarity to q, 0 where absent)."""
        present, vecs = self.channels[channel].rows(cand)
        sims = np.zeros(len(cand), np.float32)
        sims[present] = vecs @ q
        return present, sims

    def search_vectors(self, image: dict[str, np.ndarray] | None, text: np.ndarray | None, k: int = 10,
                       image_weight: float | None = None, where: WhereSpec = None,
                       boost: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[list[SearchHit]]:
        """Rank the index for already-encoded queries (B rows in each given array); see ranking.py.

        With ``where``, every hit satisfies the filter and k hits come back whenever k items match:
        few matches are scored exhaustively; otherwise FAISS searches only matching ids, and a query
        for which the approximate index finds fewer than k falls back to an exact scan of the matches.
        """
        if image is None and text is None:
            raise QueryError("a query needs an image, a text, or both")
        w = self.ranking.image_weight if image_weight is None else float(image_weight)
        if not 0.0 <= w <= 1.0:
            raise QueryError(f"image weight must be between 0 and 1, got {w}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        learned = image is not None and text is not None and self.model.cfg.fusion != "sum" and 0.0 < w < 1.0
        fused = None
        if learned:
            import torch

            with torch.inference_mode():
                fused = self.model.fuse(torch.from_numpy(image["image"]).to(self._device()),
                                        torch.from_numpy(text).to(self._device()), w).float().cpu().numpy()
        img_channel = "visual" if "visual" in self.channels and image is not None and "visual" in image else "image"
        batch = len(text) if text is not None else len(next(iter(image.values())))  # type: ignore[union-attr]
        allowed = self._filters.allowed(self.snapshot, where, self.select) if where is not None else None
        with _runtime.faiss_threads(batch):  # batch-1 searches on one thread (no barrier on a busy CPU)
            cands = self.candidates(image, text, fused, img_channel, batch, k, allowed)
        extra: list[Any] = [0.0] * batch
        if boost is not None:  # hybrid: keyword matches join the candidates and add their bonus (hybrid.py)
            cands = [np.union1d(c, f if allowed is None else f[np.isin(f, allowed)]) for c, (f, _) in zip(cands, boost)]
            tw = 1.0 - w if image is not None else 1.0  # the bonus belongs to the text part
            extra = [tw * _hybrid.bonus_of(c, *bo) for c, bo in zip(cands, boost)]
        results = [top_k(self.score(image, text, fused, img_channel, b, cand, w) + extra[b], cand, k)
                   for b, cand in enumerate(cands)]
        rows = self.store.rows(np.unique(np.concatenate([ids for ids, _ in results] + [np.zeros(0, np.int64)])))
        return [[self._hit(r, rows[int(i)], float(s)) for r, (i, s) in enumerate(zip(ids, best), 1)]
                for ids, best in results]

    def candidates(self, image: dict[str, np.ndarray] | None, text: np.ndarray | None, fused: np.ndarray | None,
                   img_channel: str, batch: int, k: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        """Per query, the item ids (fids) to score exactly: the union of the channels' FAISS candidates
        (the fused query's when ``fused`` is given), or every allowed item when a filter leaves few."""
        n_cand = max(self.ranking.candidates, 4 * k)
        exhaustive = allowed is not None and len(allowed) <= max(self.exact_filter_max, n_cand)
        pools = []
        if exhaustive:
            pass  # every matching item is a candidate
        elif fused is not None:
            pools.append(self._candidates("image", fused, n_cand, allowed))
        else:
            if image is not None:
                pools.append(self._candidates(img_channel, image[img_channel], n_cand, allowed))
            if text is not None:
                pools.append(self._candidates("image", text, n_cand, allowed))
                pools.append(self._candidates("text", text, n_cand, allowed))
        out = []
        for b in range(batch):
            if exhaustive:
                cand = allowed
            else:
                cand = np.unique(np.concatenate([p[b] for p in pools]))
                cand = cand[cand >= 0]
                if allowed is not None and len(cand) < min(k, len(allowed)):
                    cand = allowed  # the approximate index missed matches: score them all exactly
            out.append(cand)
        return out

    def score(self, image: dict[str, np.ndarray] | None, text: np.ndarray | None, fused: np.ndarray | None,
              img_channel: str, b: int, cand: np.ndarray, w: float) -> np.ndarray:
        """Exact scores of query ``b`` for the candidates ``cand`` (see ranking.py for how parts combine)."""
        if fused is not None:
            return self._sims("image", fused[b], cand)[1]
        ipart = self._sims(img_channel, image[img_channel][b], cand)[1] if image is not None else None
        tpart = None
        if text is not None:
            txt_img = self._sims("image", text[b], cand)[1]
            if "text" in self.channels:
                has_text, txt_txt = self._sims("text", text[b], cand)
            else:
                has_text, txt_txt = np.zeros(len(cand), bool), np.zeros(len(cand), np.float32)
            tpart = text_part(txt_img, txt_txt, has_text, self.ranking.item_text_weight)
        return combine(ipart, tpart, w)

    def search_similar(self, item_id: str | Sequence[str], text: str | None = None, k: int = 10,
                       image_weight: float | None = None, where: WhereSpec = None, *,
                       not_ids: Sequence[str] = ()) -> list[SearchHit]:
        """"More like this": items whose images resemble item ``item_id``'s stored embedding (the item
        itself is left out); ``text`` steers the results as in a photo + text query.

        "More like these": with a list of ids and/or ``not_ids`` (items the results should not look like),
        the liked and disliked items are terms of one algebra query (compose.similar_to_items); every
        given item is left out of the hits.
        """
        from .compose import similar_to_item, similar_to_items

        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if isinstance(item_id, str) and not not_ids:
            return similar_to_item(self, item_id, text, k, image_weight, where)
        return similar_to_items(self, [item_id] if isinstance(item_id, str) else list(item_id), list(not_ids),
                                text=text, k=k, where=where)

    @staticmethod
    def _hit(rank: int, row: dict[str, Any], score: float) -> SearchHit:
        return SearchHit(rank=rank, id=row["id"], path=row["path"], score=score, title=row.get("title", ""),
                         metadata=row.get("metadata", {}))

    def search(self, image: Any = None, text: Any = None, k: int = 10,
               image_weight: float | None = None, where: WhereSpec = None, *,
               not_image: Any = None, not_text: Any = None, min_score: float | None = None,
               sort_by: str | None = None, descending: bool = False, offset: int | None = None,
               window: int = 200, mode: str | None = None) -> list[SearchHit]:
        """Search by photo, text, or both; or by any number of weighted photos and texts (algebra.py).

        Args:
            image: a path, raw bytes or a PIL image, or None; or a list of them, each optionally
                ``(weight, image)``.
            text: the query text, or None. Empty or whitespace-only text counts as no text. Or a list
                of texts, each optionally ``(weight, text)``.
            not_image, not_text: photos / texts the results should not look like (negative terms).
            k: number of hits.
            image_weight: weight of the photo in a photo + text query (default 0.5); see ranking.py.
            where: metadata filter: ``{"category": "shoes", "price": ("<", 50)}``, ``["price<50"]`` or
                ``"brand!=acme"`` (see filters.py); every hit satisfies it.
            min_score: leave out hits scoring below this (scores: README "How ranking works").
            sort_by, descending: order the best ``window`` hits by ``score``, ``id``, ``title`` or a
                metadata field instead of by score (paging.py).
            offset: skip this many hits of the ordered window (stable pages: ``offset=0, 10, 20 ...``).
            mode: ``auto`` (default), ``hybrid``, ``semantic`` or ``keyword`` (hybrid.py).

        Returns:
            Up to ``k`` :class:`SearchHit`, best first.
        """
        paging = Paging(offset, min_score, sort_by, descending, window)
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        n = paging.fetch(k)
        if isinstance(image, (list, tuple)) or isinstance(text, (list, tuple)) or not_image or not_text:
            from .algebra import terms_of
            from .compose import search_terms

            hits = search_terms(self, terms_of(image, text, not_image, not_text), k=n, image_weight=image_weight,
                                where=where, mode=mode)
        else:
            hits = self.search_batch([{"image": image, "text": text}], k=n, image_weight=image_weight,
                                     where=where, mode=mode)[0]
        return arrange(hits, k, paging)

    def search_batch(self, queries: Iterable[dict[str, Any]], k: int = 10, image_weight: float | None = None,
                     where: WhereSpec = None, mode: str | None = None) -> list[list[SearchHit]]:
        """Many queries at once (``{"image": ..., "text": ...}`` each); results in the same order.
        ``mode``: auto (default), hybrid, semantic or keyword (hybrid.py)."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if q.get("image") is None and not (q.get("text") or "").strip():
                raise QueryError(f"query {i + 1} has neither an image nor a text")
            if isinstance(q.get("text"), str) and not q["text"].isascii():
                try:
                    q["text"].encode("utf-8")
                except UnicodeEncodeError:  # undecodable bytes of a command line, a lone surrogate
                    raise QueryError(f"query {i + 1}: the text is not valid UTF-8") from None
        results: list[list[SearchHit] | None] = [None] * len(queries)
        # Group by query type so each group is one batched encode and one ranking pass.
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.get("image") is not None, bool((q.get("text") or "").strip())), []).append(i)
        for (has_img, has_txt), idx in groups.items():
            titled = "text" in self.channels and len(self.channels["text"].ids) > 0  # items with title or text
            how = _hybrid.resolve_mode(mode, has_txt, has_txt and not has_img and titled)
            texts = [queries[i].get("text") for i in idx]
            if how == "keyword":
                for i, t in zip(idx, texts):
                    results[i] = _hybrid.keyword_hits(self, t, k, where)
                continue
            boost = _hybrid.boosts(self, texts, self.ranking.keyword_weight, self.ranking.keyword_candidates) \
                if how == "hybrid" else None
            img, txt = _runtime.both(  # photo and text encoders at once (the text one in a helper thread)
                lambda: self.encode_texts([queries[i]["text"] for i in idx]) if has_txt else None,
                lambda: self.encode_image_channels([queries[i]["image"] for i in idx]) if has_img else None,
                concurrent=has_img and has_txt and _runtime.concurrent_towers())[::-1]
            for i, hits in zip(idx, self.search_vectors(img, txt, k=k, image_weight=image_weight, where=where,
                                                        boost=boost)):
                results[i] = hits
        return results  # type: ignore[return-value]
