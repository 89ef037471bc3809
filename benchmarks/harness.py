"""What every benchmark script shares: where the data is, child processes, rounds of
timings, the machine line, memory meters and the RESULTS.md sections.

A script imports this module (``sys.path`` holds ``benchmarks/`` when the script runs),
adds :func:`add_common_args` to its parser, and writes its table with
:func:`write_section`, so every section of ``benchmarks/RESULTS.md`` has the same
markers and is regenerated in place by the script that owns it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# Above this 1-minute load per core the machine is shared and timings are not comparable.
BUSY_LOAD_PER_CORE = 0.5
# CPU flags that decide what a timing means (vector width, fast bf16 matmuls).
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

for _p in (ROOT / "python", ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))


# ---------------------------------------------------------------- data


def data_dir(arg: str | Path | None = None) -> Path:
    """The real pairs: ``--data-dir``, else ``$GDIG_DATA_DIR``, else ``../shared/data``
    beside the repository."""
    return Path(arg or os.environ.get("GDIG_DATA_DIR") or ROOT.parent / "shared" / "data")


def real_pairs(name: str, start: int = 0, n: int = 8, where: str | Path | None = None) -> list:
    """``n`` pairs of the JSONL file ``name`` in :func:`data_dir`, from line ``start``."""
    from gdig.data.pairs import Pair

    path = data_dir(where) / name
    if not path.is_file():
        raise SystemExit(f"{path}: no such data file; pass --data-dir or set GDIG_DATA_DIR")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(out) == n:
                break
            if i >= start:
                r = json.loads(line)
                out.append(Pair(r["id"], r["src"], r["tgt"], r["src_lang"], r["tgt_lang"]))
    return out


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="real pairs (default ../shared/data)")
    p.add_argument(
        "--strict-load",
        action="store_true",
        help=f"refuse to start above a 1-minute load of {BUSY_LOAD_PER_CORE} per core "
        "(default: run and write the warning into the table)",
    )


# ---------------------------------------------------------------- child processes


def run_child(script: str | Path, spec: dict, env: dict | None = None) -> dict:
    """Run ``script --child SPEC`` in a fresh interpreter; its last stdout line is the
    JSON result. A failure returns ``{"failed": last line of stderr}``."""
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        return {"failed": lines[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(argv: Sequence[str], fn: Callable[[dict], Any]) -> bool:
    """In a child (``argv`` = ``--child SPEC``): print ``fn(spec)`` as JSON; True if so."""
    if list(argv[:1]) != ["--child"]:
        return False
    print(json.dumps(fn(json.loads(argv[1]))), flush=True)
    return True


# ---------------------------------------------------------------- rounds of timings


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` starting at ``round_index`` mod len: each goes first equally often."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def timed_rounds(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, list]:
    """One warm-up call of each method, then ``rounds`` rounds in rotated order: seconds."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for m in rotated(list(methods), r):
            t = time.perf_counter()
            methods[m]()
            times[m].append(time.perf_counter() - t)
    return times


def spread(values: Sequence[float], fmt: str = ".2f") -> str:
    """``median (min-max)`` of repeated figures."""
    med = statistics.median(values)
    if len(values) < 2:
        return f"{med:{fmt}}"
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


# ---------------------------------------------------------------- machine and load


def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def cpu_model() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines())
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
        flags = set(info.get("flags", "").split())
    except (OSError, KeyError, ValueError):
        pass
    return f"{model}, flags {' '.join(f for f in FLAGS if f in flags) or 'unknown'}"


def commit_description() -> str:
    """The checked-out commit, and which tracked files differ from it (they ran too)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "commit unknown (not a git checkout)"
    dirty = git("diff", "--name-only", "HEAD").split()
    return f"commit {head}" + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")


class Machine:
    """What a table ran on: opened when the measurements start, :meth:`line` at the end."""

    def __init__(self, threads: int, device: str = "cpu", strict: bool = False) -> None:
        import torch

        self.threads, self.device = threads, device
        self.start, self.load_start = datetime.datetime.now(), os.getloadavg()[0]
        self.torch, self.commit = torch.__version__, commit_description()
        if device == "cuda":
            self.model = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
        else:
            self.model = cpu_model()
        if strict and self.busy(self.load_start):
            raise SystemExit(
                f"1-minute load {self.load_start:.1f} on {os.cpu_count()} cores is above "
                f"{BUSY_LOAD_PER_CORE} per core: not starting (--strict-load)"
            )

    @staticmethod
    def busy(load: float) -> bool:
        return load / (os.cpu_count() or 1) > BUSY_LOAD_PER_CORE

    def line(self) -> str:
        """The machine line; ends with a WARNING when the machine was busy."""
        end, load_end = datetime.datetime.now(), os.getloadavg()[0]
        threads = f"{self.threads} thread" + ("" if self.threads == 1 else "s")
        text = (
            f"Machine: {self.model}, {os.cpu_count()} cores, torch {self.torch}, "
            f"{threads}; {self.commit}; {self.start:%Y-%m-%d %H:%M} to "
            f"{end:%H:%M}; 1-min load {self.load_start:.1f} at the start, {load_end:.1f} at "
            "the end."
        )
        # At the end the 1-minute load still counts this script's own threads: only what
        # exceeds them is another process's.
        if self.busy(self.load_start) or self.busy(load_end - self.threads):
            text += (
                f" **WARNING: load above {BUSY_LOAD_PER_CORE} per core: other processes shared "
                "the cores, so these timings are not comparable with a quiet machine's.**"
            )
        return text


# ---------------------------------------------------------------- memory


def proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS, VmHWM, RssAnon, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line")


def peak_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak over
    fork+exec into the child."""
    return proc_status_kib("VmHWM") / 1024


class PeakMeter:
    """Peak memory (bytes) a block adds: CUDA allocator peak, or VmHWM after resetting it."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __enter__(self) -> PeakMeter:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.base = proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = proc_status_kib("VmHWM") * 1024 - self.base


class AnonPeak:
    """The largest anonymous resident memory (RssAnon), sampled on a thread: VmHWM also
    counts memory-mapped file pages, which the kernel may drop at any time."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak_kib = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_kib() -> int:
        return proc_status_kib("RssAnon")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.now_kib())
            self._stop.wait(self.every)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024

    def take_mib(self) -> float:
        """The peak since the last call (or the start), in MiB; starts a new window."""
        now = self.now_kib()
        peak, self.peak_kib = max(self.peak_kib, now), now
        return peak / 1024


# ---------------------------------------------------------------- RESULTS.md sections


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that made a table, as a reader reruns it: an absolute path given (a work
    folder of this machine) is shown as DIR."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(
        ["python", f"benchmarks/{script}", *("DIR" if a[:1] == "/" else a for a in args)]
    )


def markers(key: str, script: str) -> tuple[str, str]:
    return f"<!-- {key}: start (generated by benchmarks/{script}) -->", f"<!-- {key}: end -->"


def write_section(path: str | Path, key: str, script: str, body: str) -> None:
    """Put ``body`` between the ``key`` markers of ``path``: in place if they are there,
    else appended; everything else in the file is kept."""
    path = Path(path)
    start, end = markers(key, script)
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    opening = f"<!-- {key}: start"
    if opening in text and end in text:
        head, rest = text.split(opening, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")
