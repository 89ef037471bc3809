"""Model loading: --model and --device values, local Hugging Face folders, bundled SmolLM2."""

from gdig.model.device import check_device_available, parse_device
from gdig.model.load import hf_hub_cache, load_model, resolve_dtype, resolve_model
from gdig.model.smollm2 import cache_root, ensure_smollm2, smollm2_available, smollm2_gguf_path

__all__ = [
    "cache_root",
    "check_device_available",
    "ensure_smollm2",
    "hf_hub_cache",
    "load_model",
    "parse_device",
    "resolve_dtype",
    "resolve_model",
    "smollm2_available",
    "smollm2_gguf_path",
]
