"""Device and precision in one place: "auto" resolution, autocast, seeding."""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Iterable, Iterator

import numpy as np
import torch

from ..cpus import available_cpus
from ..errors import MMSearchError

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


def default_num_workers(device: torch.device) -> int:
    """Decode processes sized to the machine.

    CUDA: decoding is the bottleneck, so every core but one (the one feeding the GPU), at most 16.
    CPU: the model's own threads use the cores, and with JPEG draft decoding one worker keeps up
    (benchmarks/results/encode_cpu.md measures 0, 1 and 2 workers on 2 cores).
    """
    cpus = available_cpus()
    if device.type == "cuda":
        return max(1, min(16, cpus - 1))
    return 1 if cpus >= 2 else 0


def prefetch_to_device(batches: Iterable, device: torch.device, move) -> Iterator:
    """Yield ``move(batch)`` with the next batch's host-to-device copy already started.

    On CUDA the copy of batch i+1 runs on a side stream while batch i computes (the loader pins memory,
    so ``non_blocking`` copies are truly asynchronous). On the CPU it is a plain ``map(move, batches)``.
    ``move(batch)`` must only issue copies; the consumer's stream waits for them before use.
    """
    if device.type != "cuda":
        yield from map(move, batches)
        return
    stream = torch.cuda.Stream(device)
    it = iter(batches)
    pending = None
    for batch in it:
        with torch.cuda.stream(stream):
            moved = move(batch)
        if pending is not None:
            yield pending
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        _record_stream(moved, current)  # memory made on the side stream is in use on this one
        pending = moved
    if pending is not None:
        yield pending


def _record_stream(obj, stream) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _record_stream(o, stream)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
