"""IVF indexes whose inverted lists live on disk, built the way FAISS builds at scale
(faiss ``contrib/ondisk.py``, autofaiss): train once, add in parts, merge the lists on disk.

::

    train once   rank 0 trains the coarse quantizer (+ PQ) on annbuild.training_sample (the rows a
                 single-process build trains on) -> WORK/trained.faiss, an empty index
    add          a part = a contiguous range of rows of <channel>.f16.npy (rows sorted by item id);
                 a copy of the trained index + the part's vectors -> WORK/shard-<i>.ivf, then
                 shard-<i>.json (the done marker, with a digest of the part's ids and vectors).
                 Part i is added by rank i % N; a part whose marker matches is skipped (resume)
    merge        faiss.contrib.ondisk.merge_ondisk: every part's lists, memory-mapped, are copied list by
                 list into ONE <channel>.ivfdata (OnDiskInvertedLists); <channel>.faiss keeps the
                 quantizer and each list's offset. Neither step holds all lists in RAM.

The .faiss file stores the lists file by name only, and :func:`mmsearch.index.ann.read_ondisk` opens it
with ``IO_FLAG_ONDISK_SAME_DIR`` (the lists file beside the .faiss file, wherever the folder was moved or
copied to). Parts are added by whoever runs an :class:`Adder`: every rank of a torchrun job
(dist/runner.py) or this process (:class:`LocalAdder`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import faiss
import numpy as np

from ..errors import MMSearchError
from ..fsutil import atomic_write
from ..ranges import even_ranges
from . import ann, annbuild
from .ann import IndexSpec
from .quiet import quiet_stdout

log = logging.getLogger(__name__)

SUFFIX = ".ivfdata"
def supports(spec: IndexSpec, dim: int) -> bool:
    """Whether ``spec`` is an IVF index (optionally behind a transform such as OPQ) whose lists hold
    everything it stores, so merge_ondisk can put them on disk: not flat, HNSW, IVFPQR or a refine stage."""
    made = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)  # owns what the casts point to
    index = faiss.downcast_index(made)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF) and not isinstance(index, faiss.IndexIVFPQR)


def _lists(index: faiss.Index):
    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)


# ---------------------------------------------------------------------------------------- writing
def write(index: faiss.Index, path: str | Path) -> None:
    """write_index, recording the on-disk lists file by its name only (no absolute path of this machine)."""
    lists = _lists(index)
    full = lists.filename
    lists.filename = os.path.basename(full)
    try:
        faiss.write_index(index, str(path))
    finally:
        lists.filename = full


# ---------------------------------------------------------------------------------------- parts
@dataclass
class AddTask:
    """One channel's add phase: what every process adding parts needs (paths on a shared file system)."""

    channel: str
    work: str  # holds trained.faiss and the parts
    vectors: str  # <channel>.f16.npy: (n, dim) float16, rows sorted by id
    ids: str  # <channel>.ids.npy: (n,) int64
    parts: list[list[int]] = field(default_factory=list)  # [start, end) rows of each part
    trained_key: str = ""  # digest of the trained index's recipe and sample


@dataclass
class PartsStatus:
    rank: int = 0
    parts: int = 0
    resumed: int = 0
    added: int = 0  # vectors added by this process
    seconds: float = 0.0
    error: str | None = None


def part_paths(task: AddTask, part: int) -> tuple[Path, Path]:
    """(``shard-NNNNNN.ivf``, ``shard-NNNNNN.json``) of part ``part``: the files keep their ``shard-`` names, so a
    distributed build resumes from the parts an earlier run of the same command added."""
    base = Path(task.work) / f"shard-{part:06d}"
    return base.with_suffix(".ivf"), base.with_suffix(".json")


def _digest(*chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def add_part(task: AddTask, part: int, ids: np.ndarray, vectors: np.ndarray) -> bool:
    """Add rows [start, end) to a copy of the trained index -> the part's .ivf file; False if already done."""
    start, end = task.parts[part]
    part_ids = np.asarray(ids[start:end], np.int64)
    part_vecs = np.asarray(vectors[start:end])  # (rows, dim) float16
    key = _digest(task.trained_key.encode(), part_ids.tobytes(), part_vecs.tobytes())
    path, marker = part_paths(task, part)
    with contextlib.suppress(OSError, ValueError):
        if path.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
            return False
    index = faiss.read_index(str(Path(task.work) / "trained.faiss"))
    annbuild.add(index, part_vecs, part_ids)
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
    atomic_write(marker, json.dumps({"part": part, "rows": [start, end], "key": key}),
                 durable=False)  # written last: the part is done
    return True


def run_parts(task: AddTask, rank: int = 0, world_size: int = 1,
              after_part: Callable[[], None] | None = None) -> PartsStatus:
    """Add the parts of ``rank`` (part i -> rank i % world_size); errors become the status's error line."""
    status = PartsStatus(rank=rank)
    t0 = time.perf_counter()
    try:
        vectors = np.load(task.vectors, mmap_mode="r")
        ids = np.load(task.ids, mmap_mode="r")
        for part in range(rank, len(task.parts), world_size):
            status.parts += 1
            if add_part(task, part, ids, vectors):
                status.added += task.parts[part][1] - task.parts[part][0]
                if after_part is not None:
                    after_part()
            else:
                status.resumed += 1
    except (OSError, ValueError, RuntimeError) as exc:  # faiss raises RuntimeError
        status.error = f"rank {rank}: adding {task.channel} vectors failed ({str(exc).strip().splitlines()[-1]})"
    status.seconds = round(time.perf_counter() - t0, 3)
    return status


class Adder(Protocol):
    """Gets every part of an :class:`AddTask` added (raises if any part failed)."""

    def work_dir(self, channel: str) -> Path: ...

    def num_parts(self, n: int) -> int: ...

    def __call__(self, task: AddTask) -> None: ...


@dataclass
class LocalAdder:
    """Adds every part in this process (an update outside torchrun); its work is not kept for a re-run."""

    root: Path
    part_size: int = 100_000

    def work_dir(self, channel: str) -> Path:
        return self.root / channel

    def num_parts(self, n: int) -> int:
        return max(1, math.ceil(n / self.part_size))

    def __call__(self, task: AddTask) -> None:
        status = run_parts(task)
        if status.error:
            raise MMSearchError(status.error)


# ---------------------------------------------------------------------------------------- building
def train_once(spec: IndexSpec, vectors: np.ndarray, work: Path, seed: int = 0, train_sample: int = 100_000) -> str:
    """The trained empty index in ``work`` (re-used when an earlier run trained it on the same sample);
    returns its key."""
    sample = annbuild.training_sample(vectors, seed, train_sample)
    key = _digest(json.dumps([spec.factory, seed]).encode(), np.ascontiguousarray(sample).tobytes())
    path, marker = work / "trained.faiss", work / "trained.json"
    with contextlib.suppress(OSError, ValueError):
        if path.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
            log.info("re-using the trained %s quantizer in %s", spec.factory, work)
            return key
    work.mkdir(parents=True, exist_ok=True)
    for p in work.glob("shard-*"):  # parts of another trained index can never be re-used
        p.unlink()
    index = annbuild.train_index(spec, sample, seed)  # the sample is all of its rows: trains on exactly these
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)), durable=False)
    marker.write_text(json.dumps({"factory": spec.factory, "seed": seed, "key": key}), encoding="utf-8")
    return key


def build(channel: str, spec: IndexSpec, folder: Path, vectors: np.ndarray, adder: Adder, seed: int = 0
          ) -> tuple[faiss.Index, IndexSpec]:
    """An IVF index of ``spec`` over ``folder/<channel>.f16.npy`` (+ ids) with its lists in
    ``folder/<channel>.ivfdata``: train once, ``adder`` adds the parts, merge on disk.

    vectors: the same (n, dim) rows as the .npy file (rank 0 has them at hand; only the training
    sample is read from them). Returns the index (lists memory-mapped, params set) and ``spec`` with
    ``ondisk`` filled in.
    """
    from faiss.contrib.ondisk import merge_ondisk

    work = adder.work_dir(channel)
    t0 = time.perf_counter()
    key = train_once(spec, vectors, work, seed)
    t1 = time.perf_counter()
    n = len(vectors)
    task = AddTask(channel=channel, work=str(work), vectors=str(folder / f"{channel}.f16.npy"),
                   ids=str(folder / f"{channel}.ids.npy"), trained_key=key,
                   parts=[list(r) for r in _ranges(n, adder.num_parts(n))])
    adder(task)
    t2 = time.perf_counter()
    index = faiss.read_index(str(work / "trained.faiss"))
    lists = folder / f"{channel}{SUFFIX}"
    with quiet_stdout():
        merge_ondisk(index, [str(part_paths(task, i)[0]) for i in range(len(task.parts))], str(lists))
    ann.set_params(index, spec.params)
    log.info("%s: %s over %d vectors in %d parts, lists on disk in %s (train %.1f s, add %.1f s, merge %.1f s)",
             channel, spec.factory, n, len(task.parts), lists.name, t1 - t0, t2 - t1, time.perf_counter() - t2)
    spec = IndexSpec(**{**asdict(spec), "ondisk": lists.name})
    return index, spec


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    return even_ranges(n, min(parts, max(1, n)))


def open_copy(old_folder: Path, channel: str, spec: IndexSpec, folder: Path) -> faiss.Index:
    """The on-disk index of an earlier snapshot, copied into ``folder`` and opened writable there, so an
    update can remove and add in place without touching the earlier snapshot (which may be serving)."""
    for name in (f"{channel}.faiss", spec.ondisk):
        shutil.copyfile(old_folder / name, folder / name)
    return ann.read(str(folder / f"{channel}.faiss"), spec, mmap=False)
