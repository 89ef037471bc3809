"""The whole pipeline on a model architecture with random weights: stage times, candidates
scored per second and the share of the scoring time the GPU is busy (torch.profiler).

    python benchmarks/gpu_pipeline.py --config .gpu_carry/smollm2-config \\
        --pairs .gpu_carry/pairs --n-pool 4000 --n-seeds 256 --device cuda --json p.json
    python benchmarks/gpu_pipeline.py ... --device cpu --shrink --n-pool 24 --n-seeds 4

The model is built from ``--config`` (a Hugging Face folder with config.json and the
tokenizer; no weights travel) with random weights: throughput does not depend on them.
``--shrink`` cuts it to 2 blocks of width 64 (the dry run on a CPU). The run is gdig's own
command line, in this process: ``gdig fit``, ``gdig score`` and, when matplotlib is
installed (its report draws with it), ``gdig select``, with ``--autocast bf16``.

Timed, by wrapping the engine's entry points: the factor fit, the seed preparation and the
scoring of the pool (device synchronised before and after). Scoring is then run a second
time, warm, into a scratch store under torch.profiler (GPU activity only): the union of the
intervals in which a kernel, copy or memset ran on the GPU, over that pass's wall time, is
the GPU-busy share. The profiler's own cost makes the second pass slower; both rates are
reported. The JSON also holds the manifest's stage seconds and the 15 kernels that took the
most GPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")  # fmt: skip


def build_model(config_dir: Path, out: Path, shrink: bool) -> int:
    """A random-weight model of ``config_dir``'s architecture saved at ``out``, with its
    tokenizer files; returns the parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    if shrink:  # the dry run: the same architecture, tiny
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2
        if getattr(cfg, "head_dim", None):
            cfg.head_dim = 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (config_dir / name).is_file():
            shutil.copy(config_dir / name, out / name)
    return sum(p.numel() for p in model.parameters())


def merged_busy_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def device_intervals(prof) -> list[tuple[float, float]]:
    """(start, end) in microseconds of everything the profiler saw run on a GPU: its
    device-side events, or (torch versions that leave them out of ``events()``) kineto's."""
    from torch.autograd import DeviceType

    spans = [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if getattr(e, "device_type", None) == DeviceType.CUDA
    ]
    if spans:
        return spans
    raw = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    for e in raw.events() if raw is not None else []:
        if e.device_type() == DeviceType.CUDA:
            start = e.start_ns() / 1e3 if hasattr(e, "start_ns") else e.start_us()
            length = e.duration_ns() / 1e3 if hasattr(e, "duration_ns") else e.duration_us()
            spans.append((start, start + length))
    return spans


class Timed:
    """Wraps the engine's entry points (looked up by name when a stage runs) to time them;
    the scoring pass is then repeated, warm, under the profiler into a scratch store."""

    def __init__(self, device: str, scratch: Path | None) -> None:
        self.device, self.scratch = device, scratch  # no scratch: no profiled pass
        self.seconds: dict[str, float] = {}
        self.profile: dict = {}

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self._sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds[name] = time.perf_counter() - t
            if name == "score_candidates" and self.scratch is not None:
                self._profiled_pass(fn, args, kwargs)
            return out

        return timed

    def _profiled_pass(self, fn, args, kwargs) -> None:
        from torch.profiler import ProfilerActivity, profile

        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.arguments["store_dir"] = self.scratch
        gpu = self.device.startswith("cuda")
        activity = ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            self._sync()
            t = time.perf_counter()
            fn(*bound.args, **bound.kwargs)
            self._sync()
            wall = time.perf_counter() - t
        spans = device_intervals(prof) if gpu else []
        # No GPU event at all means the profiler could not see the GPU (no CUPTI), not idle.
        busy = merged_busy_us(spans) / 1e6 if spans else None
        sort = "self_device_time_total" if gpu else "self_cpu_time_total"
        with contextlib.suppress(Exception):  # a table is a nicety; older torch names differ
            self.profile["top_ops"] = prof.key_averages().table(sort_by=sort, row_limit=15)
        self.profile.update(
            gpu_events=len(spans),
            profiled_score_s=wall,
            gpu_busy_s=busy,
            gpu_busy_share=busy / wall if busy is not None else None,
        )


def pairs_file(src: Path, n: int, dst: Path) -> Path:
    with open(src, encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f, strict=False)]
    if len(lines) < n:
        raise SystemExit(f"gpu_pipeline: {src} has {len(lines)} pairs, {n} asked for")
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def run_verbs(verbs: list[list[str]], common: list[str], after=None) -> float:
    """gdig's command line, verb after verb, in this process, calling ``after(seconds)``
    after each; returns the wall seconds."""
    from gdig.cli import main as gdig_main

    t0 = time.perf_counter()
    for verb in verbs:
        status = gdig_main([verb[0], *common, *verb[1:]])
        if status:
            raise SystemExit(f"gpu_pipeline: gdig {verb[0]} exited with {status}")
        if after is not None:
            after(time.perf_counter() - t0)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="folder: config.json + tokenizer")
    p.add_argument("--pairs", type=Path, help="folder: seeds.jsonl, pool.jsonl")
    p.add_argument("--n-pool", type=int, default=4000)
    p.add_argument("--n-seeds", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shrink", action="store_true", help="2 blocks of width 64 (dry run)")
    p.add_argument(
        "--ranks",
        choices=["fit", "score"],
        help="under torchrun: run this verb on every rank, with the model and pairs an earlier "
        "run left in --work, into WORK/torchrun (one verb a launch: each process joins the "
        "process group once)",
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gdig_gpu_pipeline")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "python"))
    sys.path.insert(1, str(ROOT))
    import gdig.engine as engine

    model_dir, pool, seeds = (
        args.work / "model",
        args.work / "pool.jsonl",
        args.work / "seeds.jsonl",
    )
    if args.ranks:
        run, params = args.work / "torchrun", None
    else:
        if not (args.config and args.pairs):
            p.error("--config and --pairs are needed (all but --ranks)")
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        params = build_model(args.config, model_dir, args.shrink)
        pairs_file(args.pairs / "pool.jsonl", args.n_pool, pool)
        pairs_file(args.pairs / "seeds.jsonl", args.n_seeds, seeds)
        run = args.work / "run"

    timed = Timed(args.device, None if args.ranks else args.work / "profiled_store")
    for name in ("fit_factors", "prepare_seeds", "score_candidates"):
        setattr(engine, name, timed.wrap(name, getattr(engine, name)))
    verbs = [
        ["fit", "--model", str(model_dir), "--pool", str(pool), "--autocast", "bf16"],
        ["score", "--seeds", str(seeds)],
    ]
    if args.ranks:
        verbs = [v for v in verbs if v[0] == args.ranks]
    else:  # selection and the report run on one process anyway
        try:
            import matplotlib  # noqa: F401

            verbs.append(["select", "--budget", str(max(1, args.n_pool // 10)), "--tau", "0.5",
                          "--on-short", "fill"])  # fmt: skip
        except ImportError:  # gdig select also writes the report, which draws with it
            print("gpu_pipeline: no matplotlib here: select (and its report) left out")
    gpu = args.device.startswith("cuda")
    head = {
        "device": torch.cuda.get_device_name() if gpu else "cpu (dry run)",
        "torch": torch.__version__,
        "ranks": int(os.environ.get("WORLD_SIZE", "1")),
        "model": (args.config.name if args.config else f"the model in {args.work}")
        + (" (shrunk)" if args.shrink else "")
        + (f", random weights, {params / 1e6:.1f}M parameters" if params else ""),
        "candidates": sum(1 for _ in open(pool, encoding="utf-8")),
        "seeds": sum(1 for _ in open(seeds, encoding="utf-8")),
        "autocast": "bf16",
    }

    def report(wall: float) -> None:
        """The results so far, written after every verb: a stage cut short by its timeout
        still leaves what the verbs before it measured."""
        if os.environ.get("RANK", "0") != "0":
            return  # rank 0 speaks for the run
        manifest = json.loads((run / "manifest.json").read_text())
        score_s = timed.seconds.get("score_candidates")
        result = {
            **head,
            "wall_s": wall,
            "engine_s": timed.seconds,
            "stage_s": {k: v.get("seconds") for k, v in manifest["stages"].items()},
            # score_candidates ends on a barrier of every rank: rank 0's time is the pool's
            "candidates_per_s": head["candidates"] / score_s if score_s else None,
            "candidates_per_s_profiled": (
                head["candidates"] / timed.profile["profiled_score_s"] if timed.profile else None
            ),
            "gpu_busy_share": timed.profile.get("gpu_busy_share"),
            "gpu_events_profiled": timed.profile.get("gpu_events"),
        }
        print(json.dumps(result, indent=1), flush=True)
        if args.json:
            result["top_ops"] = timed.profile.get("top_ops")
            args.json.write_text(json.dumps(result, indent=1))

    run_verbs(verbs, ["--out", str(run), "--device", args.device, "--no-progress"], report)
    print(timed.profile.get("top_ops", ""))


if __name__ == "__main__":
    main()
