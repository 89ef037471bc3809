"""Options of the influence engine, split at the stage boundaries (METHOD.md §1-4).

- :class:`FactorConfig`: what the factor-fitting stage depends on, and with it every model
  pass (examples, tracked layers, projections, autocast): a change refits the factors.
- :class:`ScoreConfig`: what seed preparation and candidate scoring add on top.
- :class:`ExecutionConfig`: how the work is batched and stored; changes no number.

A stage's fingerprint is the hash of its whole dataclass, so no field list is kept by
hand. Each field carries its help text; the CLI generates its flags from them, so every
field is a plain str/int/float/bool or None. Bad values raise
:class:`~gdig.io.validate.OptionError` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdig.io.validate import OptionError, at_least, one_of

TEMPLATES = ("paper", "chat")
METHODS = ("ekfac", "kfac")
FISHER_LABELS = ("empirical", "sampled")
AUTOCAST_DTYPES = ("bf16", "fp16")
FEATURE_DTYPES = ("float32", "float16")


def as_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-safe values (what fingerprints and saved factors hash)."""
    return dataclasses.asdict(cfg)


@dataclass
class FactorConfig:
    """Factor fitting and every model pass (examples, layers, projections, autocast)."""

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
            "layers; default: the MLP down-projection of every --layer-stride-th block"
        },
    )
    layer_stride: int = field(
        default=3, metadata={"help": "default layers: track blocks stride-1, 2*stride-1, ..."}
    )
    # --- factors (§3) ---
    method: str = field(
        default="ekfac",
        metadata={
            "choices": METHODS,
            "help": "Hessian approximation: 'ekfac' (refit eigen-diagonal) or 'kfac'",
        },
    )
    factor_samples: int = field(
        default=1000, metadata={"help": "pool examples sampled to fit the factors (0 = all)"}
    )
    factor_seed: int = field(default=0, metadata={"help": "seed of the factor-fitting sample"})
    fisher_labels: str = field(
        default="empirical",
        metadata={
            "choices": FISHER_LABELS,
            "help": "labels for the factors' gradients: 'empirical' (the data's own targets) "
            "or 'sampled' (drawn from the model's prediction)",
        },
    )
    # --- projections (§4): the factors also hold their projected-space twin ---
    k_in: int = field(default=32, metadata={"help": "projected input size per tracked layer"})
    k_out: int = field(default=32, metadata={"help": "projected output size per tracked layer"})
    proj_seed: int = field(default=0, metadata={"help": "seed of the random projections"})
    exact: bool = field(
        default=False,
        metadata={
            "help": "validation mode: no rank compression and identity projections (features are "
            "the full gradients); with --dtype float64 for float64 throughout"
        },
    )
    autocast: str | None = field(
        default=None,
        metadata={
            "choices": AUTOCAST_DTYPES,
            "help": "autocast dtype of the model passes: bf16, fp16 or none",
        },
    )

    def __post_init__(self) -> None:
        one_of("method", self.method, METHODS)
        one_of("fisher_labels", self.fisher_labels, FISHER_LABELS)
        one_of("autocast", self.autocast, AUTOCAST_DTYPES, none_ok=True)
        if self.template not in TEMPLATES and "{src}" not in self.template:
            raise OptionError(
                "template",
                f"use paper, chat or a format string containing {{src}}; got {self.template!r}",
            )
        at_least(self, 1, "max_length", "layer_stride", "k_in", "k_out")
        at_least(self, 0, "factor_samples")


@dataclass
class ScoreConfig:
    """Seed preparation and candidate scoring (damping, seed rank, top-k)."""

    damping: float | None = field(
        default=None, metadata={"help": "absolute damping lambda; overrides --damping-factor"}
    )
    damping_factor: float = field(
        default=0.1, metadata={"help": "damping lambda = damping_factor * mean(eigen-diagonal)"}
    )
    # 64: Spearman 0.977 against exact EK-FAC on SmolLM2 at 1.08x r = 32's end-to-end time
    # with 32 seeds (32: 0.892); METHOD.md "Accuracy of the default seed rank".
    rank: int = field(
        default=64,
        metadata={
            "help": "rank of each seed's preconditioned gradient (0 = no compression); 32 "
            "scores hundreds of seeds faster at lower accuracy (docs/METHOD.md)"
        },
    )
    top_k: int = field(default=5, metadata={"help": "seed ids kept per candidate (top benefit)"})
    # float16 features (each row scaled by a power of two first, so small gradients keep
    # their 11 bits) against float32, rescore() and k-means on the same store. SmolLM2-135M,
    # demo pool N=1000, 32 seeds, 10 layers, D=10240: Spearman of the mean benefit
    # 1.0000000 (max relative error 5e-3 on a mean near 0, median 1.4e-5), n_pos equal for
    # 999/1000 (one off by 1), top-1 seed 100 %, k-means labels and the gdig selection
    # identical. Synthetic N=2000, D=10240: all identical; at 1e-3 the scale (features
    # ~2e-7), unscaled float16 kept only 92.8 % of the k-means labels and 81 % of the
    # selection, the row-scaled one all. For comparison, rescore() itself (projected
    # features) agrees with the model pass's stats at Spearman 0.86. Default float32: the
    # bar for float16 was "every n_pos equal, Spearman >= 0.99999, identical clusters and
    # selection", and one n_pos differed. float16 halves the store (41.2 -> 20.7 KB per
    # candidate there); use it for large pools.
    feature_dtype: str = field(
        default="float32",
        metadata={
            "choices": FEATURE_DTYPES,
            "help": "dtype of the stored projected gradients (store/*/features.npy): float16 "
            "(each row scaled by a power of two) halves the largest part of the store; read "
            "back as float32, k-means and re-scoring agree closely but not bit for bit. "
            "Benefits, and so the quality filter, stay float32",
        },
    )

    def __post_init__(self) -> None:
        one_of("feature_dtype", self.feature_dtype, FEATURE_DTYPES)
        at_least(self, 0, "damping", "damping_factor", "rank")
        at_least(self, 1, "top_k")


@dataclass
class ExecutionConfig:
    """Batching and storage of the model passes (changes no score)."""

    batch_size: int | None = field(
        default=None, metadata={"help": "examples per batch (default: chosen to fit memory)"}
    )
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "padded tokens per batch when --batch-size is not given (default: auto)"},
    )
    factor_cache_mb: int = field(
        default=2048,
        metadata={
            "help": "memory for keeping the first pass's activations/gradients so the EK-FAC "
            "second pass needs no new model pass (0 = always recompute)"
        },
    )
    dense_seeds_mb: int = field(
        default=512,
        metadata={
            "help": "memory for the seeds' dense preconditioned gradients of small layers, "
            "which score a batch in one matmul where that is faster than the low-rank form "
            "(0 = always low-rank; the scores agree to rounding)"
        },
    )
    shard_size: int = field(
        default=4096, metadata={"help": "candidates per gradient-store shard (flushed to disk)"}
    )
    export_benefit_matrix: bool = field(
        default=False,
        metadata={"help": "also write the full N x S benefit_matrix.npy (float32) to the store"},
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "max_batch_tokens", "shard_size")
        at_least(self, 0, "factor_cache_mb", "dense_seeds_mb")


@dataclass
class EngineConfig:
    """The engine's three configs together (what fit_factors, prepare_seeds and
    score_candidates take)."""

    factors: FactorConfig = field(default_factory=FactorConfig)
    scoring: ScoreConfig = field(default_factory=ScoreConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    @property
    def effective_rank(self) -> int:
        """Seed rank actually used: 0 (exact) in exact mode."""
        return 0 if self.factors.exact else self.scoring.rank

    @classmethod
    def from_flat(cls, **options: Any) -> EngineConfig:
        """An EngineConfig from flat option names (``k_in=8, rank=4, batch_size=3``), each
        routed to the config of its stage; an unknown name raises TypeError."""
        parts: dict[str, Any] = {}
        for part in (FactorConfig, ScoreConfig, ExecutionConfig):
            names = {f.name for f in dataclasses.fields(part)}
            parts[_PART_NAMES[part]] = part(**{k: options.pop(k) for k in names & set(options)})
        if options:
            raise TypeError(f"unknown engine options {sorted(options)}")
        return cls(**parts)

    def flat(self) -> dict[str, Any]:
        """Every option under its flat name (what :meth:`from_flat` takes)."""
        return {**as_dict(self.factors), **as_dict(self.scoring), **as_dict(self.execution)}

    def with_options(self, **changes: Any) -> EngineConfig:
        """A copy with some flat options changed."""
        return EngineConfig.from_flat(**{**self.flat(), **changes})


_PART_NAMES = {FactorConfig: "factors", ScoreConfig: "scoring", ExecutionConfig: "execution"}
