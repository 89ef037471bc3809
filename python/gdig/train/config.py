"""Options of fine-tuning (:class:`FinetuneConfig`) and of evaluation (:class:`EvalConfig`).

Like the engine's configs (:mod:`gdig.engine.config`), each field carries its help text (and
``choices`` where there are some) in its metadata, so the CLI can generate its flags; every
field is a plain int/float/bool or None. Bad values raise
:class:`~gdig.io.validate.OptionError` naming the field. Names do not clash with the options
the CLI already has (budget, seed, batch_size, max_length, template, device, out, model,
pool, seeds, dtype, progress).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gdig.io.integrity import NOT_FINGERPRINTED
from gdig.io.validate import OptionError, at_least, one_of

# See gdig.train.precision (kept here so that reading options imports no torch).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning: target-only loss, AdamW, linear warm-up then linear decay."""

    epochs: float = field(
        default=2.0,
        metadata={"help": "passes over the training pairs (fractions allowed); see --max-steps"},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer steps to take; overrides --epochs (default: from --epochs)"},
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "peak learning rate of AdamW (reached after warm-up)"}
    )
    train_batch_size: int = field(
        default=8, metadata={"help": "examples per forward/backward pass (micro-batch)"}
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "help": "micro-batches per optimizer step (an optimizer step sees "
            "train_batch_size * grad_accum examples)"
        },
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={
            "help": "fraction of the optimizer steps spent warming the learning rate up "
            "linearly from 0; it then decays linearly to 0"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clip the gradient to this global L2 norm (0 = no clip)"}
    )
    train_seed: int = field(
        default=0, metadata={"help": "seed of the training data order and of dropout"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "choices": PRECISIONS,
            "help": "fp32, bf16 (autocast; weights stay fp32), or auto: bf16 on a CUDA device "
            "that supports it; on a CPU whichever a short measurement at the start finds "
            "faster (bf16 only when clearly so)",
        },
    )
    length_grouping: int = field(
        default=16,
        metadata={
            "help": "batches are cut from runs of this many batches' worth of randomly ordered "
            "examples sorted by length (less padding), then shuffled; 1 = plain random batches"
        },
    )
    checkpoint_every: int = field(
        default=50,
        metadata={
            "help": "optimizer steps between resumable checkpoints (0 = only the final one)",
            **NOT_FINGERPRINTED,
        },
    )
    log_every: int = field(
        default=10,
        metadata={
            "help": "optimizer steps between printed loss lines (0 = none)",
            **NOT_FINGERPRINTED,
        },
    )
    dev_every: int | None = field(
        default=None,
        metadata={
            "help": "optimizer steps between dev losses when a dev file is given (default: "
            "at the end of each epoch and of the run)",
            **NOT_FINGERPRINTED,
        },
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs)):
            raise OptionError("epochs", f"must be a finite number; got {self.epochs!r}")
        if self.epochs <= 0:
            raise OptionError("epochs", f"must be > 0; got {self.epochs}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise OptionError("learning_rate", f"must be > 0; got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise OptionError("warmup_ratio", f"must be in [0, 1); got {self.warmup_ratio}")
        one_of("precision", self.precision, PRECISIONS)
        at_least(self, 1, "max_steps", "train_batch_size", "grad_accum", "length_grouping")
        at_least(self, 1, "dev_every")
        at_least(self, 0, "weight_decay", "max_grad_norm", "checkpoint_every", "log_every")


@dataclass
class EvalConfig:
    """Greedy translation of test pairs and its scoring (BLEU, chrF)."""

    max_new_tokens: int = field(
        default=96,
        metadata={
            "help": "most tokens generated per translation; one that reaches it without EOS or "
            "a newline is counted as a runaway"
        },
    )
    eval_batch_size: int = field(
        default=16, metadata={"help": "test pairs translated together (left-padded)"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "choices": PRECISIONS,
            "help": "fp32, bf16 (autocast), or auto: bf16 on a CUDA device that supports it; "
            "on a CPU whichever a short measurement at the start finds faster",
        },
    )

    def __post_init__(self) -> None:
        one_of("precision", self.precision, PRECISIONS)
        at_least(self, 1, "max_new_tokens", "eval_batch_size")
