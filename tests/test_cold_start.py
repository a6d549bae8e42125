"""Cold-start cuts (issue 5) change no embedding: mmsearch/bert.py equals transformers' BertModel exactly,
with the same parameters (so the model fingerprint indexes record is unchanged), and loading a model no
longer imports transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmsearch.bert import BertEncoder
from mmsearch.encoders import minilm_path
from mmsearch.tokenizer import HFTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["red shoes", "a photo of a banana.", "chaussures rouges 👠", "",
         "a waterproof hiking boot with a thick rubber sole, leather laces and a padded collar, size 42 " * 3]


@pytest.fixture(scope="module")
def both():
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertModel

    transformers.utils.logging.disable_progress_bar()
    path = minilm_path()
    return BertEncoder.from_folder(path).eval(), BertModel.from_pretrained(path, local_files_only=True).eval(), path


def test_same_parameters_as_bertmodel(both):
    ours, ref, _ = both
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)  # names and order: what DualEncoder.fingerprint hashes
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("batch", [TEXTS, TEXTS[:1], TEXTS[1:3]], ids=["padded", "single", "pair"])
def test_outputs_equal_bertmodel(both, batch):
    ours, ref, path = both
    tokens = HFTokenizer(path, 64)(batch)
    with torch.inference_mode():
        mine = ours(tokens["input_ids"], tokens["attention_mask"])
        theirs = ref(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    # the same ops in the same order: bit for bit, not just close
    assert torch.equal(mine, theirs)


def test_loading_default_does_not_import_transformers():
    code = ("import sys; from mmsearch import create_model; m, p, t = create_model('default', device='cpu'); "
            "print(m.fingerprint()); print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    fingerprint, modules = res.stdout.split("\n")[-3:-1]
    assert modules == "[]"
    # the fingerprint the shipped default had with transformers' BertModel (indexes built before stay valid)
    assert fingerprint == "370e2c8e1aa87f37"
