#!/usr/bin/env bash
# One device call that verifies gdig's GPU path, within 9 minutes on one GPU:
#
#   build      gdig_ext with its CUDA kernels, for this GPU's architecture only
#   tests      every CUDA test (tests/ -m cuda), each under a per-test timeout
#   ops        the GPU's ceilings (copy, host-to-device, matmul) and each op against them
#              (benchmarks/gpu_ceilings.py)
#   pipeline   gdig fit/score(/select) --device cuda on the SmolLM2-135M architecture with
#              random weights, 4,000 candidates x 256 seeds: candidates/s and the GPU-busy
#              share of scoring (benchmarks/gpu_pipeline.py)
#   sanitize   compute-sanitizer memcheck, racecheck, synccheck over benchmarks/gpu_smoke.py,
#              when the tool is installed
#   torchrun   fit and score again on 2 ranks (NCCL), when two GPUs are visible
#
# From the repository root, with .gpu_carry/ prepared by `make gpu-carry` and carried:
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#   GDIG_GPU_DRY_RUN=1 OUT=DIR bash benchmarks/gpu_check.sh   # every stage on the CPU
#
# Each stage runs under its own `timeout`, at most its budget and never past what the
# stages after it need before the deadline (GDIG_GPU_BUDGET_S, default 540 s): a stage cut
# short, or failing, loses only itself. $OUT receives gpu_check.tar.gz (every log, the
# junit XML, the JSON results) and three summaries: summary.md, ops_vs_ceilings.md,
# pipeline.json. The exit status is 0 when every stage that ran passed.
#
# The dry run (GDIG_GPU_DRY_RUN=1; tests/test_gpu_check.py, part of `make test`) runs each
# stage's command on the CPU at toy sizes: the build stage only imports the extension that
# `make setup` built (a rebuild takes minutes on 2 cores), the tests collect the CUDA cases
# (all skipped without a GPU), the sanitizer stage runs gpu_smoke.py without a sanitizer,
# and torchrun uses 2 CPU ranks (gloo). Without .gpu_carry/ it makes a toy one
# (benchmarks/gpu_prepare.py --toy).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the results}"
PY="${PYTHON:-python3}"
DRY="${GDIG_GPU_DRY_RUN:-0}"
BUDGET="${GDIG_GPU_BUDGET_S:-540}"
CARRY="${CARRY:-.gpu_carry}"
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gdig_gpu_check.XXXXXX")"
LOGS="$WORK/gpu_check"
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
printf 'stage\tstatus\tseconds\tnote\n' >"$LOGS/stages.tsv"

if [ "$DRY" = 1 ]; then
  # Toy sizes on a shared CPU: each stage may take several times its GPU budget.
  DEVICE=cpu N_POOL=24 N_SEEDS=4 PIPELINE_ARGS=(--shrink) STRETCH=4
else
  DEVICE=cuda N_POOL="${N_POOL:-4000}" N_SEEDS="${N_SEEDS:-256}" PIPELINE_ARGS=() STRETCH=1
fi
BUDGET=$((BUDGET * STRETCH))

record() {  # stage status seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$LOGS/stages.tsv"
  echo "== $1: $2 (${3} s) $4"
}

# stage NAME BUDGET RESERVE CMD...: CMD under `timeout`, logged to $LOGS/NAME.log, at most
# BUDGET seconds and never into the RESERVE seconds that later stages need.
stage() {
  local name=$1 budget=$(($2 * STRETCH)) reserve=$(($3 * STRETCH))
  shift 3
  local left=$((BUDGET - ($(date +%s) - START) - reserve))
  local limit=$((budget < left ? budget : left))
  if [ "$limit" -lt 5 ]; then
    record "$name" skipped 0 "no time left before the deadline"
    return
  fi
  echo "== $name (at most ${limit} s): $*"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" "$(($(date +%s) - t0))" "limit ${limit} s"
  tail -n 4 "$LOGS/$name.log"
}

skip() {  # stage reason
  record "$1" skipped 0 "$2"
}

# ---------------------------------------------------------------- environment
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "dry run: $DRY"
  "$PY" -c 'import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}", torch.cuda.get_device_name(i), "capability %d.%d" % torch.cuda.get_device_capability(i))'
  command -v nvcc >/dev/null && nvcc --version | tail -n 1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
} >"$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

# ---------------------------------------------------------------- carry
if [ ! -d "$CARRY" ]; then
  if [ "$DRY" = 1 ]; then
    CARRY="$WORK/toy_carry"
    stage carry 60 0 "$PY" benchmarks/gpu_prepare.py --toy "$CARRY"
  else
    skip carry "no $CARRY: run make gpu-carry and carry it"
  fi
elif "$PY" -c 'import faiss' 2>/dev/null; then
  skip carry "faiss is installed"
elif ls "$CARRY"/wheels/faiss_cpu-*.whl >/dev/null 2>&1; then
  # Into a folder of its own: the machine's Python may be externally managed (PEP 668).
  stage carry 60 0 "$PY" -m pip install --no-index --no-deps --target "$WORK/site" \
    "$CARRY"/wheels/faiss_cpu-*.whl
  export PYTHONPATH="$WORK/site:$PYTHONPATH"
else
  skip carry "no faiss wheel in $CARRY/wheels"
fi

# ---------------------------------------------------------------- build
if [ "$DRY" = 1 ]; then
  stage build 60 0 "$PY" -c 'import gdig_ext; print("import ok; CUDA kernels:", gdig_ext.cuda_available())'
else
  if ! command -v nvcc >/dev/null && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
  fi
  ARCH="${GDIG_CUDA_ARCH:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
  stage build 220 280 env GDIG_CUDA=1 GDIG_CUDA_ARCH="$ARCH" MAX_JOBS="$(nproc)" \
    "$PY" setup.py build_ext --inplace
  "$PY" -c 'import gdig_ext, sys; sys.exit(not gdig_ext.cuda_available())' 2>/dev/null ||
    echo "gpu_check: gdig_ext has no CUDA kernels; the stages below will fail"
fi

# ---------------------------------------------------------------- tests
# The files that hold CUDA cases, so that a module importing something this machine lacks
# cannot stop the others (and --continue-on-collection-errors if one of these does).
TEST_ARGS=(-q -rfE -m cuda -p no:cacheprovider --continue-on-collection-errors --durations 15)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  TEST_ARGS+=(--timeout 60)  # per test: one hang must not spend the stage
fi
if [ "$DRY" = 1 ]; then
  TEST_PATHS=(tests/test_ops.py tests/test_ops_cuda.py)
else
  mapfile -t TEST_PATHS < <(grep -l -E 'mark\.cuda|CUDA_MARKS|ONLY_CUDA' tests/test_*.py)
fi
stage tests 170 170 "$PY" -m pytest "${TEST_ARGS[@]}" --junitxml "$LOGS/tests.xml" "${TEST_PATHS[@]}"

# ---------------------------------------------------------------- ops against the ceilings
if [ "$DRY" = 1 ]; then
  OPS_ARGS=(--device cpu --quick --iters 2)
else
  OPS_ARGS=(--device cuda)
fi
stage ops 80 100 "$PY" benchmarks/gpu_ceilings.py "${OPS_ARGS[@]}" \
  --json "$LOGS/ops.json" --md "$LOGS/ops_vs_ceilings.md"

# ---------------------------------------------------------------- the pipeline
stage pipeline 150 20 "$PY" benchmarks/gpu_pipeline.py --config "$CARRY/smollm2-config" \
  --pairs "$CARRY/pairs" --n-pool "$N_POOL" --n-seeds "$N_SEEDS" --device "$DEVICE" \
  --work "$WORK/pipeline" --json "$LOGS/pipeline.json" ${PIPELINE_ARGS[@]+"${PIPELINE_ARGS[@]}"}

# ---------------------------------------------------------------- sanitizers
SANITIZER="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
if [ "$DRY" = 1 ]; then
  stage sanitize 60 15 "$PY" benchmarks/gpu_smoke.py --device cpu
elif [ -x "$SANITIZER" ]; then
  for tool in memcheck racecheck synccheck; do
    stage "sanitize-$tool" 60 15 "$SANITIZER" --tool "$tool" --error-exitcode 9 \
      "$PY" benchmarks/gpu_smoke.py --device cuda
  done
else
  skip sanitize "compute-sanitizer not installed"
fi

# ---------------------------------------------------------------- torchrun, 2 ranks
# fit, then score, each a launch of its own, on the pipeline stage's model and pairs
RANKS='for verb in fit score; do
  "$0" -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/gpu_pipeline.py \
    --ranks "$verb" --device "$1" --work "$2" --json "$3" || exit 1
done'
if [ "$DRY" = 1 ] || [ "$GPUS" -ge 2 ]; then
  stage torchrun 120 5 bash -c "$RANKS" "$PY" "$DEVICE" "$WORK/pipeline" "$LOGS/torchrun.json"
else
  skip torchrun "$GPUS GPU(s) visible; needs 2"
fi

# ---------------------------------------------------------------- results
"$PY" benchmarks/gpu_summary.py "$LOGS" "$OUT/summary.md" >"$LOGS/summary.log" 2>&1 ||
  echo "gpu_check: the summary failed; see summary.log in the tarball"
for f in ops_vs_ceilings.md pipeline.json; do
  [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/$f"
done
tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" gpu_check
status=0
grep -qE $'\t(failed|timed out)' "$LOGS/stages.tsv" && status=1
[ -s "$OUT/summary.md" ] || status=1
rm -rf "$WORK"
cat "$OUT/summary.md" 2>/dev/null
echo "gpu_check: done in $(($(date +%s) - START)) s (status $status); results in $OUT"
exit $status
