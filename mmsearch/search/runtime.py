"""The query encoders' runtime for a SearchEngine: onnxruntime towers when chosen (see models/onnx.py),
and the photo and text of one query encoded concurrently.

A tower the exporter cannot trace (e.g. the LSTM text tower of the ``tiny`` model) stays on torch: a
marker file in the export folder records the failure, so it is not retried on every open. A cache that
cannot be written (read-only, full) leaves no marker: torch serves this time and the next open retries.
A truncated or unloadable exported file is removed and exported again (models/onnx.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..cpus import available_cpus
from ..errors import ModelError
from ..models import graphs, onnx

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

_POOL: ThreadPoolExecutor | None = None


def query_threads() -> int:
    """onnxruntime intra-op threads per query tower: 1 (``$MMSEARCH_QUERY_THREADS`` to change). A batch-1
    tower gains little from a second thread and loses much when the CPU is busy (EfficientNet-Lite0,
    batch 1, load 5 on 2 cores: 11.7 ms on 1 thread, 26.9 ms on 2); a photo + text query already runs
    its two towers on two threads."""
    import os

    return max(1, int(os.environ.get("MMSEARCH_QUERY_THREADS", "1")))


def lean(fingerprint: str, runtime: str | None, device: str, load: Callable[[], Any]) -> tuple | None:
    """(stand-in model, preprocess, tokenizer, towers) that answer queries from the exported towers alone
    (no torch model is created until something asks for it, see ``onnx.LazyModel``), or None."""
    if onnx.resolve_runtime(runtime, device) != "onnx":
        return None
    parts = onnx.lean_parts(fingerprint)
    entry = graphs.entry_for(fingerprint) if parts is None else None  # a built-in model: its shipped graphs
    if parts is None and entry is None:
        return None
    if entry is not None:
        try:
            from ..config import ModelCfg, from_dict

            cfg, tokenizer = from_dict(ModelCfg, entry["cfg"]), graphs.tokenizer_for(entry)
            towers: Any = graphs.ShippedTowers(entry, threads=query_threads())
        except Exception as exc:  # a corrupt shipped file: the torch path serves
            log.warning("cannot open the shipped towers (%s); loading the torch model", exc)
            return None
    else:
        assert parts is not None  # no shipped entry: the exported parts were found (checked above)
        cfg, tokenizer = parts
        # a damaged file is removed here; the torch path (ort_towers) then exports it again
        towers = onnx.load_towers(onnx.export_dir(fingerprint), ("image", "text"), threads=query_threads())
        if towers is None or set(towers.sessions) != {"image", "text"}:
            return None
    model = onnx.LazyModel(cfg, load)
    return model, _LazyPreprocess(model), tokenizer, towers


class _LazyPreprocess:
    """The model's PIL -> tensor preprocess, created on first call (it needs torch)."""

    def __init__(self, model: Any):
        self.model = model
        self.fn: Any = None

    def __call__(self, im: Any) -> Any:
        if self.fn is None:
            from ..models.preprocess import PilPreprocess

            self.fn = PilPreprocess(self.model.cfg.image)
        return self.fn(im)


def ort_towers(model: Any, fingerprint: str, runtime: str | None, device: str,
               tokenizer: Any = None) -> "onnx.OrtTowers | None":
    """onnxruntime sessions for the towers of ``model`` (exported at first use), or None for torch."""
    if onnx.resolve_runtime(runtime, device) != "onnx":
        return None
    folder = onnx.export_dir(fingerprint)

    def export(tower: str) -> bool:
        if model is None:
            return False
        try:
            onnx.export(model, (tower,), tokenizer)
            return True
        except onnx.CacheUnwritable as exc:  # retried by the next open
            onnx.warn_once(str(exc))
        except ModelError as exc:  # the exporter cannot trace it: the same next time
            onnx.warn_once(f"{exc}; this tower runs in torch")
            with contextlib.suppress(OSError):
                (folder / f"{tower}.failed").write_text(json.dumps({"v": MARKER_VERSION, "error": str(exc)[:2000]}))
        return False

    towers = [t for t in ("image", "text") if not gave_up(folder, t) and (onnx.intact(folder, t) or export(t))]
    if not towers:
        return None

    def export_again(tower: str) -> None:
        if not export(tower):
            raise ModelError(f"the {tower} tower could not be exported again")

    return onnx.load_towers(folder, tuple(towers), threads=query_threads(), export_again=export_again)


MARKER_VERSION = 2  # markers of older versions were written for full disks too: those are retried once


def gave_up(folder: Path, tower: str) -> bool:
    """Whether a ``<tower>.failed`` marker says the exporter cannot trace this tower."""
    marker = folder / f"{tower}.failed"
    try:
        info = json.loads(marker.read_text())
        if isinstance(info, dict) and info.get("v") == MARKER_VERSION:
            return True
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError):
        marker.unlink()
    return False


def concurrent_towers() -> bool:
    """Whether a photo + text query runs its two towers at once (``$MMSEARCH_QUERY_CONCURRENT``: ``1``,
    ``0`` or ``auto``). ``auto``: whenever the process may use 2 CPUs or more. Measured on 2 cores
    (``benchmarks/results/query_towers.md``, interleaved): at once 1.12-1.27x a photo query's p50, one
    after the other 1.31-1.38x; the towers slow each other down, but by less than the text tower costs."""
    import os

    v = os.environ.get("MMSEARCH_QUERY_CONCURRENT", "auto").strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    return available_cpus() >= 2


def both(first: Callable[[], T], second: Callable[[], U], concurrent: bool = True) -> tuple[T, U]:
    """Run ``first`` in a helper thread while ``second`` runs here (a photo + text query's two encoders:
    both runtimes release the GIL, and batch-1 graphs do not fill two cores each)."""
    global _POOL
    if not concurrent:  # one encoder (or none) to run: no thread hand-off
        return first(), second()
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-encode")
    fut = _POOL.submit(first)
    b = second()
    return fut.result(), b


SMALL_BATCH = 8  # queries below which one FAISS search runs on one thread


@contextlib.contextmanager
def faiss_threads(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for this thread's FAISS searches while the batch is small.

    A batch-1 search has nothing to split across threads, but FAISS still opens a parallel region whose
    barrier waits for every thread: on a busy CPU that is a scheduling quantum per search (a 10k x 1280
    flat scan measured 55 ms with 2 threads, 14 ms with 1, under load). OpenMP's thread count is
    per calling thread, so this does not slow down index builds or other requests.
    """
    if n_queries >= SMALL_BATCH:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
