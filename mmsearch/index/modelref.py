"""The model of an index update, loaded only when the plan has something to encode.

:class:`ModelHandle` answers what planning and the manifest need (name, fingerprint, widths, fusion) from
what is known without loading (``models/known.py``: shipped and cached records, or the live manifest for
the index's own checkpoint). ``load()`` imports torch and creates the model, once, and checks the
recorded fingerprint against the real one: :class:`StaleRecord` when they differ, and the caller plans
again with the loaded model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..models import known as _known
from ..models.registry import list_models

log = logging.getLogger(__name__)


def model_path(ref: str, home: Path | None) -> str:
    """The model an index's manifest names, as create_model takes it: a built-in name as it is, a checkpoint
    relative to ``home`` (the snapshot folder that keeps the index's own copy), an absolute one as it is."""
    if ref in list_models():
        return ref
    return str(Path(ref) if home is None or Path(ref).is_absolute() else home / ref)


class StaleRecord(Exception):
    """The recorded fingerprint of a model was not its real one (the record is fixed; plan again)."""


class ModelHandle:
    """Duck-types the parts of a DualEncoder that the planner and the manifest read, without loading it."""

    def __init__(self, model_ref: str | Path, device: str, known: "_known.Known | None" = None):
        self.model_ref = str(model_ref)
        self.device = device
        self.known = known if known is not None else _known.lookup(self.model_ref)
        self.loaded: tuple[Any, Any, Any] | None = None  # (model, preprocess, tokenizer)

    # ---------------------------------------------------------------- what is known without loading
    @property
    def is_loaded(self) -> bool:
        return self.loaded is not None

    @property
    def cfg(self) -> Any:
        return self.known.cfg if self.known is not None else self.load()[0].cfg

    def fingerprint(self) -> str:
        return self.known.fingerprint if self.known is not None else self.load()[0].fingerprint()

    @property
    def embed_dim(self) -> int:
        return int(self.cfg.embed_dim)

    @property
    def visual_dim(self) -> int | None:
        if self.known is not None:
            return self.known.dims.get("visual")
        return self.load()[0].visual_dim

    def device_name(self) -> str:
        """The device the model runs on (for the manifest's build record); ``cpu`` until loaded."""
        if self.loaded is None:
            return "cpu"
        return str(next(self.loaded[0].parameters()).device)

    # --------------------------------------------------------------------------------- loading
    def load(self, replan: bool = True) -> tuple[Any, Any, Any]:
        """(model, preprocess, tokenizer): imports torch and loads the weights on first call.

        ``replan``: raise :class:`StaleRecord` when the fingerprint the caller may have planned with was
        wrong (False: the caller has not used it yet)."""
        if self.loaded is not None:
            return self.loaded
        from ..models.factory import create_model

        model, preprocess, tokenizer = create_model(self.model_ref, device=self.device)
        self.loaded = (model, preprocess, tokenizer)
        real = _known.describe(model)
        if self.known is not None and self.known.fingerprint != real.fingerprint:
            log.warning("the recorded fingerprint of %s (%s) is not its real one (%s); planning again",
                        self.model_ref, self.known.fingerprint, real.fingerprint)
            self.known = real
            _known.remember(self.model_ref, real)
            if replan:
                raise StaleRecord(self.model_ref)
        self.known = real
        if self.model_ref in list_models() or Path(self.model_ref).is_file():
            _known.remember(self.model_ref, real)
        return self.loaded
