"""The `gdig` command: `gdig run` does every stage; `fit`, `score`, `select`, `report`
do one each on the same run folder; `gdig demo` runs everything on the bundled data.

Each verb takes only the options of the stages it runs; options of the other stages come
from the run folder (``gdig select --out RUN --budget 20`` needs nothing else). Errors a
user can fix are printed as one line, ``gdig: error: ...``: exit status 2 for bad input
or usage, 1 for a failure while running; ``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from gdig.io.errors import GdigError, UsageError
from gdig.io.validate import closest
from gdig.pipeline.config import TOOL_SECTIONS, TOOL_SKIPS, VERB_SECTIONS, VERB_SKIPS
from gdig.pipeline.options import add_flags, known_keys, read_config_file, resolve

# The embedded demo: sized to finish in minutes on a 2-core CPU; every value can be
# overridden by a flag (e.g. --budget, --factor-samples, --layers).
DEMO_DEFAULTS: dict[str, Any] = {
    "model": "smollm2",
    "out": "runs/demo",
    "label_field": "noise",
    "budget": 200,  # tau and --on-short are the library's defaults (0.9, fill)
    "factor_samples": 400,
    "layer_stride": 6,
}

DESCRIPTIONS = {
    "run": "every stage: fit factors, score the pool against the seeds, select, report",
    "fit": "fit the EK-FAC (or K-FAC) factors of the tracked layers on a pool sample",
    "score": "score every candidate against every seed; write the gradient store "
    "(model and pool default to the run folder's)",
    "select": "quality filter + diversity resampling, then the report, from the gradient "
    "store alone (no model pass; every other option defaults to the run folder's)",
    "report": "write report.html (plots, most/least beneficial pairs, noise metrics)",
    "demo": "the whole pipeline on the bundled zh-en demo pool with SmolLM2-135M-Instruct",
    "finetune": "supervised fine-tuning of a causal LM on pairs (same template and target-only "
    "loss as scoring); resumable; writes a Hugging Face folder",
    "eval": "translate test pairs (greedy, stop at EOS or newline) and score BLEU and chrF "
    "with sacrebleu; hypotheses and scores written beside --out",
}


# Flags users reach for that gdig spells otherwise: named in the "did you mean" hint.
FLAG_HINTS = {
    "--seed": "--random-seed (selection's random choices) or --seeds FILE (the seed set)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with gdig's one-line error format (``gdig VERB: error: ...``, exit status
    2) and no abbreviated flags: ``--bud 6`` is an error, never ``--budget 6``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}{_choice_hint(message)}\n")


def _choice_hint(message: str) -> str:
    """``; did you mean 'run'?`` for argparse's "invalid choice: 'rnu' (choose from ...)"."""
    import re

    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return ""
    close = closest(found.group(1), re.findall(r"'([^']*)'", found.group(2)))
    return f"; did you mean '{close}'?" if close else ""


def _verb_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def unknown_arguments(verb: str, extra: list[str], parsers: dict[str, Any]) -> str:
    """The message for arguments ``gdig VERB`` does not take: the first unknown flag with
    the closest flag of this verb, or the verbs that do take it."""
    flags = [a for a in extra if a.startswith("-")]
    message = f"unrecognized arguments: {' '.join(extra)}"
    if not flags:
        return f"{message}; gdig {verb} takes no positional arguments (give files by flag)"
    name = flags[0].split("=")[0]
    own = _verb_flags(parsers[verb])
    if name in FLAG_HINTS and name not in own:
        return f"{message}; did you mean {FLAG_HINTS[name]}?"

    def elsewhere(flag: str) -> str:
        verbs = [f"gdig {v}" for v, p in parsers.items() if v != verb and flag in _verb_flags(p)]
        return f"{flag} is an option of {', '.join(verbs)}, not of gdig {verb}"

    if any(name in _verb_flags(p) for p in parsers.values()):
        return f"{message}; {elsewhere(name)}"
    close = closest(name, own)
    if close:
        return f"{message}; did you mean {close}?"
    close = closest(name, sorted({f for p in parsers.values() for f in _verb_flags(p)}))
    if close:
        return f"{message}; did you mean {close}? {elsewhere(close)}"
    return f"{message}; see gdig {verb} --help"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; arguments a verb does not take are reported by that verb."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        parsers = _verb_parsers(parser)
        parsers[args.command].error(unknown_arguments(args.command, extra, parsers))
    return args


def _verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gdig",
        description="G-DIG selection of machine-translation fine-tuning data. Benefit "
        "B(m,s) = grad L(s)^T H^-1 grad L(m): positive means candidate m helps seed s.",
    )
    parser.add_argument("--version", action="version", version=f"gdig {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb, sections in VERB_SECTIONS.items():
        p = sub.add_parser(verb, help=DESCRIPTIONS[verb], description=DESCRIPTIONS[verb])
        general = p.add_argument_group("general")
        general.add_argument(
            "--config",
            metavar="FILE",
            help="YAML or TOML file of option: value (flag names with _); flags override it",
        )
        general.add_argument("-v", "--verbose", action="store_true", help="log more")
        general.add_argument("--debug", action="store_true", help="show the traceback of an error")
        add_flags(p, sections, skip=VERB_SKIPS[verb])
    for tool, classes in TOOL_SECTIONS.items():
        p = sub.add_parser(tool, help=DESCRIPTIONS[tool], description=DESCRIPTIONS[tool])
        general = p.add_argument_group("general")
        general.add_argument("--config", metavar="FILE", help="YAML or TOML file of options")
        general.add_argument("-v", "--verbose", action="store_true", help="log more")
        general.add_argument("--debug", action="store_true", help="show an error's traceback")
        add_flags(p, tuple(classes), classes, TOOL_SKIPS[tool])
    return parser


def _version() -> str:
    from gdig import __version__

    return __version__


def _seed_alias(flags: dict[str, Any]) -> None:
    """``--seed`` was the seed-set file; it now reads ``--seeds`` (and ``--random-seed``
    is the randomness), so an integer there is explained, not looked up as a file."""
    if "seed" not in flags:
        return
    value = str(flags.pop("seed"))
    if value.lstrip("-").isdigit() and not Path(value).exists():
        raise UsageError(
            f"--seed {value}: --seed is not a random seed in gdig; the trusted seed-set file "
            "is --seeds FILE, and --random-seed N seeds selection's random choices"
        )
    logging.getLogger("gdig").warning("--seed FILE is deprecated: use --seeds FILE")
    flags.setdefault("seeds", value)


def options_from_args(args: argparse.Namespace):
    """Options from flags, config file, the run folder's manifest and the defaults (the
    API's :func:`gdig.api.options_for`, with the command line's flags)."""
    from gdig.api import options_for

    keys = known_keys(VERB_SECTIONS[args.command]) - VERB_SKIPS[args.command]
    flags = {k: v for k, v in vars(args).items() if k in keys | {"seed"}}
    _seed_alias(flags)
    defaults, defaults_name = None, None
    if args.command == "demo":
        from gdig.data.demo_files import demo_paths

        seeds, pool = demo_paths()
        defaults = {**DEMO_DEFAULTS, "seeds": str(seeds), "pool": str(pool)}
        defaults_name = "the demo's defaults"
    return options_for(
        args.command, flags=flags, config=args.config, defaults=defaults,
        defaults_name=defaults_name,
    )  # fmt: skip


def run_tool(args: argparse.Namespace) -> int:
    """`gdig finetune` and `gdig eval`: model tools outside any run folder.

    Every input is checked before the model is loaded: a missing file, a folder where a
    file belongs (or the reverse) is one line naming the flag (exit 2).
    """
    from gdig.model.load import resolve_model
    from gdig.pipeline.options import known_keys

    classes = TOOL_SECTIONS[args.command]
    keys = known_keys(tuple(classes), classes) - TOOL_SKIPS[args.command]
    flags = {k: v for k, v in vars(args).items() if k in keys}
    file_values = read_config_file(args.config, keys) if args.config else {}
    built = resolve(flags, file_values, args.config, {}, classes)
    job = built["job"]
    if job.progress is None:
        job.progress = sys.stderr.isatty()
    what, given = ("data", job.data) if args.command == "finetune" else ("test", job.test)
    if job.model is None or given is None or job.out is None:
        raise UsageError(f"gdig {args.command} needs --model, --{what} and --out")
    pairs = _tool_pairs(f"--{what}", given)
    dev_pairs = _tool_pairs("--dev", job.dev) if args.command == "finetune" and job.dev else None
    out = Path(job.out)
    if args.command == "finetune" and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the fine-tuned model")
    if args.command == "eval" and out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the hypotheses file (.jsonl)")
    if args.command == "eval" and not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    model = resolve_model(job.model, bool(job.progress))
    common = {"template": job.template, "max_length": job.max_length, "device": job.device}

    def echo(line: str) -> None:  # above the progress bar when there is one
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)

    if args.command == "finetune":
        from gdig.train.finetune import finetune

        finetune(
            model, pairs, out, built["finetune"], **common, progress=bool(job.progress),
            restart=job.restart, dev_pairs=dev_pairs, echo=echo,
        )  # fmt: skip
        print(f"gdig finetune: done: {out} (load it with --model {out})")
        return 0
    from gdig.train.evaluate import evaluate

    scores = evaluate(
        model, pairs, built["eval"], out_file=out, **common, progress=bool(job.progress),
    )  # fmt: skip
    print_eval(scores, out)
    return 0


def _tool_pairs(flag: str, path: str) -> list:
    """The pairs of a file given by ``flag``; a missing file or a folder is a UsageError."""
    from gdig.data.formats import formats_text, input_files
    from gdig.data.pairs import read_pairs

    p = Path(path)
    if p.exists() and not input_files(p):
        raise UsageError(f"{flag} {path}: is a folder; give a file of pairs ({formats_text()})")
    if not p.exists():
        raise UsageError(f"{flag} {path}: file not found")
    return read_pairs(p)


def print_eval(scores: dict[str, Any], out: Path) -> None:
    """What `gdig eval` prints: precision, scores, then format failures apart."""
    from gdig.train.precision import Precision

    n = scores["n"]
    print(f"gdig eval: {n} test pairs; hypotheses in {out}, scores in {out.with_suffix('.json')}")
    print(f"  {Precision(**scores['precision']).describe()}")
    print(f"  {scores['seconds_per_sentence']:.3f} s per sentence decoded")
    print(f"  BLEU {scores['bleu']:.2f}  ({scores['bleu_signature']})")
    print(f"  chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
    kinds = ", ".join(f"{k} {v}" for k, v in scores["format_failures"].items() if v) or "none"
    print(f"  format failures {scores['n_format_failures']} of {n} ({kinds})")
    well = scores["well_formed"]
    if well["n"] and well["n"] < n:
        print(f"  the {well['n']} well-formed outputs alone: BLEU {well['bleu']:.2f}  "
              f"chrF {well['chrf']:.2f}")  # fmt: skip


def selection_flags(cfg: Any) -> str:
    """Every selection option in effect, as the flags that give it (``--tau 0.9 ...``)."""
    import dataclasses

    from gdig.pipeline.options import flag

    def shown(value: Any) -> str:
        if value is None:
            return "auto"
        if isinstance(value, float) and type(cfg).__name__ == "SelectConfig":
            return f"{value:g}"
        return str(value)

    return " ".join(
        f"{flag(f.name)} {shown(getattr(cfg, f.name))}" for f in dataclasses.fields(cfg)
    )


def _selection_rows(sel: dict[str, Any]) -> list[tuple[str, Any]]:
    """The select stage's counts, said in words: how many passed, what was filled."""
    if not sel:
        return []
    passed, pool = sel.get("passed_quality", "-"), sel.get("pool_size", "-")
    rule = (
        f"benefit > 0 for >= {sel.get('need_positive', '-')} of {sel.get('seed_groups', '-')} "
        f"seed groups: --tau {sel.get('tau', '-')}, --scoring {sel.get('scoring', '-')}"
    )
    chosen = f"{sel.get('selected', '-')} (budget {sel.get('budget', '-')})"
    filled = sel.get("filled") or 0
    if filled:
        chosen += (
            f", of which {filled} filled by mean benefit: only {passed} passed the quality "
            "filter (--on-short fill; --on-short stop makes this an error)"
        )
    return [
        ("pool", pool),
        ("passed quality", f"{passed} of {pool} ({rule})"),
        ("clusters", sel.get("clusters", "-")),
        ("selected", chosen),
    ]


def print_summary(outcome) -> None:
    """What a command did (a :class:`gdig.pipeline.stages.RunOutcome`), in a few lines."""
    from gdig.pipeline.fingerprint import STAGES

    folder = outcome.folder
    records = {s: folder.stage_record(s) for s in STAGES}  # a named selection's own
    rows = _selection_rows(records["select"])
    if "select" in outcome.stages:
        rows.append(("selection options", selection_flags(outcome.opts.select)))
    rows += [
        (f"time {s} (s)", f"{rec.get('seconds', '-')}{' (reused)' if s in outcome.reused else ''}")
        for s, rec in records.items()
        if rec
    ]
    selected = folder.out / "selected.jsonl"
    if selected.exists():
        rows.append(("selected pairs", selected))
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
    noise = records["report"].get("noise")
    if noise:
        print(f"  noise detection (pool noise fraction {noise['noise_fraction']:.2f}):")
        for scoring, m in noise.items():
            if not isinstance(m, dict) or "auc_neg_benefit_mean" not in m:  # fraction, kinds
                continue
            print(
                f"    {scoring:7s} AUC {m['auc_neg_benefit_mean']:.3f}  "
                f"failed-quality precision {m['failed_quality_precision']:.3f} "
                f"recall {m['failed_quality_recall']:.3f}"
            )
    warnings = folder.warnings
    if warnings:
        print(f"  warnings: {len(warnings)} (above, and in {folder.path / 'manifest.json'})")
    report = folder.out / "report.html"
    if report.exists():
        print(f"  report: {report.resolve()}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # FAISS logs each build it tries to load ("Could not load library with AVX512 support
    # due to: ModuleNotFoundError"): routine, yet it reads like a failure under -v.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        if args.command in TOOL_SECTIONS:
            return run_tool(args)
        from gdig.api import execute

        opts = options_from_args(args)
        outcome = execute(args.command, opts).outcome
        if opts.run.dry_run:
            return 0
    except GdigError as exc:
        if args.debug:
            raise
        print(f"gdig {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(
            f"gdig {args.command}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if outcome.folder.main:  # under torchrun: rank 0 speaks for the run
        print(f"gdig {args.command}: done ({outcome.out})")
        print_summary(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
