"""Does a gdig-selected subset train a better translator? The paper's table in miniature.

    python benchmarks/quality/run_quality.py                 # `make quality`, ~75 min, 2 CPUs
    python benchmarks/quality/run_quality.py --smoke --out /tmp/q   # tiny random model, < 1 min

1. Data (``data.py``): seeds, a noisy pool (documented injected noise, ``noise`` field),
   dev, an in-domain test set and an other-domain (gettext) test set, all disjoint.
2. Optionally (``--finetune-first``) fine-tune the base model on the raw pool first and
   score with that model (the paper's flow); otherwise the base model scores.
3. Score the pool once with the real CLI (``gdig run``), then re-select for every selector,
   budget and training seed with ``gdig select`` (no model pass): gdig, quality, diversity,
   random; plus the whole pool. The selection's random seed is the training seed, so the
   random choices of ``random``/``gdig``/``diversity`` vary across seeds like the training.
4. For every budget x subset x training seed: fine-tune fresh from the base model on the
   subset, decode both test sets, score BLEU and chrF (hypotheses kept), and record the
   subset's noise rate from its ``noise`` field.
5. Report: ``results.json``, ``RESULTS.md`` (mean +- std tables, noise rates, paired
   bootstrap of gdig vs random, timings, sizes, command, machine) and ``quality.png``.

Optional choice step on dev only (``--dev-taus``/``--dev-scorings``): for each (tau,
scoring), select gdig at the smallest budget, fine-tune (training seed 0), decode dev;
the best dev chrF fixes tau and scoring for every selection. The test sets never choose.

Resumable: every finished (budget, subset, seed) leaves ``runs/<key>/result.json`` under
``--out`` and is skipped next time when its settings are unchanged; ``gdig run`` resumes by
itself. Time arithmetic of the defaults: see ``TIME_BUDGET`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (HERE, ROOT / "python"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import data as qdata  # noqa: E402
import summary as qsummary  # noqa: E402

SELECTORS = ("gdig", "quality", "diversity", "random")
WHOLE = "all"  # the whole pool, once per training seed (no budget)
TEST_SETS = ("test_in", "test_other")

# Time arithmetic of the defaults, from timings on this 2-core CPU while it was quiet (load
# 1-2; SmolLM2-135M-Instruct, fp32, measured with this script and `gdig run`):
#   training: 2.2 s per optimizer step of batch 8 (26 steps 56-62 s; 250 steps 561 s)
#   decoding: 0.12 s per sentence at batch 32 (0.14 at batch 16), model load included
#   gdig run: 161 s for 1,000 candidates (fit 47 s on 400 samples, score 104 s), so ~110 s
#     for 600; each of the 24 `gdig select` calls (+ its report) ~3 s
# Defaults: pool 600, budgets 60 and 120 (10% and 20% of the pool, the ratios of 100/200 of
# 1,000), 3 training seeds, 300 + 300 test sentences, 2 epochs:
#   budget 60: 16 steps 35 s; budget 120: 30 steps 66 s; whole pool: 150 steps 330 s
#   decoding both test sets: 600 x 0.12 s = 72 s, ~75 s a run
#   budget 60: 12 runs x (35 + 75) s = 22 min; budget 120: 12 x (66 + 75) s = 28 min;
#   whole pool: 3 x (330 + 75) s = 20 min; gdig run ~2 min, selects ~1 min
#   dev choice (2 taus x 2 scorings at budget 60, dev 200): 4 x (35 + 24) s = 4 min
#   total ~78 min of the 90 allowed (~20% margin for a busier machine or longer outputs).
# The example (pool 1,000, budgets 100,200) costs 12 x (57 + 75) + 12 x (112 + 75)
# + 3 x (561 + 75) s + 4 min = ~100 min: run it with --n-pool 1000 --budgets 100,200.
# When the machine is shared everything is slower (measured at load 5-11: 9-10x); bf16
# autocast took 1.6x (decoding) to 1.8x (training) the time of fp32 here: --bf16 is off on CPU.
TIME_BUDGET = (
    "quiet 2-core CPU, fp32: training 2.2 s/step (batch 8), decoding 0.12 s/sentence "
    "(batch 32), gdig run ~110 s for 600 candidates; budget 60: 12 runs x (35 s train + "
    "75 s decode) = 22 min; budget 120: 12 x (66 + 75) s = 28 min; whole pool 600: "
    "3 x (330 + 75) s = 20 min; gdig run + 24 selects ~3 min; dev choice of tau and scoring "
    "4 x (35 + 24) s = 4 min; total ~78 min of the 90 min "
    "allowed"
)

SMOKE = {
    "n_seeds": 4,
    "n_pool": 40,
    "n_dev": 10,
    "n_test": 10,
    "n_test_other": 10,
    "budgets": "10",
    "train_seeds": "0",
    "max_steps": 2,
    "train_batch_size": 4,
    "max_new_tokens": 4,
    "eval_batch_size": 10,
    "factor_samples": 40,
    "layer_stride": 1,
    "gdig_args": "--k-in 4 --k-out 4 --rank 4",
    "bootstrap_n": 50,
    "bf16": False,
    "dev_taus": "0.9",  # two dev trials keep the choice step exercised
    "dev_scorings": "raw,cosine",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny random LLaMA and tiny sizes")
    ap.add_argument("--data-dir", default=str(qdata.DEFAULT_DATA_DIR), help="shared pairs folder")
    ap.add_argument(
        "--out", default=str(HERE / "work"), help="work folder: data, gdig run, models, runs"
    )
    ap.add_argument(
        "--report-dir",
        default=None,
        help="where RESULTS.md, results.json and quality.png go (default: benchmarks/quality; "
        "with --smoke: --out)",
    )
    ap.add_argument("--model", default="smollm2", help="base model (gdig --model forms)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g = ap.add_argument_group("data (data.py)")
    g.add_argument("--direction", default="zh-en", choices=sorted(qdata.SOURCES))
    g.add_argument("--n-seeds", type=int, default=32, help="trusted seed pairs")
    g.add_argument("--n-pool", type=int, default=600, help="pool pairs")
    g.add_argument("--n-dev", type=int, default=200, help="dev pairs")
    g.add_argument("--n-test", type=int, default=300, help="in-domain test pairs")
    g.add_argument("--n-test-other", type=int, default=300, help="other-domain test pairs")
    g.add_argument("--noise-frac", type=float, default=0.3, help="noisy fraction of the pool")
    g.add_argument("--data-seed", type=int, default=20240520, help="seed of the splits")
    g = ap.add_argument_group("selection (gdig run / gdig select)")
    g.add_argument("--budgets", default="60,120", help="comma-separated subset sizes")
    g.add_argument(
        "--selectors", default=",".join((*SELECTORS, WHOLE)), help=f"of {SELECTORS} and 'all'"
    )
    g.add_argument("--tau", type=float, default=0.9, help="gdig --tau")
    g.add_argument("--scoring", default="raw", help="gdig --scoring")
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
        default="raw,cosine",
        help="choice step on dev: scorings to try ('' = --scoring)",
    )
    g = ap.add_argument_group("fine-tuning (gdig.train)")
    g.add_argument("--train-seeds", default="0,1,2", help="comma-separated training seeds")
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
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for training and decoding (default: on for CUDA, off on CPU, "
        "where fp32 measured 1.6-1.8x less CPU time than bf16 autocast for SmolLM2)",
    )
    g.add_argument("--template", default="paper", help="prompt template (training and decoding)")
    g.add_argument("--max-length", type=int, default=512, help="longest training example")
    g.add_argument("--keep-models", action="store_true", help="keep every fine-tuned model")
    g = ap.add_argument_group("evaluation")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--eval-batch-size", type=int, default=32)
    g.add_argument("--bootstrap-n", type=int, default=1000, help="paired bootstrap resamples")
    g.add_argument(
        "--compare",
        default="random",
        help="baselines gdig is tested against (paired bootstrap), of quality,diversity,random,all",
    )
    ap.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars"
    )
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    pre, _ = ap.parse_known_args(argv)
    if pre.smoke:
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    if args.report_dir is None:
        args.report_dir = args.out if args.smoke else str(HERE)
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.bf16 is None:
        args.bf16 = args.device.startswith("cuda")
    bad = set(_words(args.selectors)) - {*SELECTORS, WHOLE}
    if bad:
        ap.error(f"--selectors: unknown {sorted(bad)}")
    return args


# --------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def subset_digest(pairs) -> str:
    """sha256 of the subset's pairs in order (what the fine-tuning sees)."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.src, p.tgt], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _finetune_meta(model: Path) -> dict[str, Any]:
    """Steps and losses from the fine-tuned folder's gdig_finetune.json, when there."""
    path = Path(model) / "gdig_finetune.json"
    if not path.is_file():
        return {}
    meta = _read_json(path)
    losses = meta.get("losses") or []
    keep = {k: v for k, v in meta.items() if k not in ("losses", "fingerprint", "config")}
    if losses:
        keep["first_loss"], keep["last_loss"] = losses[0], losses[-1]
        keep["steps"] = len(losses)
    return keep


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu or platform.processor(),
        "cpus_visible": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- stages


class Experiment:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.argv = argv
        self.out = Path(args.out).resolve()
        self.report_dir = Path(args.report_dir).resolve()
        self.budgets = _ints(args.budgets)
        self.selectors = _words(args.selectors)
        self.seeds = _ints(args.train_seeds)
        self.tau, self.scoring = args.tau, args.scoring
        self.t0 = time.perf_counter()
        self.timings: dict[str, Any] = {}
        self.dev_choice: dict[str, Any] | None = None

    # -- data and models
    def build_data(self) -> None:
        a = self.args
        self.split_cfg = qdata.SplitConfig(
            direction=a.direction,
            n_seeds=a.n_seeds,
            n_pool=a.n_pool,
            n_dev=a.n_dev,
            n_test=a.n_test,
            n_test_other=a.n_test_other,
            noise_frac=a.noise_frac,
            seed=a.data_seed,
        )
        self.splits = qdata.build_splits(a.data_dir, self.split_cfg)
        self.data_dir = self.out / "data"
        self.data_summary = qdata.write_splits(self.splits, self.split_cfg, self.data_dir)
        log(f"data: {self.data_summary['sizes']} noise {self.data_summary['noise_counts']}")

    def base_model(self) -> Path:
        if self.args.smoke:
            path = self.out / "tiny_model"
            if not (path / "config.json").is_file():
                sys.path.insert(0, str(ROOT / "tests"))
                from helpers_models import save_tiny

                save_tiny("llama", path)
            return path
        from gdig.model.load import resolve_model

        return resolve_model(self.args.model, progress=self.args.progress)

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
            bf16=a.bf16,
            train_seed=seed,
        )

    def eval_cfg(self):
        from gdig.train.config import EvalConfig

        a = self.args
        return EvalConfig(
            max_new_tokens=a.max_new_tokens, eval_batch_size=a.eval_batch_size, bf16=a.bf16
        )

    def train(self, pairs, out: Path, seed: int) -> Path:
        from gdig.io.errors import UsageError
        from gdig.train.finetune import finetune

        kw = {
            "template": self.args.template,
            "max_length": self.args.max_length,
            "device": self.args.device,
            "progress": self.args.progress,
        }
        cfg = self.finetune_cfg(seed)
        try:  # resumes its own checkpoint; a finished model of the same inputs is kept
            return finetune(self.base, pairs, out, cfg, **kw)
        except UsageError as exc:  # the folder holds another run's model or checkpoint
            log(f"{out}: {exc}; starting it over")
            return finetune(self.base, pairs, out, cfg, restart=True, **kw)

    def evaluate(self, model: Path, split: str, out_file: Path) -> dict[str, Any]:
        from gdig.train.evaluate import evaluate

        res = evaluate(
            model,
            self.splits[split],
            self.eval_cfg(),
            out_file=out_file,
            template=self.args.template,
            max_length=self.args.max_length,
            device=self.args.device,
            progress=self.args.progress,
        )
        return {k: v for k, v in res.items() if k != "rows"}  # rows: in out_file

    # -- gdig
    def score_pool(self) -> None:
        a = self.args
        self.scorer = self.base
        if a.finetune_first:
            t = time.perf_counter()
            log("finetune-first: fine-tuning the base model on the raw pool (training seed 0)")
            self.scorer = self.train(self.splits["pool"], self.out / "scorer_model", 0)
            self.timings["finetune_first_s"] = time.perf_counter() - t
        self.run_dir = self.out / "gdig_run"
        t, c = time.perf_counter(), time.process_time()
        gdig_cli(
            [
                "run",
                "--model",
                str(self.scorer),
                "--seeds",
                str(self.data_dir / "seeds.jsonl"),
                "--pool",
                str(self.data_dir / "pool.jsonl"),
                "--out",
                str(self.run_dir),
                "--budget",
                str(max(self.budgets)),
                "--label-field",
                "noise",
                "--no-progress",
                "--on-short",
                "fill",
                "--tau",
                str(self.tau),
                "--scoring",
                self.scoring,
                "--factor-samples",
                str(a.factor_samples),
                "--layer-stride",
                str(a.layer_stride),
                "--autocast",
                a.autocast,
                "--device",
                a.device,
                # redo exactly the stages whose inputs or options changed (a new pool, other
                # options, another gdig version); what still matches is reused
                "--force-restart",
                *shlex.split(a.gdig_args),
            ],
            self.out / "gdig.log",
        )
        self.timings["gdig_run_s"] = time.perf_counter() - t
        self.timings["gdig_run_cpu_s"] = time.process_time() - c
        manifest = _read_json(self.run_dir / "manifest.json")
        # subsets are cached per score fingerprint: other scores, other subsets
        self.subset_dir = self.out / "subsets" / manifest["fingerprints"]["score"][:16]
        self.gdig_stages = {s: r.get("seconds") for s, r in manifest["stages"].items()}
        noise = manifest["stages"].get("report", {}).get("noise") or {}
        self.gdig_noise = {
            k: noise[k].get("auc_neg_benefit_mean")
            for k in ("raw", "zscore", "cosine")
            if isinstance(noise.get(k), dict)
        }
        log(f"gdig run: stages {self.gdig_stages}, noise AUC {self.gdig_noise}")

    def subset(self, selector: str, budget: int, seed: int, tau: float, scoring: str) -> list:
        from gdig.data.pairs import read_pairs

        if selector == WHOLE:
            return list(self.splits["pool"])
        path = self.subset_dir / f"b{budget}-{selector}-s{seed}-tau{tau}-{scoring}.jsonl"
        if not path.is_file():
            gdig_cli(
                [
                    "select",
                    "--out",
                    str(self.run_dir),
                    "--selector",
                    selector,
                    "--budget",
                    str(budget),
                    "--on-short",
                    "fill",
                    "--random-seed",
                    str(seed),
                    "--tau",
                    str(tau),
                    "--scoring",
                    scoring,
                    "--no-progress",
                ],
                self.out / "gdig.log",
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.run_dir / "selected.jsonl", path)
        return read_pairs(path)

    # -- one fine-tune + evaluation
    def spec(self, selector: str, budget: int | None, seed: int, pairs, **extra) -> dict[str, Any]:
        """Everything a run's result depends on; a finished run with another spec is redone."""
        a = self.args
        return {
            "subset_sha256": subset_digest(pairs),
            "selector": selector,
            "budget": budget,
            "train_seed": seed,
            "tau": None if selector in ("random", "diversity", WHOLE) else self.tau,
            "scoring": None if selector in ("random", "diversity", WHOLE) else self.scoring,
            "model": str(a.model) if not a.smoke else "tiny-llama",
            "finetune_first": a.finetune_first,
            "data": self.data_summary["config"],
            "gdig": [a.factor_samples, a.layer_stride, a.autocast, a.gdig_args],
            "finetune": repr(self.finetune_cfg(seed)),
            "eval": repr(self.eval_cfg()),
            "template": a.template,
            **extra,
        }

    def one_run(
        self, key: str, spec: dict[str, Any], pairs, eval_splits: tuple[str, ...]
    ) -> dict[str, Any]:
        run = self.out / "runs" / key
        res_file = run / "result.json"
        if res_file.is_file():
            old = _read_json(res_file)
            if old.get("spec") == spec:
                log(f"{key}: done before, skipped")
                return old
        run.mkdir(parents=True, exist_ok=True)
        spec_file = run / "spec.json"
        if spec_file.is_file() and _read_json(spec_file) != spec:  # another run's leftovers
            shutil.rmtree(run / "model", ignore_errors=True)
        _write_json(spec_file, spec)
        log(f"{key}: fine-tuning on {len(pairs)} pairs")
        t, c, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        model = self.train(pairs, run / "model", spec["train_seed"])
        train_s, train_cpu = time.perf_counter() - t, time.process_time() - c
        result: dict[str, Any] = {
            "key": key,
            "spec": spec,
            "subset": noise_of(pairs),
            # the fine-tuning's own wall time (over all resumed parts) when it says so
            "train_s": round(_finetune_meta(model).get("wall_s", train_s), 2),
            "train_s_this_call": round(train_s, 2),
            "train_cpu_s": round(train_cpu, 2),  # CPU seconds of this call, all threads
            "loadavg_1min_at_start": load,
            "finetune": _finetune_meta(model),
            "eval": {},
        }
        for split in eval_splits:
            t, c = time.perf_counter(), time.process_time()
            hyp_file = run / f"hyps_{split}.jsonl"
            metrics = self.evaluate(model, split, hyp_file)
            metrics["eval_s"] = round(time.perf_counter() - t, 2)
            metrics["eval_cpu_s"] = round(time.process_time() - c, 2)
            metrics["hyp_file"] = hyp_file.name
            result["eval"][split] = metrics
            log(
                f"{key}: {split} BLEU {metrics['bleu']:.2f} chrF {metrics['chrf']:.2f} "
                f"({metrics['eval_s']:.0f} s)"
            )
        _write_json(res_file, result)
        if not self.args.keep_models:
            shutil.rmtree(run / "model", ignore_errors=True)
        log(
            f"{key}: train {result['train_s']:.0f} s, noise rate "
            f"{result['subset']['noise_rate']:.3f}"
        )
        return result

    # -- the choice step on dev
    def choose_on_dev(self) -> None:
        taus = _floats(self.args.dev_taus) or [self.tau]
        scorings = _words(self.args.dev_scorings) or [self.scoring]
        if len(taus) * len(scorings) <= 1:
            return
        budget = min(self.budgets)
        trials = []
        for tau in taus:
            for scoring in scorings:
                key = f"dev-b{budget}-gdig-tau{tau}-{scoring}"
                pairs = self.subset("gdig", budget, 0, tau, scoring)
                spec = self.spec("gdig", budget, 0, pairs, dev_tau=tau, dev_scoring=scoring)
                res = self.one_run(key, spec, pairs, ("dev",))
                trials.append(
                    {
                        "tau": tau,
                        "scoring": scoring,
                        "dev_chrf": res["eval"]["dev"]["chrf"],
                        "dev_bleu": res["eval"]["dev"]["bleu"],
                        "noise_rate": res["subset"]["noise_rate"],
                    }
                )
        best = max(trials, key=lambda r: r["dev_chrf"])
        self.tau, self.scoring = best["tau"], best["scoring"]
        self.dev_choice = {"budget": budget, "trials": trials, "chosen": best}
        log(f"dev choice: tau {self.tau}, scoring {self.scoring} (dev chrF {best['dev_chrf']})")

    # -- everything
    def run(self) -> dict[str, Any]:
        self.build_data()
        self.base = self.base_model()
        self.score_pool()
        self.choose_on_dev()
        results = []
        t = time.perf_counter()
        for budget in self.budgets:
            for selector in (s for s in self.selectors if s != WHOLE):
                for seed in self.seeds:
                    pairs = self.subset(selector, budget, seed, self.tau, self.scoring)
                    key = f"b{budget}-{selector}-s{seed}"
                    results.append(
                        self.one_run(
                            key, self.spec(selector, budget, seed, pairs), pairs, TEST_SETS
                        )
                    )
        if WHOLE in self.selectors:
            for seed in self.seeds:
                pairs = self.subset(WHOLE, 0, seed, self.tau, self.scoring)
                key = f"{WHOLE}-s{seed}"
                results.append(
                    self.one_run(key, self.spec(WHOLE, None, seed, pairs), pairs, TEST_SETS)
                )
        self.timings["runs_wall_s"] = time.perf_counter() - t
        self.timings["total_wall_s"] = time.perf_counter() - self.t0
        self.timings["total_cpu_s"] = time.process_time()
        self.timings["loadavg_at_end"] = list(os.getloadavg())
        return self.write_report(results)

    def write_report(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        a = self.args
        refs = {s: [p.tgt for p in self.splits[s]] for s in TEST_SETS}
        hyps = {
            r["key"]: qsummary.read_hyps(self.out / "runs" / r["key"], TEST_SETS) for r in results
        }
        report = qsummary.build(
            results=results,
            refs=refs,
            hyps=hyps,
            budgets=self.budgets,
            selectors=self.selectors,
            seeds=self.seeds,
            compare=[c for c in _words(a.compare) if c in self.selectors and c != "gdig"],
            bootstrap_n=a.bootstrap_n,
            tgt_lang=self.splits["test_in"][0].tgt_lang,
        )
        report.update(
            {
                "command": "python benchmarks/quality/run_quality.py " + shlex.join(self.argv),
                "args": vars(a),
                "non_default_args": {
                    k: v
                    for k, v in vars(a).items()
                    if k not in ("out", "report_dir", "progress", "data_dir")
                    and v != build_parser().get_default(k)
                    and not (k == "bf16" and v == a.device.startswith("cuda"))  # auto
                },
                "data": self.data_summary,
                "gdig_run": {
                    "scorer": "model fine-tuned on the pool" if a.finetune_first else "base model",
                    "stage_seconds": self.gdig_stages,
                    "noise_auc": self.gdig_noise,
                    "tau": self.tau,
                    "scoring": self.scoring,
                },
                "dev_choice": self.dev_choice,
                "timings": {
                    k: round(v, 1) if isinstance(v, float) else v for k, v in self.timings.items()
                },
                "time_budget": TIME_BUDGET,
                "machine": machine(),
                "runs": results,
            }
        )
        self.report_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.report_dir / "results.json", report)
        png = self.report_dir / "quality.png"
        qsummary.plot(report, png)
        md = qsummary.markdown(report, png.name)
        (self.report_dir / "RESULTS.md").write_text(md, encoding="utf-8")
        log(f"report: {self.report_dir / 'RESULTS.md'}")
        return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    Experiment(args, argv).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
