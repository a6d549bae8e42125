"""torch.distributed plumbing: torchrun's environment, the process group, work splitting, gathers.

mmsearch does not run its own cluster: ``torchrun`` starts one process per worker and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module reads them and joins
PyTorch's process group (``gloo`` on the CPU, ``nccl`` on CUDA, one GPU per local rank).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

from ..errors import MMSearchError
from ..models.device import resolve_device

log = logging.getLogger(__name__)


class DistributedError(MMSearchError):
    """A rank failed, the ranks disagree, or torchrun's environment is malformed."""

    lost_rank = False  # the process group is broken: no rank is left to tell


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun job (all zeros and ones when started without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        env = os.environ if environ is None else environ

        def read(name: str, default: int) -> int:
            value = env.get(name)
            if value is None or value == "":
                return default
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"environment variable {name}={value!r} is not an integer "
                                       f"(set by torchrun; start with `torchrun --nproc-per-node N -m mmsearch ...`)"
                                       ) from None

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        out = cls(rank=rank, world_size=world, local_rank=read("LOCAL_RANK", 0),
                  local_world_size=read("LOCAL_WORLD_SIZE", 1))
        if world < 1 or not 0 <= rank < world:
            raise DistributedError(f"RANK={rank} does not fit WORLD_SIZE={world}")
        if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise DistributedError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun")
        return out

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_device(device: str, env: DistEnv) -> torch.device:
    """The device of this rank: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` (one GPU per process,
    or processes sharing GPUs round-robin when there are more local ranks than GPUs); the CPU otherwise."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return dev


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, timeout_s: float = 1800.0,
                  backend: str | None = None) -> Iterator[None]:
    """Join (and on exit leave) the default process group for ``env``; a no-op when one is already up.

    backend: ``gloo`` / ``nccl``; default :func:`backend_for` the device.
    timeout_s: how long a collective waits for a rank that is still working; a rank that *dies*
        closes its connections and is noticed at once (gloo).
    """
    if not env.is_distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or backend_for(device)
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=_dt.timedelta(seconds=timeout_s))
    except Exception as exc:  # rendezvous failures come as RuntimeError / DistError subclasses
        raise DistributedError(f"rank {env.rank}: cannot join the process group ({_first_line(exc)})") from None
    log.info("rank %d/%d joined the %s process group on %s", env.rank, env.world_size, backend, device)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------- splitting work
# ------------------------------------------------------------------------------------------ collectives
def all_gather_objects(obj, env: DistEnv, what: str) -> list:
    """``obj`` of every rank, in rank order; a rank that died turns into a :class:`DistributedError`."""
    if not env.is_distributed:
        return [obj]
    out: list = [None] * env.world_size
    try:
        dist.all_gather_object(out, obj)
    except Exception as exc:
        raise DistributedError(f"a rank stopped before {what} ({_first_line(exc)}); see the other ranks' output "
                               f"above (torchrun names the rank that failed)") from None
    return out


def broadcast_object(obj, env: DistEnv, what: str):
    """Rank 0's ``obj`` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except Exception as exc:
        raise DistributedError(f"rank {env.rank}: rank 0 stopped before {what} ({_first_line(exc)})") from None
    return box[0]


# ------------------------------------------------------------------------ features of the global batch
def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """(sizes[rank], D) on each rank -> (sum(sizes), D), rank-major, differentiable.

    Gradients flow back to every rank's own rows (``torch.distributed.nn.functional.all_gather``: the
    backward is a reduce-scatter, so rank r receives the gradient that *all* ranks' losses put on its
    rows). ``sizes`` (every rank's row count, the same list on every rank) allows uneven batches, such
    as the last one of an epoch: rows are padded to the largest size for the collective and the padding
    is dropped. Without it every rank must pass the same B. Without a process group this returns ``x``.
    """
    rank, world = rank_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = sizes or [x.shape[0]] * world
    width = max(sizes)
    if x.shape[0] < width:
        x = torch.cat([x, x.new_zeros(width - x.shape[0], *x.shape[1:])])
    with warnings.catch_warnings():  # newer torch points to a private replacement; this one works on 2.4+
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(x)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)
