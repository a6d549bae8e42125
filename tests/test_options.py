"""BuildOptions and TrainOptions: one object for how a build (a training run) runs, and the keyword arguments
of build_index (train) as overrides of it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from mmsearch import BuildOptions, IndexCfg, build_index
from mmsearch.config import TrainCfg
from mmsearch.errors import MMSearchError
from mmsearch.index import options as options_mod
from mmsearch.index.snapshot import read_manifest

TINY = BuildOptions(model="tiny", device="cpu", num_workers=0, progress=False)


def test_the_keyword_forms_list_exactly_the_option_fields():
    from mmsearch.train import loop

    for cls, kw in ((BuildOptions, options_mod.BuildKw), (loop.TrainOptions, loop.TrainKw)):
        assert typing.get_type_hints(kw) == typing.get_type_hints(cls), cls.__name__  # same names and types
        assert list(kw.__annotations__) == [f.name for f in dataclasses.fields(cls)]  # in the same order


def test_train_options_from_a_named_config_with_cli_overrides():
    from mmsearch.train.loop import TrainError, TrainOptions, load_train_cfg

    opts = TrainOptions.from_config(None, {"epochs": 2, "lr": None, "seed": 7}, out="runs/x", device="cpu")
    base = load_train_cfg("default")
    assert (opts.cfg.epochs, opts.cfg.seed, opts.cfg.lr) == (2, 7, base.lr)  # None: not given, the config's value
    assert (opts.out, opts.device, opts.model) == ("runs/x", "cpu", "default")
    assert TrainOptions().cfg == TrainCfg()
    with pytest.raises(TrainError, match="unknown train setting.*epoch"):
        TrainOptions.from_config("default", {"epoch": 2})


def test_replace_names_an_unknown_option_and_checks_sizes():
    assert TINY.replace(batch_size=4).batch_size == 4 and TINY.batch_size == 32  # a copy
    with pytest.raises(TypeError, match="unknown build option.*batchsize"):
        TINY.replace(batchsize=4)
    with pytest.raises(MMSearchError, match="shard size must be at least 1"):
        BuildOptions(shard_size=0)
    with pytest.raises(MMSearchError, match="batch size must be at least 1"):
        TINY.replace(batch_size=0)


def test_options_object_and_keyword_overrides_reach_the_build(small_catalog, tmp_path):
    out = tmp_path / "index"
    opts = TINY.replace(index=IndexCfg(index_type="hnsw", hnsw_m=8), batch_size=5, exclude=["*/nope/**"])
    first = build_index(small_catalog, out=out, options=opts)
    manifest = read_manifest(out)
    assert first.indexed == 12 and manifest["build"]["batch_size"] == 5
    assert manifest["index_cfg"]["index_type"] == "hnsw" and manifest["exclude"] == ["*/nope/**"]
    # keywords win over the object; the object itself is not changed
    again = build_index(small_catalog, out=out, options=opts, batch_size=3, rebuild=True)
    assert again.encoded == 12 and read_manifest(out)["build"]["batch_size"] == 3 and opts.batch_size == 5
    with pytest.raises(TypeError, match="unknown build option"):
        build_index(small_catalog, out=out, options=opts, rebuld=True)  # type: ignore[call-arg]


def test_options_import_without_faiss_or_torch():
    code = ("import sys; from mmsearch import BuildOptions, IndexCfg; BuildOptions(index=IndexCfg()); "
            "print(sorted(m for m in ('faiss', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
