"""How long a run's model passes will take on this machine, and the disk its folder will
take, measured before the run: the real engine (fit, seed preparation, scoring) is timed
on a few pool pairs and seeds and extrapolated to the run's sizes. A fit's fixed cost (its
eigendecompositions, which the fit times itself) is told apart from its cost per example;
seeds and scoring are each timed at two sizes to tell their fixed and per-item costs apart.

An estimate, not a promise: the measured batches are smaller than the run's (per-item
cost a little high), and a long fit may recompute activations that a short one keeps in
memory (a little low).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gdig.engine.faults import FAULT_ENV
from gdig.pipeline.config import RunOptions
from gdig.pipeline.folder import RunFolder
from gdig.pipeline.inputs import ExecutionPlan, RunInputs


@dataclass
class Line:
    """``seconds = fixed + per_item * items`` for one measured step."""

    fixed: float
    per_item: float

    @classmethod
    def fit(cls, small: tuple[int, float], large: tuple[int, float]) -> Line:
        """The line through two timings. Where noise (another process taking the CPU
        during one of them) puts the slope outside what the larger timing allows, that is
        negative or above ``t2 / n2`` (a negative fixed cost), all of ``t2`` is charged per
        item instead."""
        (n1, t1), (n2, t2) = small, large
        per = (t2 - t1) / (n2 - n1) if n2 > n1 else 0.0
        if not 0 < per <= t2 / max(n2, 1):
            return cls(0.0, t2 / max(n2, 1))
        return cls(t2 - per * n2, per)

    def at(self, items: int) -> float:
        return self.fixed + self.per_item * items


@dataclass
class Estimate:
    fit_s: float
    seeds_s: float
    score_s: float
    seeds_file_bytes: int
    measured: str  # what was timed

    @property
    def total_s(self) -> float:
        return self.fit_s + self.seeds_s + self.score_s


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(
    inputs: RunInputs,
    opts: RunOptions,
    plan: ExecutionPlan,
    where: Path,
    n: int = 8,
    warm_up: bool = True,
) -> Estimate:
    """Time fit, seed preparation and scoring on up to ``n`` pool pairs and seeds (each at
    ``n // 2`` and ``n``), in a scratch folder in ``where``; nothing of the run changes.

    ``warm_up`` fits once more, on one example, first: the first call's costs then land
    in no measurement. Without it they are charged per example: an estimate a little high,
    never low."""
    model, tok = inputs.model()
    pool, seeds = inputs.pool, inputs.seeds
    n = max(2, min(n, len(pool)))
    # The fault points of the kill tests (GDIG_FAULT) belong to the run, not to this.
    fault = os.environ.pop(FAULT_ENV, None)
    try:
        return _measure(opts, plan, where, model, tok, pool, seeds, n, warm_up)
    finally:
        if fault is not None:
            os.environ[FAULT_ENV] = fault


def _measure(
    opts: RunOptions,
    plan: ExecutionPlan,
    where: Path,
    model,
    tok,
    pool,
    seeds,
    n: int,
    warm_up: bool,
) -> Estimate:
    # From their modules: the run's own stages call gdig.engine's names (which a test may
    # replace to interrupt a stage); the estimate must not be the call that trips it.
    from gdig.engine.factors import fit_factors
    from gdig.engine.score import score_candidates
    from gdig.engine.seeds import prepare_seeds, save_seeds

    eng = plan.engine(opts)
    half = max(1, n // 2)
    sample = pool.take(range(n))
    seed_n = max(1, min(n, len(seeds)))
    seed_half = max(1, seed_n // 2)
    seed_sample = seeds.take(range(seed_n))

    def fit(k: int):
        cfg = eng.with_options(factor_samples=k)
        return fit_factors(model, tok, sample[:k], cfg, progress=False)

    if warm_up:
        fit(1)
    t_fit, factors = _timed(lambda: fit(n))
    eigen = min(factors.eigen_seconds, t_fit)  # the same whatever the sample
    fit_line = Line(eigen, (t_fit - eigen) / n)
    eng = eng.with_options(factor_samples=n)  # the options the factors were fitted with

    def prepare(k: int):
        return prepare_seeds(model, tok, seed_sample[:k], factors, eng, progress=False)

    s_half, few = _timed(lambda: prepare(seed_half))
    s_full, prepared = _timed(lambda: prepare(seed_n))
    seed_line = Line.fit((seed_half, s_half), (seed_n, s_full))

    scratch = Path(tempfile.mkdtemp(prefix=".gdig-estimate-", dir=where))
    try:
        # Scoring: a fixed part per call (the store's files), a part per candidate, and
        # in each candidate a part per seed it is scored against.
        def score(prepared_seeds, k: int, name: str) -> float:
            return _timed(
                lambda: score_candidates(
                    model, tok, sample[:k], prepared_seeds, eng, scratch / name, progress=False
                )
            )[0]

        c_half, c_all, c_few = (
            score(prepared, half, "a"),
            score(prepared, n, "b"),
            score(few, n, "c"),
        )
        save_seeds(prepared, scratch / "seeds.pt", "estimate")
        seed_bytes = (scratch / "seeds.pt").stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_candidate = Line.fit((half, c_half), (n, c_all))  # at seed_n seeds
    per_seed = max(c_all - c_few, 0.0) / max(seed_n - seed_half, 1) / n  # a candidate's

    samples = min(opts.factors.factor_samples or len(pool), len(pool))
    n_seeds = len(seeds)
    return Estimate(
        fit_s=fit_line.at(samples),
        seeds_s=seed_line.at(n_seeds),
        score_s=per_candidate.at(len(pool)) + per_seed * (n_seeds - seed_n) * len(pool),
        seeds_file_bytes=int(seed_bytes / seed_n * n_seeds),
        measured=f"{n} pool pairs and {seed_n} seeds, on {plan.device}",
    )


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.1f} {unit}"
    return f"{n} B"


def summary(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, est: Estimate, todo: list[str]
) -> list[str]:
    """The estimate in words: one line per model stage to run, and the run folder's disk."""
    pool, seeds = len(inputs.pool), len(inputs.seeds)
    fac = opts.factors
    samples = min(fac.factor_samples or pool, pool)
    lines = []
    if "fit" in todo:
        lines.append(f"fit    ~{_duration(est.fit_s)} ({samples} pool pairs, {fac.method})")
    if "score" in todo:
        lines.append(
            f"score  ~{_duration(est.seeds_s + est.score_s)} ({seeds} seeds: "
            f"~{_duration(est.seeds_s)}; {pool} candidates: ~{_duration(est.score_s)})"
        )
    disk = folder.check("disk_estimate_bytes") or {}
    if disk:
        total = disk.get("store", 0) + disk.get("factors", 0) + est.seeds_file_bytes
        lines.append(
            f"disk   ~{_size(total)} in {folder.path} (gradient store "
            f"{_size(disk.get('store', 0))}, "
            f"factors {_size(disk.get('factors', 0))}, prepared seeds "
            f"{_size(est.seeds_file_bytes)} until scoring ends)"
        )
    lines.append(f"(measured on {est.measured}; select and report take seconds, no model)")
    return lines
