"""Device and precision in one place: "auto" resolution, autocast, seeding."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

from .errors import MMSearchError

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"``.

    ``auto`` picks CUDA when available and says when it falls back to the CPU.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA device available; running on the CPU")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MMSearchError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise MMSearchError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op context on the CPU (fp32 is faster and exact there)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
