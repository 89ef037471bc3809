"""The `gdig` command: `gdig run` does every stage; `fit`, `score`, `select`, `report`
do one each on the same run folder; `gdig demo` runs everything on the bundled data."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from gdig.data.pairs import PairsError
from gdig.engine.config import EngineConfig
from gdig.options import (
    ConfigFileError,
    add_dataclass_flags,
    build,
    known_keys,
    read_config_file,
)
from gdig.pipeline import STAGES, RunError, RunOptions, run_stages
from gdig.runconfig import RunConfig
from gdig.select.config import SelectConfig
from gdig.select.selection import ShortfallError

CLASSES = (RunConfig, EngineConfig, SelectConfig)

# The embedded demo: sized to finish in minutes on a 2-core CPU; every value can be
# overridden by a flag (e.g. --budget, --factor-samples, --layers).
DEMO_DEFAULTS: dict[str, Any] = {
    "model": "smollm2",
    "out": "runs/demo",
    "label_field": "noise",
    "budget": 200,
    "tau": 0.9,
    "on_short": "fill",
    "factor_samples": 400,
    "layer_stride": 6,
}

DESCRIPTIONS = {
    "run": "every stage: fit factors, score the pool against the seeds, select, report",
    "fit": "fit the EK-FAC (or K-FAC) factors of the tracked layers on a pool sample",
    "score": "score every candidate against every seed; write the gradient store",
    "select": "quality filter + diversity resampling; write selected.jsonl and scores.csv",
    "report": "write report.html (plots, most/least beneficial pairs, noise metrics)",
    "demo": "the whole pipeline on the bundled zh-en demo pool with SmolLM2-135M-Instruct",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdig",
        description="G-DIG selection of machine-translation fine-tuning data. Benefit "
        "B(m,s) = grad L(s)^T H^-1 grad L(m): positive means candidate m helps seed s.",
    )
    parser.add_argument("--version", action="version", version=f"gdig {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in ("run", *STAGES, "demo"):
        p = sub.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        p.add_argument(
            "--config",
            metavar="FILE",
            help="YAML or TOML file of option: value (flag names with _); flags override it",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="log more")
        add_dataclass_flags(p, *CLASSES)
    return parser


def _version() -> str:
    from gdig import __version__

    return __version__


def options_from_args(args: argparse.Namespace) -> RunOptions:
    values: dict[str, Any] = {}
    if args.command == "demo":
        from gdig.data.demo_files import demo_paths

        seed, pool = demo_paths()
        values.update(DEMO_DEFAULTS, seed=str(seed), pool=str(pool))
    if args.config:
        values.update(read_config_file(args.config, known_keys(*CLASSES)))
    values.update({k: v for k, v in vars(args).items() if k in known_keys(*CLASSES)})
    return RunOptions(
        run=build(RunConfig, values),
        engine=build(EngineConfig, values),
        select=build(SelectConfig, values),
    )


def print_summary(state) -> None:
    stages = state.manifest.get("stages", {})
    sel = stages.get("select", {})
    rows = [
        ("pool", sel.get("pool_size", "-")),
        ("passed quality", sel.get("passed_quality", "-")),
        ("clusters", sel.get("clusters", "-")),
        ("selected", sel.get("selected", "-")),
    ]
    rows += [(f"time {s} (s)", rec.get("seconds", "-")) for s, rec in stages.items()]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
    noise = stages.get("report", {}).get("noise")
    if noise:
        print(f"  noise detection (pool noise fraction {noise['noise_fraction']:.2f}):")
        for scoring in ("raw", "zscore", "cosine"):
            m = noise[scoring]
            print(
                f"    {scoring:7s} AUC {m['auc_neg_benefit_mean']:.3f}  "
                f"failed-quality precision {m['failed_quality_precision']:.3f} "
                f"recall {m['failed_quality_recall']:.3f}"
            )
    warnings = state.manifest.get("warnings", [])
    if warnings:
        print(f"  warnings: {len(warnings)} (above, and in {state.out / 'manifest.json'})")
    report = state.out / "report.html"
    if report.exists():
        print(f"  report: {report.resolve()}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        opts = options_from_args(args)
        stages = STAGES if args.command in ("run", "demo") else (args.command,)
        state = run_stages(opts, stages)
    except (
        RunError,
        PairsError,
        ConfigFileError,
        ShortfallError,
        ValueError,
        FileNotFoundError,
        MemoryError,
    ) as exc:
        print(f"gdig {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"gdig {args.command}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(f"gdig {args.command}: done ({Path(state.out)})")
    print_summary(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
