"""Backbone feature cache: with frozen backbones, pooled features are computed once per file (or text)
and training epochs only run the heads and the fusion.

Image features are keyed by (backbone fingerprint, preprocessing, sha256 of the file bytes); text
features by (backbone fingerprint, sha256 of the text). One ``.pt`` file per backbone under
``$MMSEARCH_CACHE/features/`` (default ``~/.cache/mmsearch``), rewritten atomically; a damaged cache is
rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..catalog.images import CatalogDataset, collate_images, load_image
from ..config import to_dict
from ..dist.env import DistEnv, all_gather_objects
from ..fsutil import atomic_write
from ..models.device import autocast
from ..models.dual_encoder import DualEncoder
from ..models.factory import Preprocess, Tokenizer, cache_dir

if TYPE_CHECKING:
    from .augment import Policy

log = logging.getLogger(__name__)


FEATURE_FIELDS = ("backbone", "image_size", "resize_size", "mean", "std", "width", "geometry", "pad_color")


def module_fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


class FeatureStore:
    """A dict ``key -> (F,) float32 tensor`` persisted in one file."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, torch.Tensor] = {}
        if path.exists():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                self.data = dict(zip(payload["keys"], payload["feats"].unbind(0)))
            except Exception as exc:  # an accelerator only: rebuild when damaged
                log.warning("ignoring unreadable feature cache %s: %s", path, exc)

    def save(self) -> None:
        if not self.data:
            return
        keys = sorted(self.data)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"keys": keys, "feats": torch.stack([self.data[k] for k in keys])}
            atomic_write(self.path, lambda tmp: torch.save(payload, tmp), durable=False)
        except OSError as exc:
            log.warning("could not write feature cache %s: %s", self.path, exc)


def _gather_shares(store: FeatureStore, env: DistEnv, share: dict[int, str | None], extra, what: str,
                   save: bool) -> list:
    """Under torchrun: every rank sends the features of its share (``share``: position -> key) and
    ``extra``, so all ranks end with all features; rank 0 alone writes the cache file (no two ranks
    write one file). Features travel through the process group, not the file system, so ranks on other
    machines need no shared cache folder. Returns every rank's (share, extra)."""
    known = len(store.data)
    feats = {k: store.data[k] for k in share.values() if k is not None and k in store.data}
    parts = all_gather_objects((share, feats, extra), env, what)
    for _, rank_feats, _ in parts:
        store.data.update(rank_feats)
    if save and env.is_main and len(store.data) > known:
        store.save()
    return [(rank_share, rank_extra) for rank_share, _, rank_extra in parts]


def _image_store(model: DualEncoder, use_cache: bool) -> FeatureStore:
    """The image-feature cache of this backbone and image config (an empty, unsaved one without cache)."""
    if not use_cache:
        return FeatureStore(Path(os.devnull) / "none")
    # only what changes the backbone's output: heads and bridge prompts share one cache
    icfg = json.dumps({k: v for k, v in to_dict(model.cfg.image).items() if k in FEATURE_FIELDS}, sort_keys=True)
    return FeatureStore(cache_dir() / "features" / f"image-{module_fingerprint(model.image_tower.backbone, icfg)}.pt")


def image_features(model: DualEncoder, preprocess: Preprocess, paths: list[str], batch_size: int = 32,
                   num_workers: int = 0, progress: bool = True, use_cache: bool = True, env: DistEnv | None = None,
                   ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Pooled image-backbone features of ``paths``: ((n_ok, F) float32, ok positions, [(position, reason)]).

    env: under torchrun, rank r hashes and extracts ``paths[r::world]`` only; the features are then
    exchanged (every rank returns the same result) and rank 0 writes the cache.
    """
    env = env or DistEnv()
    backbone = model.image_tower.backbone
    store = _image_store(model, use_cache)
    mine = list(range(env.rank, len(paths), env.world_size))
    digests: list[str | None] = [None] * len(paths)
    for i in mine:
        digests[i] = _file_digest(paths[i])
    todo = [i for i in mine if digests[i] is not None and digests[i] not in store.data]
    failed: list[tuple[int, str]] = []
    save = use_cache and not env.is_distributed  # under torchrun rank 0 saves once everything is gathered
    if todo:
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(CatalogDataset([paths[i] for i in todo], preprocess),
                                             batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=collate_images)
        bar = tqdm(total=len(todo), desc="backbone features", unit="img", disable=not (progress and env.is_main))
        backbone.eval()
        with torch.inference_mode(), autocast(device):
            for positions, images, bad in loader:
                failed.extend((todo[p], reason) for p, reason in bad)
                if images is not None:
                    feats = backbone(images.to(device)).float().cpu()
                    for p, f in zip(positions, feats):
                        store.data[digests[todo[p]]] = f.clone()
                bar.update(len(positions) + len(bad))
                if bar.n % (batch_size * 20) < batch_size and save:
                    store.save()  # an interrupted extraction keeps what it did
        bar.close()
        if save:
            store.save()
    failed += [(i, "unreadable file") for i in mine if digests[i] is None]
    if env.is_distributed:
        shares = _gather_shares(store, env, {i: digests[i] for i in mine}, failed, "extracting image features",
                                use_cache)
        digests, failed = [None] * len(paths), []
        for rank_digests, rank_failed in shares:
            for i, d in rank_digests.items():
                digests[i] = d
            failed += rank_failed
    bad_pos = {p for p, _ in failed}
    ok = [i for i, d in enumerate(digests) if i not in bad_pos and d is not None and d in store.data]
    for i, reason in sorted(failed):
        if env.is_main:
            log.warning("skipping %s: %s", paths[i], reason)
    width = backbone.num_features
    feats = torch.stack([store.data[digests[i]] for i in ok]) if ok else torch.zeros(0, width)
    return feats, ok, sorted(failed)


def text_features(model: DualEncoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 128,
                  use_cache: bool = True, env: DistEnv | None = None) -> torch.Tensor:
    """Pooled text-backbone features (n, F) of ``texts`` (before the projection head).

    env: under torchrun, rank r encodes ``texts[r::world]``; every rank returns all features.
    """
    env = env or DistEnv()
    backbone = model.text_tower.backbone
    # A word tokenizer's vocabulary decides the ids, so it is part of the key.
    tok_state = json.dumps(tokenizer.state() if hasattr(tokenizer, "state") else {}, sort_keys=True)
    store = FeatureStore(cache_dir() / "features" / f"text-{module_fingerprint(backbone, tok_state)}.pt") \
        if use_cache else FeatureStore(Path(os.devnull) / "none")
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    mine = range(env.rank, len(texts), env.world_size)
    todo = sorted({keys[i]: i for i in mine if keys[i] not in store.data}.values(), key=lambda i: len(texts[i]))
    if todo:
        device = next(model.parameters()).device
        backbone.eval()
        with torch.inference_mode(), autocast(device):
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                batch = {k: v.to(device) for k, v in tokenizer([texts[i] for i in idx]).items()}
                feats = backbone(batch["input_ids"], batch["attention_mask"]).float().cpu()
                for i, f in zip(idx, feats):
                    store.data[keys[i]] = f.clone()
        if use_cache and not env.is_distributed:
            store.save()
    if env.is_distributed:
        _gather_shares(store, env, {i: keys[i] for i in mine}, None, "extracting text features", use_cache)
    return torch.stack([store.data[k] for k in keys]) if keys else torch.zeros(0, backbone.num_features)


class _ViewDataset(torch.utils.data.Dataset):
    """(job position, augmented view tensor or failure reason) for jobs (path, digest, view, policy)."""

    def __init__(self, jobs: list[tuple[str, str, int, "Policy"]], preprocess: dict, key: str):
        self.jobs, self.preprocess, self.key = jobs, preprocess, key

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        from .augment import view_seed

        path, digest, view, policy = self.jobs[i]
        try:
            return i, self.preprocess[policy](load_image(path), seed=view_seed(digest, view, self.key))
        except Exception as exc:  # reported by the caller; the plain features already vetted these files
            return i, f"{type(exc).__name__}: {exc}"


def view_features(model: DualEncoder, paths: list[str], plain: torch.Tensor, policies: list, cfg, views: int,
                  batch_size: int = 32, progress: bool = True, use_cache: bool = True,
                  env: DistEnv | None = None) -> torch.Tensor:
    """(n, views, F) image-backbone features of ``views`` augmented views of each image (frozen backbones).

    View v of a file is made from a seed derived from (file hash, v, augmentation settings), and it is
    cached under that key plus the item's :class:`~mmsearch.train.augment.Policy` (which augmentations its text
    allows), in the same cache file as the plain features. Every path must be a readable image (pass the
    ``ok`` paths of :func:`image_features`, ``plain`` their (n, F) features); a view that fails anyway
    falls back to the plain image.
    Under torchrun every rank makes the missing views (they are cheap next to training) and rank 0 saves.
    """
    from .augment import AugmentedPreprocess, aug_key

    env = env or DistEnv()
    backbone = model.image_tower.backbone
    store = _image_store(model, use_cache)
    akey = aug_key(cfg)
    digests = [_file_digest(p) or "" for p in paths]
    keys = [[f"{digests[i]}|{akey}|v{v}|{policies[i].code}" for v in range(views)] for i in range(len(paths))]
    todo = [(i, v) for i in range(len(paths)) for v in range(views) if keys[i][v] not in store.data]
    if todo:
        device = next(model.parameters()).device
        prep = {pol: AugmentedPreprocess(model.cfg.image, cfg, pol) for pol in set(policies)}
        data = _ViewDataset([(paths[i], digests[i], v, policies[i]) for i, v in todo], prep, akey)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate_images)
        bar = tqdm(total=len(todo), desc="augmented views", unit="img", disable=not (progress and env.is_main))
        backbone.eval()
        with torch.inference_mode(), autocast(device):
            for positions, images, bad in loader:
                for p, reason in bad:
                    log.warning("augmented view of %s failed (%s); using the plain image", paths[todo[p][0]], reason)
                if images is not None:
                    feats = backbone(images.to(device)).float().cpu()
                    for p, f in zip(positions, feats):
                        i, v = todo[p]
                        store.data[keys[i][v]] = f.clone()
                bar.update(len(positions) + len(bad))
        bar.close()
        if use_cache and env.is_main:
            store.save()
    out = plain.unsqueeze(1).repeat(1, views, 1)  # (n, views, F)
    for i in range(len(paths)):
        for v in range(views):
            if keys[i][v] in store.data:
                out[i, v] = store.data[keys[i][v]]
    return out
