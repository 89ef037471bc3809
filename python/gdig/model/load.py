"""Loading a causal LM and its tokenizer from a local directory, ready for the engine."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gdig.io.dtypes import resolve_dtype
from gdig.io.errors import UsageError


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "float32",
    progress: bool = True,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local Hugging Face directory; never downloads.

    The model is in eval mode on ``device`` in ``dtype`` (default float32; 'float64' for the
    engine's exact mode). A tokenizer without a pad token gets its EOS as pad (the engine
    masks padding itself). With ``progress=False`` transformers' progress bars ("Loading
    weights", "Loading checkpoint shards") and its info/warning logging are off during the
    load, and restored afterwards. Turn a ``--model`` value into ``path`` with
    :func:`resolve_model`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face model directory (no config.json); for SmolLM2 use "
            "gdig.model.ensure_smollm2() to get one"
        )
    torch_dtype = resolve_dtype(dtype)
    quiet = contextlib.nullcontext() if progress else quiet_transformers()
    with quiet:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and logging below ERROR; restore both after.

    transformers' progress-bar switch also flips huggingface_hub's bars, so the hub's own
    per-group state is saved and put back as it was.
    """
    from transformers.utils import logging as tf_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    hub_states = getattr(hub_tqdm, "progress_bar_states", None)
    saved_hub = dict(hub_states) if isinstance(hub_states, dict) else None
    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():  # the hub warns when HF_HUB_DISABLE_PROGRESS_BARS rules
        warnings.simplefilter("ignore")
        tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tf_logging.enable_progress_bar()
        if saved_hub is not None:
            hub_states.clear()
            hub_states.update(saved_hub)


# ---------------------------------------------------------------------------------------
# --model: a value on the command line -> a local Hugging Face folder

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_MODEL_FORMS = (
    "give a local Hugging Face model folder (saved with save_pretrained), a Hugging Face id "
    "(org/name) already in the local cache, or 'smollm2'"
)


def resolve_model(spec: str, progress: bool = True) -> Path:
    """The local folder a ``--model`` value names; never downloads anything.

    * ``'smollm2'``: the bundled SmolLM2-135M-Instruct (:func:`ensure_smollm2`).
    * an existing folder: it must hold config.json and the weights (model.safetensors,
      pytorch_model.bin, or a shard index with all its shards).
    * ``org/name``: a Hugging Face hub id found in the local cache ($HF_HUB_CACHE, else
      $HF_HOME/hub, else ~/.cache/huggingface/hub), read at call time, offline only.

    Anything else raises :class:`UsageError` with a one-line message naming the flag.
    ``progress=False`` silences the bars of the one-time SmolLM2 conversion.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--model {spec!r}: empty; {_MODEL_FORMS}")
    if spec == "smollm2":
        from gdig.model.smollm2 import ensure_smollm2

        with contextlib.nullcontext() if progress else quiet_transformers():
            return _check_model_folder(spec, ensure_smollm2())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _check_model_folder(spec, path)
    if path.exists():
        raise UsageError(
            f"--model {spec}: is a file, not a folder; give the folder that holds config.json "
            "and the weights"
        )
    if _HUB_ID.fullmatch(spec) and ".." not in spec and "--" not in spec:
        return _check_model_folder(spec, _cached_hub_snapshot(spec))
    raise UsageError(f"--model {spec}: no such folder; {_MODEL_FORMS}")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now.

    huggingface_hub reads these variables once, at import; reading them here makes a
    change after import (a test's monkeypatch, a wrapper script) count.
    """
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _cached_hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id`` (its 'main' ref), found offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError

    try:  # newer hubs tell a partial snapshot apart
        from huggingface_hub.errors import IncompleteSnapshotError as incomplete
    except ImportError:
        incomplete = ()
    cache = hf_hub_cache()
    try:
        folder = snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
    except HFValidationError:
        raise UsageError(f"--model {repo_id}: no such folder; {_MODEL_FORMS}") from None
    except LocalEntryNotFoundError as e:
        if isinstance(e, incomplete):
            what = "is only partly in the local Hugging Face cache"
        else:
            what = "is not a local folder and not in the local Hugging Face cache"
        raise UsageError(
            f"--model {repo_id}: {what} ({cache}); gdig never downloads: run "
            f"`hf download {repo_id}` (huggingface_hub >= 0.34; older: `huggingface-cli "
            f"download`) on a machine with access and copy the "
            "cache here (or set HF_HUB_CACHE), or pass a local folder"
        ) from None
    return Path(folder)


def _check_model_folder(spec: str, path: Path) -> Path:
    """``path`` if it holds a loadable model (config.json and weights), else UsageError."""
    if not (path / "config.json").is_file():
        raise UsageError(
            f"--model {spec}: not a Hugging Face model folder (no config.json in {path}); "
            "give a local folder saved with save_pretrained, or 'smollm2'"
        )
    problem = _weights_problem(path)
    if problem:
        raise UsageError(f"--model {spec}: {problem}")
    return path


def _weights_problem(path: Path) -> str | None:
    """What is wrong with the weights in ``path``, in transformers' order of lookup."""
    for single, index_name in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path / single).is_file():
            return None
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                return f"{index} is not a readable shard index ({type(e).__name__}: {e})"
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                return (
                    f"{len(missing)} of {len(shards)} weight shards named in {index} are "
                    f"missing ({', '.join(missing[:3])}{more})"
                )
            return None
    if any(path.glob("model-*.safetensors")) or any(path.glob("pytorch_model-*.bin")):
        return (
            f"weight shards in {path} but no shard index (model.safetensors.index.json or "
            "pytorch_model.bin.index.json); save the model again with save_pretrained"
        )
    return (
        f"no weights (*.safetensors or pytorch_model*.bin) in {path}; save the model with "
        "save_pretrained"
    )
