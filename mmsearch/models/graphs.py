"""The built-in models as shipped ONNX graphs: what a process without torch runs, indexing and searching.

Each tower is two graphs, a backbone and a head, so models that share a backbone (``default`` and
``bridge`` share EfficientNet-Lite0 and MiniLM) ship it once::

    weights/onnx/<backbone hash>.onnx       images (B, 3, S, S) -> feats (B, F);  input_ids, attention_mask -> (B, H)
    weights/onnx/<head hash>.onnx           feats -> image (B, D) [, visual (B, F)] unit rows;  (B, H) -> text (B, D)
    weights/onnx/models.json                model name -> fingerprint, config, its four graphs, tokenizer
    weights/tokenizers/<name>/tokenizer.json

Weights are stored as float16 and computed in float32 (:func:`fp16_weights`): half the size, embeddings
within cosine 0.9999 of the float32 graphs. int8 was measured and rejected: it moved retrieval
(``benchmarks/results/lean_graphs.md``). Written by ``python -m mmsearch.models.shipped
--write`` (needs torch); ``tests/test_shipped.py`` checks them against the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .registry import weights_dir

log = logging.getLogger(__name__)

OPSET = 17
GRAPH_SCHEME = 1


def graphs_dir() -> Path:
    return weights_dir() / "onnx"


def read_models() -> dict[str, Any]:
    try:
        data = json.loads((graphs_dir() / "models.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def entry_for(fingerprint: str) -> dict[str, Any] | None:
    """The shipped graphs of the model with this fingerprint, or None (not a shipped built-in)."""
    for entry in read_models().values():
        if entry.get("fingerprint") == fingerprint and all(
                (graphs_dir() / f"{g}.onnx").is_file() for g in entry["graphs"].values()):
            return entry
    return None


# ------------------------------------------------------------------------------------------ runtime
class ShippedTowers:
    """The shipped graphs of one model in onnxruntime, with the interface of ``onnx.OrtTowers``
    (``sessions`` names the towers open; ``image_channels`` / ``text`` return float32 unit rows)."""

    def __init__(self, entry: dict[str, Any], towers: tuple[str, ...] = ("image", "text"),
                 threads: int | None = None):
        import onnxruntime as ort

        from .onnx import session_options

        opts = session_options(threads)
        self.entry = entry

        def open_graph(key: str) -> Any:
            return ort.InferenceSession(str(graphs_dir() / f"{entry['graphs'][key]}.onnx"), opts,
                                        providers=["CPUExecutionProvider"])

        self.sessions: dict[str, tuple[Any, Any]] = {
            t: (open_graph(f"{t}_backbone"), open_graph(f"{t}_head")) for t in towers}

    def image_channels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        backbone, head = self.sessions["image"]
        parts = backbone.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        named = {o.name: v for o, v in zip(backbone.get_outputs(), parts)}  # feats [, logits]
        outs = head.run(None, {i.name: named[i.name] for i in head.get_inputs()})
        return {o.name: v for o, v in zip(head.get_outputs(), outs)}

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        backbone, head = self.sessions["text"]
        pooled = backbone.run(None, {"input_ids": np.asarray(input_ids, np.int64),
                                     "attention_mask": np.asarray(attention_mask, np.int64)})[0]
        return head.run(None, {"pooled": pooled})[0]


def tokenizer_for(entry: dict[str, Any]) -> Any:
    """The numpy tokenizer the entry's text tower takes (``onnx.HFTokenizerNumpy`` on the shipped files)."""
    from .onnx import HFTokenizerNumpy

    tok = entry["tokenizer"]
    return HFTokenizerNumpy(str(weights_dir() / "tokenizers" / tok["name"]), int(tok["context_length"]))


# ------------------------------------------------------------------------------------------- export
def _export(module: Any, args: tuple, inputs: list[str], outputs: list[str], axes: dict, path: Path) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def fp16_weights(path: Path, min_size: int = 65536) -> None:
    """Store the large float32 weights of the graph at ``path`` as float16, each followed by a Cast back to
    float32 (folded once when the session loads): half the size, float32 arithmetic, embeddings within
    cosine 0.9999 of float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < min_size:
            continue
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), init.name + "_f16"))
        casts.append(helper.make_node("Cast", [init.name + "_f16"], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_to_f32"))
    for n in reversed(casts):
        graph.node.insert(0, n)
    onnx.save(model, str(path))


def export_model(model: Any, name: str, folder: Path | None = None, fp16: bool = True) -> dict[str, Any]:
    """Write the four graphs of ``model`` (a DualEncoder) into ``folder`` (default :func:`graphs_dir`) and
    return its ``models.json`` entry; ``fp16=False`` keeps float32 weights (the benchmark's reference).
    Needs torch and onnx."""
    import torch

    from .encoders import l2n

    folder = folder or graphs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    visual = bool(model.cfg.visual_channel)
    img, txt = model.image_tower, model.text_tower

    from .encoders import ImageNetBridge

    bridges = [m for m in img.head.modules() if isinstance(m, ImageNetBridge)]
    with_logits = bool(bridges)  # the ImageNet classifier runs in the (shared) backbone graph, not per head

    class ImageBackbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = img.backbone

        def forward(self, images):
            feats = self.backbone(images)
            return (feats, self.backbone.classify(feats)) if with_logits else feats

    class ImageHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = img.head

        def forward(self, feats, logits=None):
            saved = [b.classify for b in bridges]
            try:
                for b in bridges:
                    b.classify = lambda _feats: logits  # (B, 1000), computed by the backbone graph
                emb = l2n(self.head(feats))
            finally:
                for b, fn in zip(bridges, saved):
                    b.classify = fn
            return (emb, l2n(feats)) if visual else emb

    class TextBackbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = txt.backbone

        def forward(self, input_ids, attention_mask):
            return self.backbone(input_ids, attention_mask)

    class TextHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = txt.head

        def forward(self, pooled):
            return l2n(self.head(pooled))

    size, nf, hw = model.cfg.image.image_size, img.num_features, txt.backbone.num_features
    ids = torch.ones(2, 8, dtype=torch.long)
    jobs = {
        "image_backbone": (ImageBackbone(), (torch.zeros(2, 3, size, size),), ["images"],
                           ["feats", "logits"] if with_logits else ["feats"],
                           {"images": {0: "batch"}, "feats": {0: "batch"}, "logits": {0: "batch"}}),
        "image_head": (ImageHead(), (torch.zeros(2, nf), torch.zeros(2, 1000)) if with_logits else (torch.zeros(2, nf),),
                       ["feats", "logits"] if with_logits else ["feats"], ["image", "visual"] if visual else ["image"],
                       {"feats": {0: "batch"}, "logits": {0: "batch"}, "image": {0: "batch"}, "visual": {0: "batch"}}),
        "text_backbone": (TextBackbone(), (ids, ids), ["input_ids", "attention_mask"], ["pooled"],
                          {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                           "pooled": {0: "batch"}}),
        "text_head": (TextHead(), (torch.zeros(2, hw),), ["pooled"], ["text"], {"pooled": {0: "batch"},
                                                                                  "text": {0: "batch"}}),
    }
    graphs = {}
    for key, (module, args, inputs, outputs, axes) in jobs.items():
        tmp = folder / f".{key}.{os.getpid()}.tmp.onnx"
        _export(module, args, inputs, outputs, {k: v for k, v in axes.items() if k in inputs + outputs}, tmp)
        if fp16:
            fp16_weights(tmp)
        digest = _digest(tmp)  # content-addressed: a part two models share (a backbone) is stored once
        graphs[key] = digest
        os.replace(tmp, folder / f"{digest}.onnx")
        log.info("%s: %s -> %s.onnx (%.1f MB)", name, key, digest, (folder / f"{digest}.onnx").stat().st_size / 1e6)
    from ..config import to_dict

    return {"fingerprint": model.fingerprint(), "cfg": to_dict(model.cfg), "graphs": graphs,
            "tokenizer": {"name": model.cfg.text.backbone, "context_length": int(model.cfg.text.context_length)}}
