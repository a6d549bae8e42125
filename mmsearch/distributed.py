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

from .device import resolve_device
from .errors import MMSearchError

log = logging.getLogger(__name__)


class DistributedError(MMSearchError):
    """A rank failed, the ranks disagree, or torchrun's environment is malformed."""


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
def shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``num_shards`` contiguous [start, end) ranges whose sizes differ by at most one."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    base, extra = divmod(n, num_shards)
    out, start = [], 0
    for i in range(num_shards):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def shards_of_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shard ``i`` belongs to rank ``i % world_size``: interleaved, so every rank gets early and late
    parts of a sorted listing (folders of big and small files spread evenly)."""
    return list(range(rank, num_shards, world_size))


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


# --------------------------------------------------------------------------- contrastive loss over ranks
def split_sizes(n: int, world_size: int) -> list[int]:
    """Rows of an ``n``-row global batch that each rank takes (contiguous, sizes differ by at most one)."""
    return [b - a for a, b in shard_ranges(n, world_size)]


def _rank_world() -> tuple[int, int]:
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
    rank, world = _rank_world()
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


def gathered_contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                              sizes: list[int] | None = None, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the *global* batch, computed locally on each rank.

    image, text: (B, D) unit embeddings of this rank's pairs (row i matches row i); scale: the logit
    multiplier (``logit_scale.exp()``), as in issue 3's ``loss.contrastive_loss``, which this equals
    without a process group. Each rank scores its B rows against all columns of the global batch
    ((B, total) logits, not the full square). The result is scaled so that its mean over ranks (what
    DistributedDataParallel does with gradients) is the single-process loss on the concatenated global
    batch, also when ``sizes`` are uneven; ``tests/test_distributed.py`` checks this with 2 processes.
    ``text_ids`` (total,): the global batch's text ids; pairs sharing a text are not negatives.
    """
    from .loss import same_text_mask

    rank, world = _rank_world()
    sizes = sizes or [image.shape[0]] * world
    all_image, all_text = gather_features(image, sizes), gather_features(text, sizes)  # (total, D)
    labels = torch.arange(image.shape[0], device=image.device) + sum(sizes[:rank])
    ce = torch.nn.functional.cross_entropy
    same = same_text_mask(text_ids, image.shape[0], sum(sizes[:rank]))
    i2t, t2i = scale * image @ all_text.T, scale * text @ all_image.T  # (B, total) logits each way
    if same is not None:
        i2t, t2i = i2t.masked_fill(same, float("-inf")), t2i.masked_fill(same, float("-inf"))
    summed = ce(i2t, labels, reduction="sum") + ce(t2i, labels, reduction="sum")
    return summed / 2 * world / sum(sizes)


def gathered_composed_loss(fused: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float,
                           target_ids: torch.Tensor | None = None, sizes: list[int] | None = None) -> torch.Tensor:
    """``loss.composed_loss`` over the global batch: this rank's fused queries (B, D) against the
    targets of all ranks. ``target_ids`` are the ids of the *global* batch's targets (total,), the same
    on every rank; a duplicate target is masked out of the other rows' denominators, as in
    ``composed_loss``. Scaled like :func:`gathered_contrastive_loss` (mean over ranks = global loss)."""
    rank, world = _rank_world()
    sizes = sizes or [fused.shape[0]] * world
    all_target = gather_features(target, sizes)  # (total, D)
    labels = torch.arange(fused.shape[0], device=fused.device) + sum(sizes[:rank])
    logits = scale * fused @ all_target.T  # (B, total)
    if target_ids is not None:
        same = target_ids[labels][:, None] == target_ids[None, :]
        same[torch.arange(len(labels), device=same.device), labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum") * world / sum(sizes)
