"""WiSE-FT (Wortsman et al. 2022): weight-space interpolation between the weights training started from
and the fine-tuned ones, ``(1 - alpha) * start + alpha * fine_tuned``.

For the ``default`` model the start is the zero-shot model: its residual heads' last layers start at zero,
so ``alpha = 0`` is exactly ``bridge`` and ``alpha = 1`` the fine-tuned heads. Intermediate alphas keep
part of the zero-shot prior, which generalises to catalogs the training never saw; the alpha is chosen on
the leave-one-domain-out benchmark (``benchmarks/bench_lodo.py``) and stored in the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the floating-point parameters that train (heads, fusion, temperature), by state-dict key."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}


def interpolate(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * tuned`` for every key of ``tuned`` that ``start`` has with the same
    shape (anything else is taken from ``tuned``). alpha in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    out = {}
    for k, v in tuned.items():
        s = start.get(k)
        if s is not None and s.shape == v.shape and v.is_floating_point():
            out[k] = torch.lerp(s.to(v.device, v.dtype), v, alpha)
        else:
            out[k] = v
    return out


@contextmanager
def interpolated(model: nn.Module, start: dict[str, torch.Tensor], alpha: float) -> Iterator[nn.Module]:
    """Temporarily set ``model``'s parameters named in ``start`` to the WiSE-FT mix (to save or evaluate
    it); the fine-tuned values come back on exit. ``alpha = 1`` leaves the model untouched."""
    if alpha >= 1.0:
        yield model
        return
    params = dict(model.named_parameters())
    keys = [k for k in start if k in params and params[k].shape == start[k].shape]
    saved = {k: params[k].detach().clone() for k in keys}
    mixed = interpolate(start, saved, alpha)
    with torch.no_grad():
        for k in keys:
            params[k].copy_(mixed[k])
    try:
        yield model
    finally:
        with torch.no_grad():
            for k in keys:
                params[k].copy_(saved[k])
