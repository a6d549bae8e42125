"""ONNX Runtime for the towers: exported once from the same weights, cached by the model's fingerprint.

torch stays the reference (training, CUDA indexing, export). A query (or CPU indexing) process runs the
image and text towers in onnxruntime instead: no autograd dispatch, a fused graph, and, once the files
exist, no need to import torch or transformers at all (see ``search/lean.py``).

Files: ``<onnx cache>/<fingerprint>-v<EXPORT_VERSION>/{image,text}.onnx`` plus ``lean.json`` (the model
config and the tokenizer, what a query needs besides the graphs), with ``<onnx cache>`` =
``$MMSEARCH_ONNX_CACHE``, else ``$MMSEARCH_CACHE/onnx`` (default ``~/.cache/mmsearch/onnx``). The fingerprint
hashes the config and every weight (``DualEncoder.fingerprint``), and the index manifest records it, so an
index names the exported files it can use without loading the model. Each file is written to a temporary
name and renamed, so a reader never sees half a file. The outputs are unit vectors, exactly what
``encode_image_channels`` / ``encode_text`` return (agreement: ``tests/test_onnx_runtime.py``).

``runtime``: ``auto`` (onnxruntime when installed and the device is CPU; torch otherwise), ``onnx``
(fails if onnxruntime is missing) or ``torch``. ``$MMSEARCH_RUNTIME`` sets the default.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..cpus import available_cpus
from ..errors import ModelError
from ..progress import slow_step

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
EXPORT_VERSION = 1
OPSET = 17


def available() -> bool:
    """True when onnxruntime can be imported (it is the optional ``fast`` extra)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str | None, device: str = "cpu") -> str:
    """``auto`` / ``onnx`` / ``torch`` (None: ``$MMSEARCH_RUNTIME`` or ``auto``) -> ``onnx`` or ``torch``."""
    runtime = (runtime or os.environ.get("MMSEARCH_RUNTIME") or "auto").strip().lower()
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    on_cpu = str(device) in ("auto", "cpu") and not _cuda_requested(device)
    if runtime == "auto":
        return "onnx" if available() and on_cpu else "torch"
    if runtime == "onnx" and not available():
        raise ModelError("runtime 'onnx' needs onnxruntime: pip install 'mmsearch[fast]' (or use --runtime torch)")
    return runtime


def _cuda_requested(device: str) -> bool:
    if str(device).startswith("cuda"):
        return True
    if str(device) == "auto" and "torch" in __import__("sys").modules:  # only ask torch when it is loaded
        import torch

        return bool(torch.cuda.is_available())
    return False


def cache_root() -> Path:
    """Where exported towers live (the same ``$MMSEARCH_CACHE`` as models/factory.py's other caches)."""
    env = os.environ.get("MMSEARCH_ONNX_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("MMSEARCH_CACHE") or Path.home() / ".cache" / "mmsearch") / "onnx"


def export_dir(fingerprint: str) -> Path:
    return cache_root() / f"{fingerprint}-v{EXPORT_VERSION}"


def exported(fingerprint: str, towers: tuple[str, ...] = ("image", "text")) -> bool:
    return all(intact(export_dir(fingerprint), t) for t in towers)


class CacheUnwritable(ModelError):
    """The ONNX cache cannot be written now (read-only, full, missing): torch serves, the export is retried
    next time (no ``.failed`` marker, unlike a tower the exporter cannot trace)."""


def io_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, its cause or context), if any: a disk, not the model, failed."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def intact(folder: Path, tower: str) -> bool:
    """``<tower>.onnx`` exists and has the size recorded at export (``<tower>.onnx.size``; files exported
    before that was recorded count as intact: loading them checks the rest). A truncated or foreign file is
    removed, so the next open exports it again."""
    path = folder / f"{tower}.onnx"
    try:
        size = path.stat().st_size
    except OSError:
        return False
    try:
        recorded = int((folder / f"{tower}.onnx.size").read_text())
    except (OSError, ValueError):
        return True
    if recorded == size:
        return True
    warn_once(f"{path} is {size} bytes, {recorded} when exported (truncated?); exporting it again")
    discard(folder, tower)
    return False


def discard(folder: Path, tower: str) -> None:
    """Remove a damaged exported tower (a read-only cache keeps it: torch serves, as before)."""
    for name in (f"{tower}.onnx", f"{tower}.onnx.size"):
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError:
            pass


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A cache problem is logged once per process (a server reloading every few seconds, a long build)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


# ------------------------------------------------------------------------------------------ export
def export(model: Any, towers: tuple[str, ...] = ("image", "text"), tokenizer: Any = None) -> Path:
    """Write ``image.onnx`` (images (B, 3, S, S) float32 -> image (B, D), visual (B, F) when the model has
    that channel) and ``text.onnx`` (input_ids, attention_mask (B, L) int64 -> text (B, D)) for ``model``
    into its :func:`export_dir`; towers already there are kept. Needs torch. Returns the folder."""
    import torch

    folder = export_dir(model.fingerprint())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    model = model.float().eval()
    visual = bool(model.cfg.visual_channel)

    class Image(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images):
            out = self.m.encode_image_channels(images)
            return (out["image"], out["visual"]) if visual else out["image"]

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m.encode_text({"input_ids": input_ids, "attention_mask": attention_mask})

    size = model.cfg.image.image_size
    jobs = {
        "image": (Image(model), (torch.zeros(2, 3, size, size),), ["images"], ["image", "visual"] if visual else ["image"],
                  {"images": {0: "batch"}, "image": {0: "batch"}, "visual": {0: "batch"}}),
        "text": (Text(model), (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)),
                 ["input_ids", "attention_mask"], ["text"],
                 {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                  "text": {0: "batch"}}),
    }
    import warnings

    try:
        _write_lean(folder, model, tokenizer)
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    for name in towers:
        path = folder / f"{name}.onnx"
        if intact(folder, name):
            continue
        module, args, inputs, outputs, axes = jobs[name]
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with slow_step(f"exporting the {name} tower to ONNX (once per model)"), torch.no_grad(), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), args, str(tmp), dynamo=False, input_names=inputs,
                                  output_names=outputs, dynamic_axes={k: v for k, v in axes.items()
                                                                      if k in inputs + outputs},
                                  opset_version=OPSET, do_constant_folding=True)
            size = tmp.stat().st_size
            size_tmp = folder / f".{name}.size.{os.getpid()}.{threading.get_ident()}.tmp"
            size_tmp.write_text(str(size))
            os.replace(size_tmp, folder / f"{name}.onnx.size")  # the size first: a reader never sees the
            os.replace(tmp, path)  # new graph with no size, at worst an old graph with the new size (re-export)
        except Exception as exc:  # an architecture the exporter cannot trace: torch keeps serving this tower
            for leftover in folder.glob(f".{name}.*{os.getpid()}.{threading.get_ident()}.tmp"):
                leftover.unlink(missing_ok=True)
            err = io_error(exc)
            if err is not None:
                raise _unwritable(folder, err) from None
            raise ModelError(f"cannot export the {name} tower to ONNX: {exc}") from exc
        log.info("exported the %s tower to %s", name, path)
    return folder


def _unwritable(folder: Path, exc: OSError) -> CacheUnwritable:
    return CacheUnwritable(f"cannot write the ONNX cache {folder} ({exc.strerror or exc}); using torch for "
                           f"now (set MMSEARCH_ONNX_CACHE to a writable folder)")


def _write_lean(folder: Path, model: Any, tokenizer: Any) -> None:
    """``lean.json``: the config and tokenizer a query process needs to run the exported graphs alone."""
    import json

    from ..config import to_dict

    tok = None
    state: dict[str, Any] = tokenizer.state() if hasattr(tokenizer, "state") else {}
    if state.get("kind") == "hf":
        tok = {"kind": "hf", "path": str(tokenizer.path), "context_length": int(tokenizer.context_length)}
    info = {"cfg": to_dict(model.cfg), "tokenizer": tok}
    tmp = folder / f".lean.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, folder / "lean.json")


# ------------------------------------------------------------------------------------------ runtime
def session_options(threads: int | None = None) -> Any:
    """onnxruntime options of every tower session: full graph optimisation, one op at a time on ``threads``
    intra-op threads (default: the CPUs this process may use), and no busy-waiting between ops: on a shared
    CPU (and while a photo + text query runs both towers at once) spinning threads only take cores from the
    threads with work to do."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = int(threads or available_cpus())
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtTowers:
    """The exported towers in onnxruntime sessions (CPU). Both methods return float32 unit vectors.

    threads: intra-op threads per session (default: the CPUs this process may use). Sessions run
    sequential graphs (no inter-op pool), so a photo and a text encoded at once in two threads share
    the cores instead of oversubscribing them.
    """

    def __init__(self, folder: str | Path, towers: tuple[str, ...] = ("image", "text"), threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        opts = session_options(threads)
        self.sessions = {t: ort.InferenceSession(str(self.folder / f"{t}.onnx"), opts,
                                                 providers=["CPUExecutionProvider"]) for t in towers}

    def image_channels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 normalised images -> {"image": (B, D), "visual": (B, F) if stored}."""
        sess = self.sessions["image"]
        outs = sess.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return {o.name: v for o, v in zip(sess.get_outputs(), outs)}

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, L) int64 token ids and mask -> (B, D)."""
        return self.sessions["text"].run(None, {"input_ids": np.asarray(input_ids, np.int64),
                                                "attention_mask": np.asarray(attention_mask, np.int64)})[0]


def load_towers(folder: Path, towers: tuple[str, ...], threads: int | None = None,
                export_again: Any = None) -> OrtTowers | None:
    """Sessions for ``towers`` in ``folder``; a tower whose file does not load is removed and, when
    ``export_again(tower)`` is given, exported once more. None when no tower loads (torch serves)."""
    try:
        return OrtTowers(folder, towers, threads)
    except Exception:
        pass
    good = []
    for tower in towers:
        for attempt in (0, 1):
            try:
                OrtTowers(folder, (tower,), 1)
                good.append(tower)
                break
            except Exception as exc:  # a damaged graph (right size, wrong bytes) or an older exporter's file
                discard(folder, tower)
                if attempt or export_again is None:
                    warn_once(f"cannot load the exported {tower} tower ({exc}); it runs in torch")
                    break
                warn_once(f"cannot load {folder / (tower + '.onnx')} ({exc}); exporting it again")
                try:
                    export_again(tower)
                except ModelError as err:
                    warn_once(f"the {tower} tower runs in torch: {err}")
                    break
    if not good:
        return None
    try:
        return OrtTowers(folder, tuple(good), threads)
    except Exception as exc:
        warn_once(f"cannot open the ONNX towers in {folder} ({exc}); using torch")
        return None


_FORWARDS: dict[int, tuple[Any, Any]] = {}  # id(model) -> (model, forward): one export check per model


def image_forward(model: Any, runtime: str | None = None) -> Any:
    """For an index build on CPU: a callable (B, 3, S, S) float tensor -> ``encode_image_channels`` output
    (torch tensors) that runs the exported image tower in onnxruntime; None when torch should run it
    (CUDA, ``runtime="torch"``, onnxruntime missing, or a tower the exporter cannot trace)."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cpu" or resolve_runtime(runtime, "cpu") != "onnx":
        return None
    cached = _FORWARDS.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    try:
        folder = export_dir(model.fingerprint())
        if not intact(folder, "image"):
            export(model, ("image",))
        towers = load_towers(folder, ("image",), export_again=lambda t: export(model, (t,)))
    except Exception as exc:  # ModelError from the exporter, or a runtime that cannot load the graph
        warn_once(f"image tower stays on torch: {exc}")
        return None
    if towers is None:
        return None

    def forward(images: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        out = towers.image_channels(images.float().contiguous().numpy())
        return {k: torch.from_numpy(v) for k, v in out.items()}

    _FORWARDS.clear()  # one model at a time: a process indexes with one model
    _FORWARDS[id(model)] = (model, forward)
    return forward


def tokenize_numpy(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 arrays; a ``tokenizers`` tokenizer is called directly."""
    tok = getattr(tokenizer, "tok", None)
    if tok is not None and hasattr(tok, "encode_batch"):
        enc = tok.encode_batch([str(t) for t in texts])
        return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))
    batch = tokenizer(texts)  # torch tensors, or int64 arrays from a (wrapped) HFTokenizerNumpy
    ids, mask = (batch[k].numpy() if hasattr(batch[k], "numpy") else np.asarray(batch[k], np.int64)
                 for k in ("input_ids", "attention_mask"))
    return ids, mask


def normalize_u8(u8: np.ndarray, mean, std) -> np.ndarray:
    """(B, 3, S, S) uint8 -> float32 ``(x / 255 - mean) / std`` (numpy twin of preprocess.normalize_batch)."""
    scale = np.array([1.0 / (255.0 * s) for s in std], np.float32).reshape(1, 3, 1, 1)
    shift = np.array([-m / s for m, s in zip(mean, std)], np.float32).reshape(1, 3, 1, 1)
    return u8.astype(np.float32) * scale + shift


# ---------------------------------------------------------------------------- without torch at all
class HFTokenizerNumpy:
    """The Hugging Face ``tokenizers`` tokenizer of ``models.tokenizer.HFTokenizer`` (same settings), for a
    process that has no torch: :func:`tokenize_numpy` calls ``tok`` directly."""

    def __init__(self, path: str, context_length: int):
        from tokenizers import Tokenizer

        self.path, self.context_length = path, context_length
        self.tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tok.enable_truncation(max_length=context_length)
        pad = self.tok.padding or {}
        self.tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                pad_token=pad.get("pad_token", "[PAD]"))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Like the torch tokenizer (``engine.tokenizer(texts)``), with int64 arrays instead of tensors."""
        ids, mask = tokenize_numpy(self, texts)
        return {"input_ids": ids, "attention_mask": mask}


class LazyModel:
    """Stands in for the torch model while only the exported towers are used: ``cfg`` is here, any other
    attribute loads the real model first (``load()``), so rare paths (a learned fusion, torch fallback)
    still work, just not for free."""

    def __init__(self, cfg: Any, load: Any):
        self.cfg = cfg
        self._load = load
        self._model: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._model is None:
            self._model = self._load()
        return getattr(self._model, name)


def lean_parts(fingerprint: str) -> tuple[Any, Any] | None:
    """(ModelCfg, tokenizer) recorded beside the exported towers of ``fingerprint``, or None when a query
    needs the torch model anyway (towers missing, an LSTM tokenizer, a moved MiniLM folder)."""
    import json

    from ..config import ModelCfg, from_dict

    folder = export_dir(fingerprint)
    try:
        info = json.loads((folder / "lean.json").read_text())
        cfg = from_dict(ModelCfg, info["cfg"])
        tok = info.get("tokenizer") or {}
        if tok.get("kind") != "hf" or not exported(fingerprint) or not os.path.isdir(tok.get("path", "")):
            return None
        return cfg, HFTokenizerNumpy(tok["path"], int(tok["context_length"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
