"""Does a gdig-selected subset train a better translator than what an MT engineer tries first?

    python benchmarks/quality/run_quality.py                         # the issue's experiment
    python benchmarks/quality/run_quality.py --smoke --out ../q-smoke  # tiny random model, < 2 min

One command runs the whole experiment, resumably (hours on a 2-core CPU: ``TIME_BUDGET``):

1. Data (``data.py``), per direction: seeds, a noisy pool (documented injected noise,
   ``noise`` field), dev, an in-domain test set and an other-domain (gettext) test set, all
   disjoint. The main direction is ``--direction`` (zh-en); ``--also de-en:10%`` adds
   another direction with the same arms and settings at its own budgets, in its own work
   subfolder, with its own ``gdig run`` and dev choice.
2. Score each pool once with the real CLI (``gdig run``; ``--finetune-first``: with the base
   model fine-tuned on the raw pool, the paper's flow), then re-select for every arm, budget
   and training seed with ``gdig select --name`` (no model pass). An *arm* is a selector of
   ``gdig.select.choosers.SELECTORS`` alone (``gdig``: the scoring chosen on dev) or with a
   scoring of ``gdig.select.scorings.SCORINGS`` (``quality-cosine``), or ``all`` (the whole
   pool, trained with ``--whole-seeds``). A budget is a number of pairs or a percentage of
   the pool (``5%``). The selection's random seed is the training seed.
3. For every (arm, budget, training seed): fine-tune fresh from the base model on the
   subset, decode both test sets, score BLEU and chrF (hypotheses kept), record the subset's
   noise rate and composition.
4. Report, regenerated after every finished run (a partial experiment has a partial table,
   marked so): ``results.json``, ``RESULTS.md`` (a plain-words summary generated from the
   tables, mean +- std per arm, noise, a two-level bootstrap of gdig against every other
   arm beside the per-seed differences, time per run and planned total, command, commit,
   machine; relative paths only) and ``quality.png``.

Choice step on dev only (``--dev-taus``/``--dev-scorings``): for each (tau, scoring), select
gdig at the smallest budget, fine-tune (training seed 0), decode dev; the best dev chrF fixes
tau and the scoring of the arms without one. The test sets never choose.

Order: the main direction's largest budget (every arm, seed by seed), then its smaller
budgets, then its whole pool, then each ``--also`` direction the same way (with
``--workers``, each direction's whole pool first).

Resumable: every finished run leaves ``DIRECTION/runs/KEY/result.json`` under ``--out``
and is skipped next time when what it depends on (``spec``: the subset's content, training
and decoding settings, the test data) is unchanged; a run whose spec equals a finished run's
(two arms or dev trials that chose the same pairs) reuses it. ``gdig run`` resumes by itself.
The work folder may not outlive its machine, so the part of it the report is computed from
is mirrored beside the report after every finished run (``--durable``, default
``REPORT_DIR/durable``: each run's result and hypotheses, the selected subsets and the
precision decided, a few MB) and copied back into an emptied work folder at the start (the
precision too, even where this machine would decide otherwise): a new machine redoes only
``gdig run`` (its subsets are found by the fingerprint of its inputs and options) and the
unfinished runs. ``--directions de-en`` runs only the named directions and keeps every other
one's part of results.json as the report folder has it (its runs, tables, commit, machine
and precision, named in RESULTS.md), when it was written with the same settings: for a
direction whose work folder was lost before ``--durable`` existed.

``--workers N`` trains and decodes N runs at once, each in its own process with
``--threads-per-worker`` torch threads (default: this process's threads split evenly). On
two cores two one-thread workers finished a SmolLM2 fine-tune and decoding each in 23 s
where one two-thread process took 31 s (1.34x the throughput): the small model's matmuls and
the Python between them scale poorly over threads. Data, ``gdig run``, the dev choice, the
selections and the reports stay in the main process, in the order above; only the order in
which runs finish changes. Thread count changes floating-point rounding only, and each
result records its own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (HERE, HERE.parent, ROOT / "python"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

if TYPE_CHECKING:
    from gdig.train.config import EvalConfig, FinetuneConfig

import data as qdata  # noqa: E402
import harness  # noqa: E402
import study as qstudy  # noqa: E402
import summary as qsummary  # noqa: E402

WHOLE = "all"  # the arm of the whole pool (no budget)
REFERENCE = "gdig"  # the arm every other arm is tested against
TEST_SETS = ("test_in", "test_other")
DEV_CHOICE_SEED = 0  # the training seed of the dev choice's trials
DEFAULT_ARMS = (
    "gdig,quality-raw,quality-cosine,diversity,random,rules,loss,less,coverage-cosine," + WHOLE
)

# Time arithmetic of the defaults. Measured with `run_quality.py --measure-rates` (commit
# 11b92d5 + this driver; SmolLM2-135M-Instruct, the current gdig.train: length-grouped
# batches, key-value-cache decoding, precision auto -> fp32 here, bf16 autocast measured
# 21x slower for training) on the 2-core AMD EPYC Zen3 (avx2, fma; no avx512/bf16) while it
# was shared (1-minute load 13.5), so with one torch thread, where CPU seconds are what one
# core delivers (with two threads on a loaded machine the spin-waiting threads inflated
# them ~4x):
#   one fine-tune of 150 zh-en pool pairs, 2 epochs, batch 8 (38 steps, 300 examples, 7%
#     padding): 249 CPU s = 0.83 s per example (983 s wall at that load)
#   decoding 100 in-domain test sentences, batch 32, max 64 new tokens (8.7 on average):
#     24 CPU s = 0.24 s per sentence (85 s wall), model load ~3 s
#   gdig run: 0.12 s per pool pair on two quiet cores (earlier measurement: 1,000 pairs in
#     161 s, fit 47 s + score 104 s); ~0.2 s on one core
# The plan below takes these one-core rates as the wall time of a run, i.e. a machine with a
# core to spare; two quiet cores should take roughly 0.6x of it (an estimate: not measured,
# the machine was never quiet), and a machine loaded as it was when measured ~4x (983 s wall
# against 249 CPU s).
# Defaults: zh-en pool 3,000 at budgets 10% and 5% (300 and 150 pairs) and de-en at 10%;
# 9 selector arms x 3 training seeds; the whole pool once; 300 + 300 test sentences; dev
# choice 2 taus x 3 scorings (6 trials at most; a trial choosing the subset of an earlier
# one reuses it), 150 pairs + 200 dev sentences each:
#   a 300-pair run: 600 examples x 0.83 + 600 sentences x 0.24 + 3 loads = ~11 min
#   a 150-pair run: 300 x 0.83 + 600 x 0.24 + 9 = ~6.7 min; whole pool: 6,000 x 0.83 = ~86 min
#   zh-en: 27 x 11 min (4.9 h) + 27 x 6.7 min (3.0 h) + whole pool 1.4 h + gdig run 0.2 h
#     + dev choice <= 0.5 h = ~10 h; de-en: 4.9 + 1.4 + 0.2 + dev choice at 300 pairs
#     <= 0.9 h = ~7.5 h; total ~17.6 h (two quiet cores: ~11 h; loaded as measured: days)
# `planned_parts` does this sum for any settings; TIME_BUDGET is its figure for the defaults
# (printed at the start and written into RESULTS.md beside the measured times).
SECONDS = {
    "train_example": 0.83,
    "decode_sentence": 0.24,
    "model_load": 3.0,
    "gdig_run_pair": 0.2,
    "select": 10.0,
}
SMOKE = {
    "n_seeds": 4,
    "n_pool": 40,
    "n_dev": 10,
    "n_test": 10,
    "n_test_other": 10,
    "budgets": "25%",
    "also": "de-en:25%",
    "train_seeds": "0",
    "max_steps": 2,
    "train_batch_size": 4,
    "max_new_tokens": 4,
    "eval_batch_size": 10,
    "factor_samples": 40,
    "layer_stride": 1,
    "gdig_args": "--k-in 4 --k-out 4 --rank 4",
    "bootstrap_n": 50,
    "dev_taus": "0.9",
    "dev_scorings": "raw,cosine",  # the same gdig subset: the second trial reuses the first
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------- arms, budgets


@dataclass(frozen=True)
class Arm:
    """What chooses a training subset: ``selector`` with ``scoring`` (None: the scoring
    chosen on dev), the whole pool (``selector`` None), or a variant of gdig from the dev
    study's table (``gdig+VARIANT``: ``variant``), to confirm on the test sets what won on
    dev."""

    name: str
    selector: str | None
    scoring: str | None = None
    variant: str | None = None

    @property
    def whole(self) -> bool:
        return self.selector is None


def parse_arm(text: str) -> Arm:
    """``SELECTOR``, ``SELECTOR-SCORING``, ``gdig+VARIANT`` or ``all``, checked against
    gdig's two tables and the study's."""
    from gdig.select.choosers import SELECTORS
    from gdig.select.scorings import SCORINGS

    if text == WHOLE:
        return Arm(text, None)
    variant = text.removeprefix(REFERENCE + "+")
    if variant != text and variant != qstudy.REFERENCE and variant in qstudy.BY_NAME:
        return Arm(text, REFERENCE, variant=variant)
    if text in SELECTORS:
        return Arm(text, text)
    for selector in SELECTORS:
        for scoring in SCORINGS:
            if text == f"{selector}-{scoring}":
                return Arm(text, selector, scoring)
    raise ValueError(
        f"arm {text!r}: use SELECTOR or SELECTOR-SCORING (selectors {', '.join(SELECTORS)}; "
        f"scorings {', '.join(SCORINGS)}), {REFERENCE}+VARIANT (variants of study.py: "
        f"{', '.join(v for v in qstudy.BY_NAME if v != qstudy.REFERENCE)}) or {WHOLE!r}"
    )


def parse_budgets(text: str, n_pool: int) -> list[int]:
    """Budgets as numbers of pairs, largest first: ``300`` or ``10%`` (of the pool), gdig's
    own reading (``--budget``)."""
    from gdig.io.validate import count_or_fraction
    from gdig.select.config import SelectConfig

    sizes = {SelectConfig(budget=count_or_fraction(b)).budget_of(n_pool) for b in _words(text)}
    return sorted(sizes, reverse=True)


def parse_also(text: str) -> list[tuple[str, str]]:
    """``de-en:10%`` (``;`` between several): (direction, budgets)."""
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        direction, sep, budgets = part.partition(":")
        if not sep or direction not in qdata.SOURCES or not budgets.strip():
            raise ValueError(
                f"--also {part!r}: use DIRECTION:BUDGETS, e.g. de-en:10% (directions "
                f"{', '.join(sorted(qdata.SOURCES))})"
            )
        out.append((direction, budgets))
    return out


def planned_parts(args: argparse.Namespace, budgets: list[int]) -> dict[str, float]:
    """Seconds one direction of ``args`` takes at the ``SECONDS`` rates, by part."""
    r = SECONDS
    n_arms = sum(not arm.whole for arm in args.arm_list)
    n_seeds = len(_ints(args.train_seeds))
    n_whole = len(_ints(args.whole_seeds)) if any(arm.whole for arm in args.arm_list) else 0
    n_trials = len(_floats(args.dev_taus) or [0]) * len(_words(args.dev_scorings) or [0])
    epochs = args.epochs  # (--max-steps is not foreseen here)

    def run(n_train: int, n_sentences: int, n_decodes: int) -> float:
        return (
            r["model_load"] * (1 + n_decodes)
            + n_train * epochs * r["train_example"]
            + n_sentences * r["decode_sentence"]
        )

    n_test = args.n_test + args.n_test_other
    parts = {f"budget {b}": n_arms * n_seeds * (run(b, n_test, 2) + r["select"]) for b in budgets}
    parts["whole pool"] = n_whole * run(args.n_pool, n_test, 2)
    parts["gdig run"] = args.n_pool * r["gdig_run_pair"]
    if n_trials > 1:
        parts["dev choice"] = n_trials * (run(min(budgets), args.n_dev, 1) + r["select"])
    return parts


def time_budget(args: argparse.Namespace) -> str:
    """The time arithmetic of ``args``' directions, in words."""
    plans = {
        d: planned_parts(args, parse_budgets(b, args.n_pool))
        for d, b in [(args.direction, args.budgets), *args.also_list]
    }
    total = sum(sum(p.values()) for p in plans.values())
    return (
        f"at one core's rates ({SECONDS['train_example']} s per training example, "
        f"{SECONDS['decode_sentence']} s per decoded sentence, {SECONDS['gdig_run_pair']} s "
        "per pool pair scored; not measured: two quiet cores should take roughly 0.6x, a "
        "loaded machine took 4x): "
        + " + ".join(
            f"{d} ({', '.join(f'{k} {v / 3600:.2f} h' for k, v in p.items())})"
            for d, p in plans.items()
        )
        + f" = {total / 3600:.1f} h"
    )


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from gdig.select.scorings import SCORINGS

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny random LLaMA and tiny sizes")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="folder of the shared pairs (default: $GDIG_DATA_DIR, else ../shared/data beside "
        "the repository)",
    )
    ap.add_argument(
        "--out",
        default=str(ROOT.parent / "quality-work"),
        help="work folder, per direction its data, gdig run, subsets and runs (default: "
        "../quality-work beside the repository)",
    )
    ap.add_argument(
        "--report-dir",
        default=None,
        help="where RESULTS.md, results.json and quality.png go (default: benchmarks/quality; "
        "with --smoke: --out)",
    )
    ap.add_argument(
        "--durable",
        default=None,
        help="where the work folder's results, hypotheses and subsets are mirrored after "
        "every run and restored from at the start ('' = nowhere; default: REPORT_DIR/durable)",
    )
    ap.add_argument("--model", default="smollm2", help="base model (gdig --model forms)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g = ap.add_argument_group("data (data.py)")
    g.add_argument("--direction", default="zh-en", choices=sorted(qdata.SOURCES))
    g.add_argument(
        "--also",
        default="de-en:10%",
        help="more directions, DIRECTION:BUDGETS (';' between several; '' = none): the same "
        "arms and settings, their own data, gdig run, dev choice and work subfolder",
    )
    g.add_argument(
        "--directions",
        default="",
        help="run only these of the planned directions (comma-separated; '' = all); each "
        "other one's part of the report folder's results.json is kept as it is there (e.g. "
        "a finished direction whose work folder was lost)",
    )
    g.add_argument("--n-seeds", type=int, default=32, help="trusted seed pairs")
    g.add_argument("--n-pool", type=int, default=3000, help="pool pairs")
    g.add_argument("--n-dev", type=int, default=200, help="dev pairs")
    g.add_argument("--n-test", type=int, default=300, help="in-domain test pairs")
    g.add_argument("--n-test-other", type=int, default=300, help="other-domain test pairs")
    g.add_argument("--noise-frac", type=float, default=0.3, help="noisy fraction of the pool")
    g.add_argument("--data-seed", type=int, default=20240520, help="seed of the splits")
    g = ap.add_argument_group("selection (gdig run / gdig select)")
    g.add_argument(
        "--budgets", default="5%,10%", help="subset sizes: pairs (300) or %% of the pool (10%%)"
    )
    g.add_argument(
        "--arms",
        default=DEFAULT_ARMS,
        help="SELECTOR (scoring chosen on dev) or SELECTOR-SCORING, or 'all' (the whole pool)",
    )
    g.add_argument("--tau", type=float, default=0.9, help="gdig --tau (unless dev chooses)")
    g.add_argument("--scoring", default="raw", help="gdig --scoring (unless dev chooses)")
    g.add_argument("--factor-samples", type=int, default=400, help="gdig --factor-samples")
    g.add_argument("--layer-stride", type=int, default=6, help="gdig --layer-stride")
    g.add_argument("--autocast", default="none", help="gdig --autocast (bf16, fp16, none)")
    g.add_argument(
        "--gdig-args", default="", help='more `gdig run` flags, e.g. --gdig-args="--rank 16"'
    )
    g.add_argument(
        "--dev-taus", default="0.8,0.9", help="choice step on dev: taus to try ('' = --tau)"
    )
    g.add_argument(
        "--dev-scorings",
        default=",".join(SCORINGS),
        help="choice step on dev: scorings to try ('' = --scoring); a trial that selects the "
        "same subset as an earlier one reuses its run",
    )
    g = ap.add_argument_group("fine-tuning (gdig.train)")
    g.add_argument("--train-seeds", default="0,1,2", help="training seeds of the subsets")
    g.add_argument("--whole-seeds", default="0", help="training seeds of the whole pool")
    g.add_argument(
        "--finetune-first", action="store_true", help="score with the model tuned on the pool"
    )
    g.add_argument("--epochs", type=float, default=2.0)
    g.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    g.add_argument("--learning-rate", type=float, default=1e-4)
    g.add_argument("--train-batch-size", type=int, default=8)
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument(
        "--precision",
        default="auto",
        help="fine-tuning and decoding: fp32, bf16 or auto (gdig.train: bf16 only where a "
        "short measurement finds it faster)",
    )
    g.add_argument("--template", default="paper", help="prompt template (training and decoding)")
    g.add_argument("--max-length", type=int, default=512, help="longest training example")
    g.add_argument("--keep-models", action="store_true", help="keep every fine-tuned model")
    g = ap.add_argument_group("evaluation")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--eval-batch-size", type=int, default=32)
    g.add_argument("--bootstrap-n", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars"
    )
    g = ap.add_argument_group("the dev study (study.py)")
    g.add_argument(
        "--study",
        action="store_true",
        help="run only the dev study of the main direction (STUDY.md, study.json)",
    )
    g.add_argument(
        "--study-variants", default="", help="comma-separated variants of study.py ('' = all)"
    )
    g.add_argument("--study-seeds", default="0", help="training seeds of the study")
    g.add_argument(
        "--study-budget", default="", help="the study's budget ('' = the smallest budget)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained and decoded at once, each in its own process (see the top)",
    )
    ap.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="torch threads of each worker (default: this process's threads / --workers)",
    )
    ap.add_argument(
        "--measure-rates",
        action="store_true",
        help="only time one fine-tune on the smallest budget of the pool (training seed 0) and "
        "the decoding of 100 in-domain test sentences, print the rates SECONDS holds, and stop",
    )
    return ap


# What parse_args adds to the namespace, parsed from the options (not options themselves).
PARSED = ("arm_list", "also_list", "variant_list")
# Options that say where an invocation reads and writes (left out of results.json's
# non-default options) ...
WHERE_ONLY = ("out", "report_dir", "data_dir", "progress", "durable")
# ... and, with how fast and which directions, those that do not change what its numbers
# mean: a direction kept from an earlier results.json may differ from this one in these only.
INVOCATION_ONLY = (*WHERE_ONLY, "workers", "threads_per_worker", "directions")
# What --durable keeps of a direction's work folder (paths below it): every run's result and
# hypotheses (what the tables and the bootstrap read) and the subsets they trained on; not
# the evaluations' own hyps_*.json (result.json holds them, and they name the model's path).
DURABLE = ("runs/*/result.json", "runs/*/hyps_*.jsonl", "subsets/*/*.jsonl")
# ... and of the whole work folder: the precision decided once (a new machine that decided
# anew would give every finished run another spec, and the directions other numerics)
DURABLE_TOP = ("precision.json",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from gdig.io.validate import OptionError

    ap = build_parser()
    pre, _ = ap.parse_known_args(argv)
    if pre.smoke:
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    if args.report_dir is None:
        args.report_dir = args.out if args.smoke else str(HERE)
    if args.durable is None:
        args.durable = str(Path(args.report_dir) / "durable")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    try:
        args.arm_list = [parse_arm(a) for a in _words(args.arms)]
        args.also_list = parse_also(args.also)
        args.variant_list = qstudy.parse_variants(args.study_variants)
        if args.study_budget:
            parse_budgets(args.study_budget, args.n_pool)
        for text in [args.budgets] + [b for _, b in args.also_list]:
            parse_budgets(text, args.n_pool)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    except OptionError as e:  # a budget of 0 or 150%
        ap.error(f"budgets: {e}")
    if args.workers < 1 or (args.threads_per_worker or 1) < 1:
        ap.error("--workers and --threads-per-worker: use 1 or more")
    if not any(a.name == REFERENCE for a in args.arm_list):
        ap.error(f"--arms: must hold {REFERENCE!r}, the arm the others are tested against")
    if len({a.name for a in args.arm_list}) != len(args.arm_list):
        ap.error("--arms: an arm is named twice")
    if args.direction in {d for d, _ in args.also_list}:
        ap.error(f"--also: {args.direction} is already the main direction")
    planned = [args.direction, *(d for d, _ in args.also_list)]
    unknown = [d for d in _words(args.directions) if d not in planned]
    if unknown:
        ap.error(f"--directions: {', '.join(unknown)} not planned (planned: {', '.join(planned)})")
    if args.directions and args.study:
        ap.error("--directions: not with --study (the study runs the main direction)")
    from gdig.train.config import PRECISIONS

    if args.precision not in PRECISIONS:
        ap.error(f"--precision {args.precision!r}: use one of {', '.join(PRECISIONS)}")
    return args


# The defaults' plan, in words (printed at the start and written into RESULTS.md).
TIME_BUDGET = time_budget(parse_args([]))


# --------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def mirror(src: Path, dst: Path, *, missing_only: bool, patterns=DURABLE) -> int:
    """Copy the files of ``patterns`` under ``src`` to the same places under ``dst``: each
    one that ``dst`` lacks, and (``missing_only`` False) each one whose content differs; the
    number copied."""
    n = 0
    for pattern in patterns:
        for f in sorted(src.glob(pattern)):
            to = dst / f.relative_to(src)
            if to.is_file() and (missing_only or _same_file(f, to)):
                continue
            to.parent.mkdir(parents=True, exist_ok=True)
            tmp = to.with_name(to.name + ".part")  # a stop mid-copy leaves no torn file
            shutil.copy2(f, tmp)  # the mtime too: the next _same_file needs no read
            tmp.replace(to)
            n += 1
    return n


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``b`` holds ``a``'s bytes. Equal size and mtime are taken as equal (rsync's
    quick check: a report mirrors every run after every run, and would otherwise read them
    all); else the bytes decide, and equal ones get ``a``'s mtime for next time."""
    sa, sb = a.stat(), b.stat()
    if sa.st_size != sb.st_size:
        return False
    if sa.st_mtime_ns == sb.st_mtime_ns:
        return True
    if a.read_bytes() != b.read_bytes():
        return False
    os.utime(b, ns=(sb.st_atime_ns, sa.st_mtime_ns))
    return True


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def gdig_cli(argv: list[str], log_file: Path) -> None:
    """Run the real gdig CLI in-process; its output goes to ``log_file``."""
    from gdig.cli import main

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ gdig {shlex.join(argv)}\n")
        fh.flush()
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            rc = main(argv)
    if rc != 0:
        tail = log_file.read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"gdig {argv[0]} failed (exit {rc}):\n" + "\n".join(tail))


def noise_of(pairs) -> dict[str, Any]:
    kinds = Counter(p.extra.get("noise", "clean") for p in pairs)
    n = len(pairs)
    return {
        "n": n,
        "noise_rate": (n - kinds.get("clean", 0)) / n if n else float("nan"),
        "kinds": {k: kinds.get(k, 0) for k in ("clean", *qdata.NOISE_KINDS)},
    }


def select_argv(selector: str, budget: int, seed: int, tau: float, scoring: str) -> list[str]:
    """``gdig select`` options of a subset: the selection's random seed is the training seed."""
    return [
        "--selector", selector,
        "--budget", str(budget),
        "--on-short", "fill",
        "--random-seed", str(seed),
        "--tau", str(tau),
        "--scoring", scoring,
    ]  # fmt: skip


def study_key(budget: int, variant: str, seed: int) -> str:
    """A study run's key, also the name its subset is selected and cached under."""
    return f"study-b{budget}-{variant}-s{seed}"


def scoring_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """A ``gdig run``'s stage seconds and the noise AUC of each scoring, from its manifest."""
    noise = manifest["stages"].get("report", {}).get("noise") or {}
    return {
        "stage_seconds": {s: r.get("seconds") for s, r in manifest["stages"].items()},
        "noise_auc": {
            k: v.get("auc_neg_benefit_mean") for k, v in noise.items() if isinstance(v, dict)
        },
    }


def subset_digest(pairs) -> str:
    """sha256 of the subset's pairs in order (what the fine-tuning sees)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.src, p.tgt], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _finetune_meta(model: Path) -> dict[str, Any]:
    """Steps, losses, precision and speed from the fine-tuned folder's gdig_finetune.json."""
    path = Path(model) / "gdig_finetune.json"
    if not path.is_file():
        return {}
    meta = _read_json(path)
    losses = meta.get("losses") or []
    drop = ("losses", "fingerprint", "config", "base_model", "dev_losses")
    keep = {k: v for k, v in meta.items() if k not in drop}
    if losses:
        keep["first_loss"], keep["last_loss"] = losses[0], losses[-1]
    return keep


def git_state() -> dict[str, Any]:
    """The commit the invocation starts on, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    dirty = git("diff", "--name-only", "HEAD").split()
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "dirty_files": dirty}


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": harness.cpu_model(),
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


# An absolute path inside a string: a "/" not preceded by a name character, then names.
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.+@-]+/)*[\w.+@-]+/?")


def shown_path(path: str | Path) -> str:
    """A path as RESULTS.md shows it: relative as given; absolute inside the repository's
    folder as relative to the repository (``../quality-work``); elsewhere ``DIR/<name>``."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    p = Path(text).resolve()
    if p.is_relative_to(ROOT.parent):
        return os.path.relpath(p, ROOT)
    return f"DIR/{p.name}"


def relative_strings(obj: Any, known: dict[str, str]) -> Any:
    """``obj`` with every absolute path in its strings made relative: the ``known`` prefixes
    (absolute -> shown, longest first) replaced, any other absolute path by
    :func:`shown_path`."""
    prefixes = sorted(known.items(), key=lambda kv: -len(kv[0]))

    def fix(text: str) -> str:
        for prefix, shown in prefixes:
            text = text.replace(prefix, shown)
        return _ABS_PATH.sub(lambda m: shown_path(m.group(0)), text)

    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, dict):
        return {fix(k): relative_strings(v, known) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_strings(v, known) for v in obj]
    return obj


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSettings:
    """What every fine-tune and decoding of an experiment shares."""

    base: Path
    template: str
    max_length: int
    device: str
    progress: bool
    eval_cfg: EvalConfig


@dataclass
class RunJob:
    """One fine-tune and its decodings: everything :func:`execute_run` needs, picklable, so
    that a worker process can run it."""

    label: str  # "DIRECTION KEY", for the log
    run_dir: Path
    spec: dict[str, Any]
    selection: dict[str, Any]
    pairs: list
    eval_sets: dict[str, list]  # split name -> its pairs
    settings: RunSettings
    finetune_cfg: FinetuneConfig
    commit: str | None
    keep_model: bool
    keep_as: Path | None  # a copy of the fine-tuned model is kept here (see Direction.job)


def train_model(settings: RunSettings, cfg: FinetuneConfig, pairs, out: Path) -> Path:
    from gdig.io.errors import UsageError
    from gdig.train.finetune import finetune

    kw = {
        "template": settings.template,
        "max_length": settings.max_length,
        "device": settings.device,
        "progress": settings.progress,
    }
    try:  # resumes its own checkpoint; a finished model of the same inputs is kept
        return finetune(settings.base, pairs, out, cfg, **kw)
    except UsageError as exc:  # the folder holds another run's model or checkpoint
        log(f"{out.name}: {exc}; starting it over")
        return finetune(settings.base, pairs, out, cfg, restart=True, **kw)


def evaluate_model(settings: RunSettings, model: Path, pairs, out_file: Path) -> dict[str, Any]:
    from gdig.train.evaluate import evaluate

    res = evaluate(
        model,
        pairs,
        settings.eval_cfg,
        out_file=out_file,
        template=settings.template,
        max_length=settings.max_length,
        device=settings.device,
        progress=settings.progress,
    )
    return {k: v for k, v in res.items() if k not in ("rows", "model")}  # rows: out_file


def completed(futures, block: bool):
    """The finished futures of ``futures``, each as it finishes: with ``block``, waiting for
    every one in turn (never for all of them at once: ``list(as_completed(...))`` would
    hold every report back until the last run, a whole-pool fine-tune, is done)."""
    import concurrent.futures as cf

    if block:
        yield from cf.as_completed(list(futures))
    else:
        yield from [f for f in futures if f.done()]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def execute_run(job: RunJob) -> dict[str, Any]:
    """Fine-tune on ``job.pairs``, decode and score each eval set, write ``result.json``."""
    import torch

    run = job.run_dir
    run.mkdir(parents=True, exist_ok=True)
    spec_file = run / "spec.json"
    if spec_file.is_file() and _read_json(spec_file) != job.spec:  # another run's leftovers
        shutil.rmtree(run / "model", ignore_errors=True)
    _write_json(spec_file, job.spec)
    log(f"{job.label}: fine-tuning on {len(job.pairs)} pairs")
    t, c, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    model = train_model(job.settings, job.finetune_cfg, job.pairs, run / "model")
    train_s, train_cpu = time.perf_counter() - t, time.process_time() - c
    meta = _finetune_meta(model)
    if job.keep_as is not None and not (job.keep_as / "config.json").is_file():
        tmp = job.keep_as.with_name(job.keep_as.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp, ignore=shutil.ignore_patterns("checkpoint"))
        shutil.rmtree(job.keep_as, ignore_errors=True)
        os.replace(tmp, job.keep_as)
    result: dict[str, Any] = {
        "key": run.name,
        "spec": job.spec,
        "selection": job.selection,
        "subset": noise_of(job.pairs),
        # the fine-tuning's own wall time (over all resumed parts) when it says so
        "train_s": round(meta.get("wall_s", train_s), 2),
        "train_s_this_call": round(train_s, 2),
        "train_cpu_s": round(train_cpu, 2),  # CPU seconds of this call, all threads
        "loadavg_1min_at_start": load,
        "torch_threads": torch.get_num_threads(),
        "commit": job.commit,
        "finetune": meta,
        "eval": {},
    }
    for split, pairs in job.eval_sets.items():
        t, c = time.perf_counter(), time.process_time()
        hyp_file = run / f"hyps_{split}.jsonl"
        metrics = evaluate_model(job.settings, model, pairs, hyp_file)
        metrics["eval_s"] = round(time.perf_counter() - t, 2)
        metrics["eval_cpu_s"] = round(time.process_time() - c, 2)
        metrics["hyp_file"] = hyp_file.name
        result["eval"][split] = metrics
        log(
            f"{job.label}: {split} BLEU {metrics['bleu']:.2f} chrF "
            f"{metrics['chrf']:.2f} ({metrics['eval_s']:.0f} s)"
        )
    _write_json(run / "result.json", result)
    if not job.keep_model:
        shutil.rmtree(run / "model", ignore_errors=True)
    log(
        f"{job.label}: train {result['train_s']:.0f} s, noise rate "
        f"{result['subset']['noise_rate']:.3f}"
    )
    return result


# --------------------------------------------------------------------------- one direction


class Direction:
    """One experiment: a direction's data, its `gdig run`, dev choice and runs."""

    def __init__(self, exp: Experiment, name: str, budgets_text: str) -> None:
        self.exp, self.args, self.name = exp, exp.args, name
        self.out = exp.out / name
        self.scorer_dir = self.out / "scorer_model"  # the base model fine-tuned on the pool
        self.budgets = parse_budgets(budgets_text, self.args.n_pool)
        self.budget_text = budgets_text
        self.tau, self.scoring = self.args.tau, self.args.scoring
        self.results: dict[str, dict[str, Any]] = {}  # key -> result, in the order run
        self.data_summary: dict[str, Any] | None = None
        self.gdig_info: dict[str, Any] | None = None
        self.dev_choice: dict[str, Any] | None = None
        self.splits: dict[str, list] = {}
        self.study_results: dict[str, dict[str, Any]] = {}  # key -> result (--study)
        self.study_scorings: dict[str, dict[str, Any]] = {}  # variant -> its gdig run
        self.scoring_folders: dict[str, tuple[Path, Path]] = {}  # variant -> run, subsets

    # -- the plan
    def planned(self) -> list[tuple[str, Arm, int | None, int]]:
        """(key, arm, budget, training seed) of every main run, in the order they run."""
        a = self.exp
        plan = [
            (f"b{b}-{arm.name}-s{seed}", arm, b, seed)
            for b in self.budgets
            for seed in a.seeds
            for arm in a.arms
            if not arm.whole
        ]
        plan += [
            (f"{arm.name}-s{seed}", arm, None, seed)
            for arm in a.arms
            if arm.whole
            for seed in a.whole_seeds
        ]
        return plan

    def budget_label(self, budget: int | None) -> str:
        if budget is None:
            return f"pool ({self.args.n_pool})"
        return f"{budget} ({100 * budget / self.args.n_pool:.3g}%)"

    # -- data
    def build_data(self) -> None:
        a = self.args
        self.split_cfg = qdata.SplitConfig(
            direction=self.name,
            n_seeds=a.n_seeds,
            n_pool=a.n_pool,
            n_dev=a.n_dev,
            n_test=a.n_test,
            n_test_other=a.n_test_other,
            noise_frac=a.noise_frac,
            seed=a.data_seed,
        )
        self.splits = qdata.build_splits(self.exp.data_dir, self.split_cfg)
        self.data_dir = self.out / "data"
        self.data_summary = qdata.write_splits(self.splits, self.split_cfg, self.data_dir)
        log(f"{self.name} data: {self.data_summary['sizes']} {self.data_summary['noise_counts']}")

    # -- gdig
    def score_pool(self) -> None:
        a = self.args
        t, c = time.perf_counter(), time.process_time()
        scorer, first_s = self.exp.base, None
        if a.finetune_first:
            scorer = self.pool_finetuned()
            first_s = time.perf_counter() - t
        self.run_dir = self.out / "gdig_run"
        manifest = self.gdig_run(scorer, self.data_dir / "seeds.jsonl", self.run_dir)
        self.subset_dir = self.subsets_of(manifest)
        self.gdig_info = {
            "scorer": "model fine-tuned on the pool" if a.finetune_first else "base model",
            "wall_s": round(time.perf_counter() - t, 1),
            "cpu_s": round(time.process_time() - c, 1),
            "finetune_first_s": first_s,
            **scoring_info(manifest),
        }
        log(f"{self.name} gdig run: {self.gdig_info}")

    def pool_finetuned(self) -> Path:
        """The base model fine-tuned on the raw pool (training seed 0): the paper's scorer.
        The whole pool's run of training seed 0 leaves it behind (``RunJob.keep_as``)."""
        if not (self.scorer_dir / "config.json").is_file():
            log(f"{self.name}: fine-tuning the base model on the raw pool (training seed 0)")
        return self.exp.train(self.splits["pool"], self.scorer_dir, 0)

    def gdig_run(
        self, model: Path, seeds: Path, run_dir: Path, extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """``gdig run`` of this direction's pool into ``run_dir``; its manifest."""
        a = self.args
        gdig_cli(
            [
                "run",
                "--model", str(model),
                "--seeds", str(seeds),
                "--pool", str(self.data_dir / "pool.jsonl"),
                "--out", str(run_dir),
                "--budget", str(max(self.budgets)),
                "--label-field", "noise",
                "--no-progress",
                "--on-short", "fill",
                "--tau", str(self.tau),
                "--scoring", self.scoring,
                "--factor-samples", str(a.factor_samples),
                "--layer-stride", str(a.layer_stride),
                "--autocast", a.autocast,
                "--device", a.device,
                # redo exactly the stages whose inputs or options changed (a new pool, other
                # options, another gdig version); what still matches is reused
                "--force-restart",
                *shlex.split(a.gdig_args),
                *extra,
            ],
            self.out / "gdig.log",
        )  # fmt: skip
        return _read_json(run_dir / "manifest.json")

    def subsets_of(self, manifest: dict[str, Any]) -> Path:
        # subsets are cached per score fingerprint: other scores, other subsets
        return self.out / "subsets" / manifest["fingerprints"]["score"][:16]

    def select_into(self, run_dir: Path, subset_dir: Path, name: str, argv: list[str]) -> list:
        """The pairs ``gdig select --name NAME ARGV`` picks from ``run_dir`` (cached in
        ``subset_dir``)."""
        from gdig.data.pairs import read_pairs

        path = subset_dir / f"{name}.jsonl"
        if not path.is_file():
            cmd = ["select", "--out", str(run_dir), "--name", name, "--no-progress", *argv]
            gdig_cli(cmd, self.out / "gdig.log")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "selections" / name / "selected.jsonl", path)
        return read_pairs(path)

    def subset(self, arm: Arm, budget: int, seed: int, tau: float, scoring: str) -> list:
        if arm.whole:
            return list(self.splits["pool"])
        if arm.variant:
            return self.variant_subset(qstudy.BY_NAME[arm.variant], budget, seed)[0]
        name = f"b{budget}-{arm.selector}-{scoring}-tau{tau}-s{seed}"
        argv = select_argv(arm.selector, budget, seed, tau, scoring)
        return self.select_into(self.run_dir, self.subset_dir, name, argv)

    # -- one fine-tune + evaluation
    def spec(self, seed: int, pairs, eval_splits: tuple[str, ...]) -> dict[str, Any]:
        """Everything a run's numbers depend on; a finished run with another spec is redone,
        one with the same spec (under another key) is reused."""
        a = self.args
        return {
            "subset_sha256": subset_digest(pairs),
            "train_seed": seed,
            "model": "tiny-llama" if a.smoke else str(a.model),
            "data": self.data_summary["config"],
            "finetune": repr(self.exp.finetune_cfg(seed)),
            "eval": repr(self.exp.eval_cfg()),
            "eval_splits": list(eval_splits),
            "template": a.template,
            "max_length": a.max_length,
        }

    def _reuse(self, key: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """A finished run of this direction with the same spec, copied to ``key``."""
        runs = self.out / "runs"
        for res_file in sorted(runs.glob("*/result.json")) if runs.is_dir() else []:
            other = _read_json(res_file)
            if other.get("spec") != spec or other["key"] == key:
                continue
            run = runs / key
            run.mkdir(parents=True, exist_ok=True)
            for f in res_file.parent.glob("hyps_*"):
                shutil.copyfile(f, run / f.name)
            result = {**other, "key": key, "same_as": other.get("same_as") or other["key"]}
            _write_json(run / "result.json", result)
            log(f"{self.name} {key}: the same subset and settings as {result['same_as']}, reused")
            return result
        return None

    def one_run(
        self, key: str, spec: dict[str, Any], selection: dict[str, Any], pairs, eval_splits
    ) -> dict[str, Any]:
        old = self.prior(key, spec)
        if old is not None:
            return {**old, "selection": selection}
        self.exp.report_if_stale()  # the tables show what is done before the next run starts
        result = execute_run(self.job(key, spec, selection, pairs, eval_splits))
        self.exp.fresh_runs += 1
        return result

    def finished(self, key: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The finished result of ``key`` with this spec, else None."""
        res_file = self.out / "runs" / key / "result.json"
        if res_file.is_file():
            old = _read_json(res_file)
            if old.get("spec") == spec:
                return old
        return None

    def prior(self, key: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """``key``'s own finished result with this spec, else another run's (copied)."""
        return self.finished(key, spec) or self._reuse(key, spec)

    def job(self, key: str, spec: dict[str, Any], selection, pairs, eval_splits) -> RunJob:
        return RunJob(
            label=f"{self.name} {key}",
            run_dir=self.out / "runs" / key,
            spec=spec,
            selection=selection,
            pairs=list(pairs),
            eval_sets={split: list(self.splits[split]) for split in eval_splits},
            settings=self.exp.settings(),
            finetune_cfg=self.exp.finetune_cfg(spec["train_seed"]),
            commit=self.exp.git["commit"],
            keep_model=self.args.keep_models,
            # the whole pool's model of training seed 0 is exactly the scorer of
            # --finetune-first (the paper's flow): kept, it saves that fine-tune
            keep_as=self.scorer_dir
            if selection.get("whole_pool") and spec["train_seed"] == 0
            else None,
        )

    # -- the choice step on dev
    def choose_on_dev(self) -> None:
        taus = _floats(self.args.dev_taus) or [self.tau]
        scorings = _words(self.args.dev_scorings) or [self.scoring]
        if len(taus) * len(scorings) <= 1:
            self.tau, self.scoring = taus[0], scorings[0]
            return
        budget = min(self.budgets)
        gdig = Arm(REFERENCE, REFERENCE)
        grid = [(tau, scoring) for tau in taus for scoring in scorings]

        def items():
            for tau, scoring in grid:
                key = f"dev-b{budget}-gdig-tau{tau}-{scoring}"
                pairs = self.subset(gdig, budget, DEV_CHOICE_SEED, tau, scoring)
                selection = {"tau": tau, "scoring": scoring}
                spec = self.spec(DEV_CHOICE_SEED, pairs, ("dev",))
                yield key, (tau, scoring), spec, selection, pairs

        done: dict[tuple[float, str], dict[str, Any]] = {}

        def store(key: str, meta: tuple[float, str], result) -> None:
            done[meta] = result

        self.run_items(items(), ("dev",), store)
        trials = []
        for tau, scoring in grid:
            res = done[tau, scoring]
            trials.append(
                {
                    "tau": tau,
                    "scoring": scoring,
                    "dev_chrf": res["eval"]["dev"]["chrf"],
                    "dev_bleu": res["eval"]["dev"]["bleu"],
                    "noise_rate": res["subset"]["noise_rate"],
                    "same_as": res.get("same_as"),
                    "train_s": res["train_s"],
                    "eval_s": res["eval"]["dev"]["eval_s"],
                }
            )
        # the first of equal dev scores wins (the order given): no tie is broken by a test
        best = max(trials, key=lambda r: r["dev_chrf"])
        self.tau, self.scoring = best["tau"], best["scoring"]
        self.dev_choice = {"budget": budget, "trials": trials, "chosen": best}
        log(f"{self.name} dev choice: tau {self.tau}, scoring {self.scoring}")

    # -- everything of this direction
    def restore(self) -> None:
        """Copy what ``--durable`` kept of this direction into the work folder where it is
        missing (a new machine, an emptied folder): finished runs are then taken as they are
        when their spec still matches, and the subsets need no new selection."""
        if self.exp.durable:
            n = mirror(self.exp.durable / self.name, self.out, missing_only=True)
            if n:
                log(f"{self.name}: {n} files restored from {shown_path(self.args.durable)}")

    def run(self) -> None:
        self.restore()
        self.build_data()
        self.score_pool()
        self.choose_on_dev()
        plan = self.planned()
        if self.args.workers > 1:
            # the whole pool's runs first: the longest jobs, which would otherwise keep one
            # worker busy at the end while the other has nothing left to do
            plan.sort(key=lambda run: not run[1].whole)
        items = (
            (key, (arm.name, budget, seed), self.spec(seed, pairs, TEST_SETS), selection, pairs)
            for key, arm, budget, seed, selection, pairs in self.main_runs(plan)
        )
        self.run_items(items, TEST_SETS, self.keeper(self.results))

    def main_runs(self, plan):
        """(key, arm, budget, seed, selection, pairs) of ``plan``, each subset selected."""
        for key, arm, budget, seed in plan:
            scoring = arm.scoring or self.scoring
            pairs = self.subset(arm, budget, seed, self.tau, scoring)
            selection = (
                {"whole_pool": True}
                if arm.whole
                else {"selector": arm.selector, "scoring": scoring, "tau": self.tau}
            )
            if arm.variant:
                how = qstudy.BY_NAME[arm.variant].how()
                selection.update(variant=arm.variant, how=how)
            yield key, arm, budget, seed, selection, pairs

    def keeper(self, into: dict[str, dict[str, Any]]):
        """A ``run_items`` store: each result under its key in ``into``, with its arm (or
        variant) name, budget and training seed (the ``meta`` of the items)."""

        def store(key: str, meta: tuple[str, int | None, int], result) -> None:
            arm, budget, seed = meta
            into[key] = {**result, "arm": arm, "budget": budget, "train_seed": seed}
            self.exp.stale = True

        return store

    def run_items(self, items, eval_splits: tuple[str, ...], store) -> None:
        """Fine-tune and evaluate each ``(key, meta, spec, selection, pairs)`` of ``items``
        (a finished or reusable run is taken as it is) and ``store(key, meta, result)``;
        the report is rewritten after every run trained. With ``--workers`` > 1 each run
        goes to a worker process as soon as its subset is selected (the selections go on
        here meanwhile), and a run whose spec equals a submitted one's waits for it and
        reuses it."""
        if self.args.workers <= 1:
            for key, meta, spec, selection, pairs in items:
                fresh = self.exp.fresh_runs
                store(key, meta, self.one_run(key, spec, selection, pairs, eval_splits))
                if self.exp.fresh_runs > fresh:  # a run done now: the tables show it at once
                    self.exp.report_if_stale()
            return
        import concurrent.futures as cf
        import multiprocessing

        threads = self.exp.threads_per_worker()
        pool = cf.ProcessPoolExecutor(
            max_workers=self.args.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        )
        futures: dict[cf.Future, tuple] = {}
        waiting, submitted = [], set()

        def harvest(block: bool) -> None:
            for fut in completed(futures, block):
                key, meta = futures.pop(fut)
                store(key, meta, fut.result())
                self.exp.fresh_runs += 1
                self.exp.report_if_stale()

        log(f"{self.name}: {self.args.workers} worker processes, {threads} torch thread(s) each")
        try:
            for key, meta, spec, selection, pairs in items:
                old = self.prior(key, spec)
                digest = json.dumps(spec, sort_keys=True)
                if old is not None:
                    store(key, meta, {**old, "selection": selection})
                elif digest in submitted:
                    waiting.append((key, meta, spec, selection))
                else:
                    submitted.add(digest)
                    job = self.job(key, spec, selection, pairs, eval_splits)
                    futures[pool.submit(execute_run, job)] = (key, meta)
                harvest(block=False)
            self.exp.report_if_stale()
            harvest(block=True)
        finally:  # a failed run stops the rest: it is a bug to see, not to run past
            pool.shutdown(wait=True, cancel_futures=True)
        for key, meta, spec, selection in waiting:
            reused = self.prior(key, spec)
            assert reused is not None, key  # its twin finished above
            store(key, meta, {**reused, "selection": selection})
        self.exp.report_if_stale()

    # -- the dev study (--study, study.py)
    def run_study(self, variants: list[qstudy.Variant], budget: int, seeds: list[int]) -> None:
        items = self.study_items(variants, budget, seeds)
        self.run_items(items, ("dev",), self.keeper(self.study_results))

    def study_items(self, variants, budget: int, seeds: list[int]):
        for v in variants:
            for seed in seeds:
                pairs, argv = self.variant_subset(v, budget, seed)
                selection = {"variant": v.name, "how": v.how(), "argv": argv}
                meta = (v.name, budget, seed)
                key = study_key(budget, v.name, seed)
                yield key, meta, self.spec(seed, pairs, ("dev",)), selection, pairs

    def variant_subset(self, v: qstudy.Variant, budget: int, seed: int) -> tuple[list, list]:
        """The pairs variant ``v`` of gdig selects (the study's and a ``gdig+VARIANT`` arm's,
        cached under one name), and its ``gdig select`` options."""
        run_dir, subset_dir = self.study_scoring(v)
        # the variant's options after the defaults: they win
        argv = [*select_argv(REFERENCE, budget, seed, self.tau, self.scoring), *v.select]
        return self.select_into(run_dir, subset_dir, study_key(budget, v.name, seed), argv), argv

    def study_scoring(self, v: qstudy.Variant) -> tuple[Path, Path]:
        """The run folder and subset cache a variant selects from: the experiment's own, or,
        for a variant that scores again, its own ``gdig run`` under ``study/VARIANT`` (run
        once per invocation)."""
        if not v.rescored:
            return self.run_dir, self.subset_dir
        if v.name in self.scoring_folders:
            return self.scoring_folders[v.name]
        from gdig.data.pairs import write_jsonl

        folder = self.out / "study" / v.name
        seeds_file = self.data_dir / "seeds.jsonl"
        if v.n_seeds is not None:
            seeds = qdata.more_seeds(self.exp.data_dir, self.split_cfg, self.splits, v.n_seeds)
            seeds_file = folder / "seeds.jsonl"
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(seeds_file, seeds)
        model = self.pool_finetuned() if v.scorer == "pool-finetuned" else self.exp.base
        log(f"{self.name} study {v.name}: gdig run ({v.how()})")
        manifest = self.gdig_run(Path(model), seeds_file, folder / "gdig_run", v.run)
        self.study_scorings[v.name] = {"how": v.how(), **scoring_info(manifest)}
        self.scoring_folders[v.name] = (folder / "gdig_run", self.subsets_of(manifest))
        return self.scoring_folders[v.name]

    def study_report(self, variants, budget: int, seeds: list[int]) -> dict[str, Any]:
        planned = [study_key(budget, v.name, s) for v in variants for s in seeds]
        runs = [self.study_results[k] for k in planned if k in self.study_results]
        out: dict[str, Any] = {
            "direction": self.name,
            "budget": budget,
            "seeds": seeds,
            "n_dev": len(self.splits["dev"]),
            "tau": self.tau,
            "scoring": self.scoring,
            # the dev choice kept the best of its trials at DEV_CHOICE_SEED on these very dev
            # pairs and budget: the reference's score there is favoured by that selection
            "chosen_at": (
                {"budget": self.dev_choice["budget"], "seed": DEV_CHOICE_SEED}
                if self.dev_choice and len(self.dev_choice["trials"]) > 1
                else None
            ),
            "status": {
                "done": len(runs),
                "planned": len(planned),
                "partial": len(runs) < len(planned),
            },
            "variants": [{"name": v.name, "what": v.what, "how": v.how()} for v in variants],
            "scorings": self.study_scorings,
            "table": [],
            "significance": [],
        }
        if runs:
            out.update(
                qsummary.build(
                    runs=runs,
                    refs={"dev": [p.tgt for p in self.splits["dev"]]},
                    run_dir=self.out / "runs",
                    arms=[v.name for v in variants],
                    reference=qstudy.REFERENCE,
                    budgets=[budget],
                    bootstrap_n=self.args.bootstrap_n,
                    tgt_lang=self.splits["dev"][0].tgt_lang,
                    cache=self.exp.stats_cache,
                    cache_prefix=f"{self.name}-study",
                )
            )
        out["runs"] = runs
        return out

    def report(self) -> dict[str, Any]:
        """This direction's part of results.json (partial while runs are missing)."""
        plan = self.planned()
        out: dict[str, Any] = {
            "direction": self.name,
            "budgets": self.budgets,
            "budget_text": self.budget_text,
            "budget_labels": {str(b): self.budget_label(b) for b in [*self.budgets, None]},
            "n_planned": len(plan),
            "n_done": len(self.results),
            "data": self.data_summary,
            "gdig_run": None
            if self.gdig_info is None
            else {**self.gdig_info, "tau": self.tau, "scoring": self.scoring},
            "dev_choice": self.dev_choice,
        }
        if not self.results:
            return {**out, "table": [], "significance": [], "runs": []}
        refs = {s: [p.tgt for p in self.splits[s]] for s in TEST_SETS}
        runs = [self.results[k] for k, *_ in plan if k in self.results]
        out.update(
            qsummary.build(
                runs=runs,
                refs=refs,
                run_dir=self.out / "runs",
                arms=[a.name for a in self.exp.arms],
                reference=REFERENCE,
                budgets=self.budgets,
                bootstrap_n=self.args.bootstrap_n,
                tgt_lang=self.splits["test_in"][0].tgt_lang,
                cache=self.exp.stats_cache,
                cache_prefix=self.name,
            )
        )
        out["runs"] = runs
        return out


# --------------------------------------------------------------------------- the experiment


class Experiment:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args, self.argv = args, argv
        self.out = Path(args.out).resolve()
        self.report_dir = Path(args.report_dir).resolve()
        self.data_dir = harness.data_dir(args.data_dir)
        # where --durable keeps each run (None: nowhere); before the directions, which read it
        self.durable = Path(args.durable).resolve() if args.durable else None
        self.arms: list[Arm] = args.arm_list
        self.seeds = _ints(args.train_seeds)
        self.whole_seeds = _ints(args.whole_seeds)
        planned = [Direction(self, args.direction, args.budgets)] + [
            Direction(self, d, b) for d, b in args.also_list
        ]
        self.order = [d.name for d in planned]  # the report's order
        run_here = set(_words(args.directions)) or set(self.order)
        self.directions = [d for d in planned if d.name in run_here]
        # direction -> its part of an earlier results.json, kept as it was (--directions)
        self.kept = self.kept_parts([n for n in self.order if n not in run_here])
        self.t0 = time.perf_counter()
        self.started = time.strftime("%Y-%m-%d %H:%M")
        self.load_start = os.getloadavg()[0]
        self.git = git_state()
        self.stats_cache: dict[Any, Any] = {}
        self.stale = False  # results added since the report was last written
        self.fresh_runs = 0  # runs trained in this invocation

    # -- models
    def base_model(self) -> Path:
        if self.args.smoke:
            path = self.out / "tiny_model"
            if not (path / "config.json").is_file():
                from helpers_models import save_tiny  # tests/ is on harness's path

                save_tiny("llama", path)
            return path
        from gdig.model.load import resolve_model

        return resolve_model(self.args.model, progress=self.args.progress)

    def resolve_precision(self) -> None:
        """``auto`` decided once per work folder (gdig.train's measurement, kept in
        ``precision.json``): every arm trains and decodes with the same numerics, whatever
        the load at the moment, and a resumed experiment keeps the first decision."""
        a, path = self.args, self.out / "precision.json"
        if a.precision != "auto":
            self.precision = {"train": a.precision, "eval": a.precision, "why": "as asked"}
            return
        if self.durable and mirror(self.durable, self.out, missing_only=True, patterns=DURABLE_TOP):
            log(f"precision restored from {shown_path(a.durable)}")
        if path.is_file():
            self.precision = _read_json(path)
            return
        from gdig.model.load import load_model
        from gdig.train.precision import choose

        model, _ = load_model(self.base, device=a.device, dtype="float32", progress=False)
        tokens = a.train_batch_size * 40  # a batch of typical pairs (about 40 tokens each)
        train = choose("auto", model, tokens=tokens, train=True)
        decode = choose("auto", model, tokens=a.eval_batch_size, train=False)
        self.precision = {
            "train": train.name,
            "eval": decode.name,
            "why": f"auto, decided once: training {train.reason}; decoding {decode.reason}",
        }
        _write_json(path, self.precision)
        log(f"precision: {self.precision}")

    def finetune_cfg(self, seed: int):
        from gdig.train.config import FinetuneConfig

        a = self.args
        return FinetuneConfig(
            epochs=a.epochs,
            max_steps=a.max_steps,
            learning_rate=a.learning_rate,
            train_batch_size=a.train_batch_size,
            grad_accum=a.grad_accum,
            warmup_ratio=a.warmup_ratio,
            precision=self.precision["train"],
            train_seed=seed,
        )

    def eval_cfg(self):
        from gdig.train.config import EvalConfig

        a = self.args
        return EvalConfig(
            max_new_tokens=a.max_new_tokens,
            eval_batch_size=a.eval_batch_size,
            precision=self.precision["eval"],
        )

    def settings(self) -> RunSettings:
        a = self.args
        return RunSettings(
            base=Path(self.base),
            template=a.template,
            max_length=a.max_length,
            device=a.device,
            progress=a.progress,
            eval_cfg=self.eval_cfg(),
        )

    def train(self, pairs, out: Path, seed: int) -> Path:
        return train_model(self.settings(), self.finetune_cfg(seed), pairs, out)

    def evaluate(self, model: Path, pairs, out_file: Path) -> dict[str, Any]:
        return evaluate_model(self.settings(), model, pairs, out_file)

    def measure_rates(self) -> dict[str, Any]:
        """The rates of ``SECONDS``, from one fine-tune and one decoding (wall and CPU)."""
        d = self.directions[0]
        d.build_data()
        self.base = self.base_model()
        self.resolve_precision()
        pairs = d.splits["pool"][: min(d.budgets)]
        out = self.out / "rates"
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        model = self.train(pairs, out / "model", 0)
        train_s, train_cpu = time.perf_counter() - t, time.process_time() - c
        meta = _finetune_meta(model)
        test = d.splits["test_in"][:100]
        t, c = time.perf_counter(), time.process_time()
        ev = self.evaluate(model, test, out / "hyps.jsonl")
        eval_s, eval_cpu = time.perf_counter() - t, time.process_time() - c
        rates = {
            "pairs": len(pairs),
            "examples_seen": meta.get("examples_seen"),
            "steps": meta.get("steps"),
            "precision": meta.get("precision"),
            "train_wall_s": round(train_s, 1),
            "train_cpu_s": round(train_cpu, 1),
            "train_example_s": meta.get("seconds_per_example"),
            "padding_share": meta.get("padding_share"),
            "sentences": len(test),
            "eval_wall_s": round(eval_s, 1),
            "eval_cpu_s": round(eval_cpu, 1),
            "decode_s": round(ev["decode_s"], 1),
            "decode_sentence_s": ev["seconds_per_sentence"],
            "model_load_s": round(ev["wall_s"] - ev["decode_s"], 1),
            "eval_precision": ev.get("precision"),
            "mean_tokens": ev.get("mean_tokens"),
            "loadavg_at_start": round(load, 2),
            "loadavg_at_end": round(os.getloadavg()[0], 2),
            "cpu": harness.cpu_model(),
            "commit": self.git,
        }
        print(json.dumps(rates, indent=1))
        return rates

    # -- everything
    def run(self) -> dict[str, Any]:
        self.base = self.base_model()
        self.resolve_precision()
        if self.args.study:
            return self.run_study()
        log(f"planned: {self.n_planned()} runs; {time_budget(self.args)}")
        report = None
        for d in self.directions:
            d.run()
            self.stale = True  # the chart too, once a direction is done
            report = self.report_if_stale(chart=True)
        return report

    def run_study(self) -> dict[str, Any]:
        """The dev study of the main direction (``study.py``): its data, gdig run and dev
        choice as the experiment has them, then every variant; STUDY.md and study.json."""
        d = self.directions[0]
        d.build_data()
        d.score_pool()
        d.choose_on_dev()
        variants, budget, seeds = self.study_plan()
        log(f"study: {len(variants)} variants x {len(seeds)} training seeds")
        d.run_study(variants, budget, seeds)
        self.stale = True
        return self.report_if_stale()

    def study_plan(self) -> tuple[list[qstudy.Variant], int, list[int]]:
        """The study's variants, budget (default: the main direction's smallest) and
        training seeds, from the options."""
        a = self.args
        budget = (
            parse_budgets(a.study_budget, a.n_pool)[0]
            if a.study_budget
            else min(self.directions[0].budgets)
        )
        return a.variant_list, budget, _ints(a.study_seeds)

    def write_study_report(self) -> dict[str, Any]:
        d = self.directions[0]
        report = {
            "command": "python benchmarks/quality/run_quality.py "
            + shlex.join(shown_path(x) if os.path.isabs(x) else x for x in self.argv),
            "commit": self.git,
            "written": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{harness.cpu_model()}, {os.cpu_count()} cores, torch threads "
            f"{self.threads_per_worker() if self.args.workers > 1 else 'all'} per run, "
            f"{self.args.workers} worker(s)",
            "precision": self.precision,
            **d.study_report(*self.study_plan()),
        }
        report = relative_strings(report, self.known_paths())
        self.report_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.report_dir / "study.json", report)
        (self.report_dir / "STUDY.md").write_text(qstudy.markdown(report), encoding="utf-8")
        st = report["status"]
        log(f"study report: {st['done']} of {st['planned']} runs in STUDY.md")
        return report

    def threads_per_worker(self) -> int:
        import torch

        a = self.args
        return a.threads_per_worker or max(1, torch.get_num_threads() // a.workers)

    def n_planned(self) -> int:
        kept = sum(e["n_planned"] for e in self.kept.values())
        return kept + sum(len(d.planned()) for d in self.directions)

    def kept_parts(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The parts of the report folder's results.json for the directions not run here,
        each with the invocation that ran it (``kept``); a DataError when one is missing or
        was run with other settings than this invocation's (its tables would not compare)."""
        if not names:
            return {}
        path = self.report_dir / "results.json"
        if not path.is_file():
            raise qdata.DataError(
                f"--directions: {', '.join(names)} not run here, and there is no "
                f"{shown_path(path)} to keep their results from"
            )
        old = _read_json(path)
        now = {k: v for k, v in vars(self.args).items() if k not in PARSED}
        differ = [
            f"{k} {old['args'].get(k)!r} there, {now.get(k)!r} here"
            for k in sorted(set(old["args"]) | set(now))
            if k not in INVOCATION_ONLY and old["args"].get(k) != now.get(k)
        ]
        if differ:
            raise qdata.DataError(
                f"--directions: {shown_path(path)} was written with other settings ("
                + "; ".join(differ)
                + f"), so its {', '.join(names)} results cannot stand beside this "
                "invocation's: run every direction, or give another --report-dir"
            )
        parts = {e["direction"]: e for e in old["experiments"]}
        missing = [n for n in names if n not in parts]
        if missing:
            raise qdata.DataError(
                f"--directions: {shown_path(path)} holds no results of {', '.join(missing)}"
            )
        ran_by = {k: old[k] for k in ("command", "commit", "machine", "precision", "written")}
        for n in names:
            log(f"{n}: kept from {shown_path(path)} (written {old['written']}), not run here")
        return {n: {**parts[n], "kept": parts[n].get("kept") or ran_by} for n in names}

    def report_if_stale(self, chart: bool = False) -> dict[str, Any] | None:
        if not self.stale:
            return None
        self.stale = False
        if self.args.study:  # the study has its own report; RESULTS.md stays as it is
            return self.write_study_report()
        return self.write_report(chart)

    def known_paths(self) -> dict[str, str]:
        a = self.args
        known = {
            str(self.out): shown_path(a.out),
            str(self.report_dir): shown_path(a.report_dir),
            str(self.data_dir.resolve()): shown_path(self.data_dir),
            str(ROOT): ".",
        }
        if getattr(self, "base", None) is not None:
            known[str(Path(self.base).resolve())] = "tiny-llama" if a.smoke else str(a.model)
        return known

    def write_report(self, chart: bool) -> dict[str, Any]:
        """results.json and RESULTS.md from every finished run; ``chart``: quality.png too
        (drawn when a direction is done: a few seconds that every run need not pay)."""
        a = self.args
        run_here = {d.name: d for d in self.directions}
        if self.durable:  # first: RESULTS.md never shows a run the durable copy lacks
            mirror(self.out, self.durable, missing_only=False, patterns=DURABLE_TOP)
            for d in self.directions:
                mirror(d.out, self.durable / d.name, missing_only=False)
        exps = [self.kept[n] if n in self.kept else run_here[n].report() for n in self.order]
        done, planned = sum(e["n_done"] for e in exps), self.n_planned()
        defaults = build_parser()
        report = {
            "command": "python benchmarks/quality/run_quality.py "
            + shlex.join(shown_path(x) if os.path.isabs(x) else x for x in self.argv),
            "status": {"done": done, "planned": planned, "partial": done < planned},
            "commit": self.git,
            "started": self.started,
            "written": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {
                **machine(),
                "device": a.device,
                "loadavg_at_start": round(self.load_start, 2),
                "loadavg_now": [round(x, 2) for x in os.getloadavg()],
            },
            "args": {
                **{k: v for k, v in vars(a).items() if k not in PARSED},
                "data_dir": shown_path(self.data_dir),
            },
            "non_default_args": {
                k: v
                for k, v in vars(a).items()
                if k not in (*WHERE_ONLY, *PARSED) and v != defaults.get_default(k)
            },
            "arms": [vars(arm) for arm in self.arms],
            "reference": REFERENCE,
            "precision": self.precision,
            "time": {
                "budget": TIME_BUDGET,
                "rates": SECONDS,
                "this_invocation_s": round(time.perf_counter() - self.t0, 1),
                "planned_s": {d.name: planned_parts(a, d.budgets) for d in self.directions},
                "plan": time_budget(a),
            },
            "experiments": exps,
        }
        report["summary"] = qsummary.plain_words(report)
        report = relative_strings(report, self.known_paths())
        self.report_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.report_dir / "results.json", report)
        png = self.report_dir / "quality.png"
        if chart:
            qsummary.plot(report, png)
        (self.report_dir / "RESULTS.md").write_text(
            qsummary.markdown(report, png.name if png.is_file() else None), encoding="utf-8"
        )
        log(f"report: {done} of {planned} runs in {shown_path(self.report_dir)}/RESULTS.md")
        return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        exp = Experiment(args, argv)
        if args.measure_rates:
            exp.measure_rates()
        else:
            exp.run()
    except qdata.DataError as e:
        print(f"run_quality.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
