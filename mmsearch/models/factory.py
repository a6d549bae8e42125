"""``create_model``: one entry point from a config name or checkpoint path to a ready model."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .._version import __version__
from ..config import ImageTowerCfg, ModelCfg, from_dict, to_dict
from ..errors import ModelError
from ..fsutil import atomic_write
from .classnames import bridge_prompts, class_embedding_key
from .device import resolve_device
from .dual_encoder import DualEncoder
from .encoders import ImageTower, TextTower, l2n, minilm_path
from .preprocess import PilPreprocess
from .registry import list_models
from .tokenizer import HFTokenizer, WordTokenizer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mmsearch-checkpoint"
CHECKPOINT_VERSION = 1
# Backbones whose weights come from installed packages; checkpoints leave them out unless trained.
PACKAGED_BACKBONES = {"efficientnet_lite0", "minilm"}

Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], dict[str, torch.Tensor]]


def get_model_config(name: str) -> ModelCfg:
    path = resources.files("mmsearch.models") / "configs" / f"{name}.json"
    if not path.is_file():
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(list_models())} or a checkpoint path")
    return ModelCfg.from_json_file(str(path))


def image_preprocess(cfg: ImageTowerCfg) -> Preprocess:
    """PIL RGB image -> (3, S, S) float tensor: resize the short side (bicubic), centre crop, normalise.

    The same numbers as torchvision's Resize + CenterCrop + ToTensor + Normalize, without importing
    torchvision at start-up (see models/preprocess.py)."""
    return PilPreprocess(cfg)


def cache_dir() -> Path:
    root = os.environ.get("MMSEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmsearch")
    return Path(root)


def imagenet_class_text_embeddings(text_tower: TextTower, tokenizer: Tokenizer, template: str,
                                   templates: tuple[str, ...] = (), synonyms: bool = False) -> torch.Tensor:
    """(1000, D) unit text embeddings of "a photo of a {class name}." for the ImageNet-1k classes; with
    ``templates`` / ``synonyms``, the normalised mean over a prompt ensemble per class.

    A deterministic function of the prompts and the text backbone, so the package ships them for its
    built-in configs (``mmsearch/models/weights/imagenet_text_<key>.npy``, float16, written by
    ``python -m mmsearch.models.shipped --write``); other prompts are computed once (a progress bar on a
    terminal: minutes on a CPU) and cached under ``$MMSEARCH_CACHE`` (default ``~/.cache/mmsearch``). The
    cache is only an accelerator and is rebuilt when missing or damaged.
    """
    from ..progress import bar
    from .classnames import class_embeddings

    per_class = bridge_prompts(tuple(templates) or (template,), synonyms)
    key = class_embedding_key(per_class, text_tower.cfg.backbone)
    packaged = class_embeddings(key, len(per_class))
    if packaged is not None:
        return torch.from_numpy(packaged.astype("float32"))
    prompts = [p for ps in per_class for p in ps]
    path = cache_dir() / f"imagenet_text_{key}.pt"
    if path.exists():
        try:
            emb = torch.load(path, map_location="cpu", weights_only=True)
            if emb.shape[0] == len(per_class):
                return emb
        except Exception as exc:  # a damaged cache file is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s: %s", path, exc)
    log.info("computing the class-name embeddings of %d prompts (once; cached in %s)", len(prompts), path)
    progress = bar(len(prompts), "class-name embeddings (first use, once)", unit="prompt")
    parts = []
    with torch.inference_mode():
        for i in range(0, len(prompts), 128):
            parts.append(l2n(text_tower(tokenizer(prompts[i:i + 128]))))
            progress.update(len(prompts[i:i + 128]))
        emb = torch.cat(parts)
        if len(prompts) != len(per_class):  # ensemble: mean of each class's unit prompt embeddings, renormalised
            owner = torch.tensor([c for c, ps in enumerate(per_class) for _ in ps])
            emb = l2n(torch.zeros(len(per_class), emb.shape[1]).index_add_(0, owner, emb))
    progress.close()
    emb = emb.clone()  # a plain tensor (not an inference tensor) for the buffer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(emb, tmp), durable=False)
    except OSError as exc:
        log.warning("could not cache class-name embeddings at %s: %s", path, exc)
    return emb


def build_model(cfg: ModelCfg, tokenizer_state: dict | None = None) -> tuple[DualEncoder, Tokenizer]:
    """Construct the model and its tokenizer from a config (random init where nothing is packaged)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)  # random-init parts are the same every time for a given config
        if cfg.text.backbone == "minilm":
            tokenizer: Tokenizer = HFTokenizer(minilm_path(), cfg.text.context_length)
            text = TextTower(cfg.text, cfg.embed_dim)
        else:
            state = tokenizer_state or {}
            tokenizer = WordTokenizer(state.get("vocab"), num_buckets=cfg.text.vocab_size,
                                      context_length=cfg.text.context_length)
            text = TextTower(cfg.text, cfg.embed_dim, vocab_size=tokenizer.vocab_size)
        class_emb = None
        if cfg.image.head in ("imagenet_bridge", "bridge_residual"):
            text.eval()
            class_emb = imagenet_class_text_embeddings(text, tokenizer, cfg.image.bridge_template,
                                                       tuple(cfg.image.bridge_templates), cfg.image.bridge_synonyms)
            if class_emb.shape[1] != cfg.embed_dim:
                raise ModelError(f"imagenet_bridge lands in the text space ({class_emb.shape[1]}-d), "
                                 f"but embed_dim is {cfg.embed_dim}")
        image = ImageTower(cfg.image, cfg.embed_dim, class_emb)
        model = DualEncoder(cfg, text, image)
    return model, tokenizer


def save_checkpoint(model: DualEncoder, tokenizer: Tokenizer, path: str | Path, include_backbones: bool = False,
                    extra: dict | None = None, trained_backbone: dict | None = None) -> Path:
    """Write a self-describing checkpoint: format, version, config, tokenizer and weights.

    Packaged backbone weights (EfficientNet-Lite0, MiniLM) are left out unless ``include_backbones``:
    they load from their packages, so a heads-only checkpoint is a few MB. ``trained_backbone``
    (``{"unfreeze": N, "image": [blocks], "text": [blocks], "keys": [state_dict keys]}``, from
    ``mmsearch train --unfreeze N``) records which backbone blocks were trained; their weights are always
    saved, and loading checks that they are there.
    """
    state = model.state_dict()
    keep = set((trained_backbone or {}).get("keys", ()))
    if not include_backbones:
        state = {k: v for k, v in state.items() if not _is_packaged_backbone_key(model.cfg, k) or k in keep}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "mmsearch_version": __version__,
        "config": to_dict(model.cfg),
        "tokenizer": tokenizer.state() if hasattr(tokenizer, "state") else {},
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "extra": extra or {},
        "trained_backbone": trained_backbone or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp), durable=False)
    return path


def _is_packaged_backbone_key(cfg: ModelCfg, key: str) -> bool:
    return ((key.startswith("image_tower.backbone.") and cfg.image.backbone in PACKAGED_BACKBONES)
            or (key.startswith("text_tower.backbone.") and cfg.text.backbone in PACKAGED_BACKBONES))


def read_checkpoint(path: str | Path) -> dict:
    """The checked payload of a checkpoint file (format, version, config, tokenizer, state_dict, extra)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not an mmsearch checkpoint")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise ModelError(f"{path} was written by a newer mmsearch ({payload.get('mmsearch_version')}); upgrade")
    return payload


def _load_weights(model: DualEncoder, state: dict, where: str | Path, trained_backbone: dict | None = None) -> None:
    lost = [k for k in (trained_backbone or {}).get("keys", ()) if k not in state]
    if lost:  # a packaged backbone would silently stand in for the trained one
        raise ModelError(f"weights {where} record trained backbone blocks but lack their weights ({lost[:3]})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_packaged_backbone_key(model.cfg, k)]
    if missing or unexpected:
        raise ModelError(f"weights {where} do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_checkpoint(path: str | Path) -> tuple[DualEncoder, Tokenizer, dict]:
    payload = read_checkpoint(path)
    cfg = from_dict(ModelCfg, payload["config"])
    model, tokenizer = build_model(cfg, payload.get("tokenizer"))
    _load_weights(model, payload["state_dict"], path, payload.get("trained_backbone"))
    return model, tokenizer, payload


def weights_dir() -> Path:
    """Where named configs find their trained weights: ``mmsearch/models/weights/`` inside the package."""
    return Path(str(resources.files("mmsearch.models") / "weights"))


def build_named_model(name: str, with_weights: bool = True) -> tuple[DualEncoder, Tokenizer]:
    """A built-in config; if it names ``weights`` (a file in ``mmsearch/models/weights/``), load them.

    ``with_weights=False`` gives the config's fresh initialisation (what ``mmsearch train`` starts from).
    """
    cfg = get_model_config(name)
    if not (cfg.weights and with_weights):
        return build_model(cfg)
    path = weights_dir() / cfg.weights
    if not path.is_file():
        raise ModelError(f"model {name!r} needs weights {cfg.weights}, which this install lacks (reinstall mmsearch)")
    payload = read_checkpoint(str(path))
    model, tokenizer = build_model(cfg, payload.get("tokenizer"))
    _load_weights(model, payload["state_dict"], path, payload.get("trained_backbone"))
    return model, tokenizer


def create_model(name_or_path: str | Path = "default", device: str | torch.device = "auto",
                 ) -> tuple[DualEncoder, Preprocess, Tokenizer]:
    """Create a model from a built-in config name or a checkpoint file, in eval mode on ``device``.

    Args:
        name_or_path: a name from :func:`list_models` (``default``, ``tiny`` ...) or a ``.pt`` checkpoint
            written by :func:`save_checkpoint` / ``mmsearch train``.
        device: ``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda[:N]``.

    Returns:
        (model, preprocess, tokenizer): ``preprocess`` maps a PIL RGB image to a (3, S, S) tensor and
        ``tokenizer`` maps a list of strings to model inputs.

    Example:
        >>> import torch
        >>> from mmsearch import create_model
        >>> model, preprocess, tokenizer = create_model("tiny", device="cpu")
        >>> with torch.inference_mode():
        ...     model.encode_text(tokenizer(["red shoes"])).shape
        torch.Size([1, 64])
    """
    from ..progress import slow_step

    dev = resolve_device(device)
    name = str(name_or_path)
    with slow_step(f"loading the model {Path(name).name}"):
        if name in list_models():
            model, tokenizer = build_named_model(name)
        elif Path(name).is_file():
            model, tokenizer, _ = load_checkpoint(name)
        else:
            raise ModelError(f"unknown model {name!r}: use one of {', '.join(list_models())} or a checkpoint path")
        model.to(dev).eval()
    return model, image_preprocess(model.cfg.image), tokenizer
