"""How an index is built, as objects: :class:`IndexCfg` (the FAISS index of each channel) and
:class:`BuildOptions` (everything a build takes besides its input: model, device, batches, index config,
lock ...). Importable without FAISS or torch; the CLI fills them in, ``index/build.py`` and
``dist/runner.py`` read them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, TypedDict

from ..config import EncodeCfg
from ..errors import MMSearchError

NAMED_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
DEFAULT_SHARD_SIZE = 10_000  # torchrun builds: catalog items per work slice


@dataclass
class IndexCfg:
    """How a channel's FAISS index is chosen and tuned (index/annbuild.py).

    index_type: ``auto`` | ``flat`` | ``hnsw`` | ``ivf`` | ``ivfpq``, or a raw FAISS factory string
        (e.g. ``"OPQ32,IVF1024,PQ32"``) for experts.
    max_memory: RAM budget in bytes for one channel's index (None: no budget). ``auto`` picks the most
        accurate type that fits; the float16 embeddings kept for re-scoring are memory-mapped and not counted.
    target_recall: Recall@10 against exact search that tuning must reach on held-back queries.
    """

    index_type: str = "auto"
    max_memory: int | None = None
    target_recall: float = 0.95
    hnsw_m: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}


def parse_memory(text: str | int | None) -> int | None:
    """'512MB', '2G', '1.5GB', '1000000' -> bytes (binary units); None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper().replace("IB", "B") if m else ""
    if not m or unit not in _UNITS:
        raise MMSearchError(f"cannot read memory size {text!r}: use e.g. 512MB, 2GB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class BuildOptions:
    """Everything an index build takes besides its input (a catalog folder or items) and its output folder.

    :func:`mmsearch.build_index`, ``build_index_distributed`` (torchrun) and ``index --watch`` read the same
    object; each field can also be given to them by name (``build_index(cat, out=..., device="cpu")``).

    model: a built-in model name (``default``, ``tiny`` ...) or a checkpoint path; None: the existing
        index's own model, else ``default``. A different model than the existing index's re-encodes
        everything.
    device: ``auto``, ``cpu`` or ``cuda[:N]`` (under torchrun ``auto``/``cuda`` is each rank's GPU).
    batch_size: images per forward pass.
    num_workers: image-decoding worker processes (None: sized to the machine and device).
    progress: show progress bars.
    encode: further image-pipeline options (:class:`mmsearch.EncodeCfg`: decoder,
        torch.compile ...); ``batch_size`` and ``num_workers`` above override its fields.
    index: index type, memory budget and recall target (:class:`IndexCfg`); None: the existing index's,
        else ``auto``. A new type is built from the stored embeddings, without re-encoding.
    rebuild: ignore the existing index and encode everything again.
    lock_timeout: seconds to wait for another writer of the index before failing.
    exclude: glob patterns of files and folders never to index, relative to the catalog root
        (``["private/**", "*.tmp.jpg"]``; see mmsearch/catalog/exclude.py). They are remembered in the
        manifest and added to the remembered ones, so a later update without them honours them too;
        indexed items they match are removed (the report's ``excluded``).
    reset_exclude: forget the remembered patterns first (only ``exclude`` applies).
    shard_size: under torchrun, catalog items per work slice (the unit a re-run resumes from).
    """

    model: str | Path | None = None
    device: str = "auto"
    batch_size: int = 32
    num_workers: int | None = None
    progress: bool = True
    encode: EncodeCfg | None = None
    index: IndexCfg | None = None
    rebuild: bool = False
    lock_timeout: float = 0.0
    exclude: Sequence[str] | None = None
    reset_exclude: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise MMSearchError(f"batch size must be at least 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise MMSearchError(f"shard size must be at least 1, got {self.shard_size}")

    def replace(self, **changes: Any) -> "BuildOptions":
        """A copy with ``changes`` (field names); an unknown name is a TypeError that names it."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown build option(s) {', '.join(unknown)}; BuildOptions has "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes) if changes else self


class BuildKw(TypedDict, total=False):
    """:class:`BuildOptions`' fields as keyword arguments (``**overrides: Unpack[BuildKw]``), so a type
    checker sees a misspelt or mistyped option; tests/test_build_options.py keeps the two in step."""

    model: str | Path | None
    device: str
    batch_size: int
    num_workers: int | None
    progress: bool
    encode: EncodeCfg | None
    index: IndexCfg | None
    rebuild: bool
    lock_timeout: float
    exclude: Sequence[str] | None
    reset_exclude: bool
    shard_size: int
