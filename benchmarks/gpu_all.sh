#!/usr/bin/env bash
# The first GPU call: build gdig_ext in place with its CUDA kernels (for this GPU's
# architecture only), run the CUDA cases of tests/test_ops.py and tests/test_ops_cuda.py, then
# time the ops on the GPU and rate them against the GPU's measured ceilings.
# The second call is benchmarks/gpu_pipeline.sh (the whole pipeline with --device cuda on
# the SmolLM2 architecture); each fits in one call of at most 10 minutes.
#
#   OUT=/some/dir benchmarks/gpu_all.sh            # logs and results under $OUT
#   BENCH_ARGS="--quick" benchmarks/gpu_all.sh     # extra bench_ops.py flags
#
# Needs python3 with a CUDA build of torch, nvcc, ninja and pytest; no network.
# Writes to $OUT (default runs/gpu): env.txt, build.log, tests.log, tests.xml, bench.log,
# bench_ops.md, then the GPU's ceilings (ceilings.json, ceilings.log) and the op timings as a
# share of them (ceilings.md). Every stage runs even if an earlier test or bench fails; the
# exit status is non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "|", torch.cuda.get_device_name())' \
  | tee "$OUT/env.txt" || exit 1
if ! command -v nvcc >/dev/null && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
fi
nvcc --version | tail -n 2 | tee -a "$OUT/env.txt"
detected=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
arch="${GDIG_CUDA_ARCH:-$detected}"

echo "== build (arch $arch)"
start=$(date +%s)
GDIG_CUDA=1 GDIG_CUDA_ARCH="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
rc=$?
echo "build exit $rc after $(($(date +%s) - start)) s" | tee -a "$OUT/build.log"
if [ $rc -ne 0 ] || ! "$PY" -c 'import gdig_ext, sys; sys.exit(not gdig_ext.cuda_available())'; then
  tail -n 40 "$OUT/build.log"
  echo "gpu_all: the build failed or has no CUDA kernels; see $OUT/build.log" >&2
  exit 1
fi

status=0
echo "== CUDA tests"
"$PY" -m pytest -q -ra -p no:cacheprovider tests/test_ops.py tests/test_ops_cuda.py -m cuda \
  --junitxml "$OUT/tests.xml" \
  2>&1 | tee "$OUT/tests.log" || status=1

echo "== op benchmarks"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$PY" benchmarks/bench_ops.py --device cuda --out "$OUT/bench_ops.md" ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT/bench.log" || status=1

echo "== GPU ceilings (copy bandwidth, matmul FLOP/s) and each op's share of them"
report=()
if [ -f "$OUT/bench_ops.md" ]; then
  report=(--report "$OUT/bench_ops.md" --report-out "$OUT/ceilings.md")
fi
"$PY" benchmarks/gpu_ceilings.py --out "$OUT/ceilings.json" ${report[@]+"${report[@]}"} \
  2>&1 | tee "$OUT/ceilings.log" || status=1

echo "gpu_all: done (status $status); results in $OUT"
exit $status
