"""Model loading: local Hugging Face directories, and the bundled SmolLM2 test model."""

from gdig.model.load import load_model, resolve_dtype
from gdig.model.smollm2 import cache_root, ensure_smollm2, smollm2_available, smollm2_gguf_path

__all__ = [
    "cache_root",
    "ensure_smollm2",
    "load_model",
    "resolve_dtype",
    "smollm2_available",
    "smollm2_gguf_path",
]
