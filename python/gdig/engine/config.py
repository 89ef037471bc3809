"""Every option of the influence engine, in one dataclass whose fields carry their help text.

The CLI generates its flags from these fields, so each is a plain str/int/float/bool or None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TEMPLATES = ("paper", "chat")
METHODS = ("ekfac", "kfac")
FISHER_LABELS = ("empirical", "sampled")
AUTOCAST_DTYPES = ("bf16", "fp16")


@dataclass
class EngineConfig:
    """Options of factor fitting, seed preparation and candidate scoring (METHOD.md §1-4)."""

    # --- examples (§1) ---
    template: str = field(
        default="paper",
        metadata={
            "help": "prompt template: 'paper' (the G-DIG prompt), 'chat' (the tokenizer's chat "
            "template), or a format string using {src}, {src_lang_name}, {tgt_lang_name}"
        },
    )
    max_length: int = field(
        default=512, metadata={"help": "longest rendered example in tokens; longer are truncated"}
    )
    # --- tracked layers (§2) ---
    layers: str | None = field(
        default=None,
        metadata={
            "help": "regex (re.search) over module names selecting the tracked nn.Linear/Conv1D "
            "layers; default: the MLP down-projection of every `layer_stride`-th block"
        },
    )
    layer_stride: int = field(
        default=3, metadata={"help": "default layers: track blocks stride-1, 2*stride-1, ..."}
    )
    # --- factors (§3) ---
    method: str = field(
        default="ekfac",
        metadata={"help": "Hessian approximation: 'ekfac' (refit eigen-diagonal) or 'kfac'"},
    )
    factor_samples: int = field(
        default=1000, metadata={"help": "pool examples sampled to fit the factors (0 = all)"}
    )
    factor_seed: int = field(default=0, metadata={"help": "seed of the factor-fitting sample"})
    fisher_labels: str = field(
        default="empirical",
        metadata={
            "help": "labels for the factors' gradients: 'empirical' (the data's own targets) "
            "or 'sampled' (drawn from the model's prediction)"
        },
    )
    factor_cache_mb: int = field(
        default=2048,
        metadata={
            "help": "memory for keeping the first pass's activations/gradients so the EK-FAC "
            "second pass needs no new model pass (0 = always recompute)"
        },
    )
    damping: float | None = field(
        default=None, metadata={"help": "absolute damping lambda; overrides damping_factor"}
    )
    damping_factor: float = field(
        default=0.1, metadata={"help": "damping lambda = damping_factor * mean(eigen-diagonal)"}
    )
    # --- seeds and scoring (§4) ---
    rank: int = field(
        default=32,
        metadata={"help": "rank of each seed's preconditioned gradient (0 = no compression)"},
    )
    k_in: int = field(default=32, metadata={"help": "projected input size per tracked layer"})
    k_out: int = field(default=32, metadata={"help": "projected output size per tracked layer"})
    proj_seed: int = field(default=0, metadata={"help": "seed of the random projections"})
    exact: bool = field(
        default=False,
        metadata={
            "help": "validation mode: no rank compression and identity projections (features are "
            "the full gradients); load the model in float64 for float64 throughout"
        },
    )
    top_k: int = field(default=5, metadata={"help": "seed ids kept per candidate (top benefit)"})
    # --- execution ---
    batch_size: int | None = field(
        default=None, metadata={"help": "examples per batch (default: chosen to fit memory)"}
    )
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "padded tokens per batch when batch_size is not given (default: auto)"},
    )
    autocast: str | None = field(
        default=None, metadata={"help": "autocast dtype of the model pass: 'bf16', 'fp16' or none"}
    )
    shard_size: int = field(
        default=4096, metadata={"help": "candidates per gradient-store shard (flushed to disk)"}
    )
    export_benefit_matrix: bool = field(
        default=False,
        metadata={"help": "also write the full N x S benefit_matrix.npy (float32) to the store"},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and its allowed values."""
        if self.method not in METHODS:
            raise ValueError(f"EngineConfig.method={self.method!r}: use one of {METHODS}")
        if self.fisher_labels not in FISHER_LABELS:
            raise ValueError(
                f"EngineConfig.fisher_labels={self.fisher_labels!r}: use one of {FISHER_LABELS}"
            )
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"EngineConfig.autocast={self.autocast!r}: use one of {AUTOCAST_DTYPES} or None"
            )
        if self.template not in TEMPLATES and "{src}" not in self.template:
            raise ValueError(
                f"EngineConfig.template={self.template!r}: use 'paper', 'chat' or a format string "
                "containing {src}"
            )
        for name in ("max_length", "layer_stride", "k_in", "k_out", "top_k", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)}: must be >= 1")
        for name in ("rank", "factor_samples", "factor_cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)}: must be >= 0")
        if self.damping is not None and self.damping < 0:
            raise ValueError(f"EngineConfig.damping={self.damping}: must be >= 0")
        if self.damping_factor < 0:
            raise ValueError(f"EngineConfig.damping_factor={self.damping_factor}: must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"EngineConfig.batch_size={self.batch_size}: must be >= 1 or None")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ValueError(
                f"EngineConfig.max_batch_tokens={self.max_batch_tokens}: must be >= 1 or None"
            )

    @property
    def effective_rank(self) -> int:
        """Seed rank actually used: 0 (exact) in exact mode."""
        return 0 if self.exact else self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EngineConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    # Fields that change the fitted factors (a saved Factors is refused when they differ).
    FACTOR_FIELDS = (
        "template",
        "max_length",
        "layers",
        "layer_stride",
        "method",
        "factor_samples",
        "factor_seed",
        "fisher_labels",
    )

    def factor_key(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FACTOR_FIELDS}
