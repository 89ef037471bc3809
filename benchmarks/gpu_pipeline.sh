#!/usr/bin/env bash
# The second GPU call: the whole pipeline on the SmolLM2-135M architecture (random weights,
# built from its config) with --device cuda: stage seconds and candidates/s.
# The first call is benchmarks/gpu_all.sh (build, CUDA tests, op benchmarks); it leaves the
# compiled extension in place, so this one needs no build when the machine is still warm
# (otherwise it builds again).
#
#   python benchmarks/gpu_prepare.py                     # here, once: fills .gpu_carry/
#   OUT=$OUT bash benchmarks/gpu_pipeline.sh             # there, carry=[".gpu_carry"]
#
# Writes to $OUT: pipeline.log, pipeline.json (stage seconds, candidates/s, device).
# Not yet run on a GPU: written for the first session that is lent one.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
PY="${PYTHON:-python3}"
CARRY="${CARRY:-.gpu_carry}"
N_POOL="${N_POOL:-4000}"
N_SEEDS="${N_SEEDS:-256}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu N_POOL=40 N_SEEDS=8: a dry run of this script on a CPU
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$CARRY" ] || { echo "gpu_pipeline: no $CARRY; run benchmarks/gpu_prepare.py and carry it" >&2; exit 1; }

"$PY" -c 'import faiss' 2>/dev/null || "$PY" -m pip install -q --no-deps "$CARRY"/wheels/*.whl
if [ "$DEVICE" != cpu ] && ! "$PY" -c 'import gdig_ext, sys; sys.exit(not gdig_ext.cuda_available())' 2>/dev/null; then
  arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  GDIG_CUDA=1 GDIG_CUDA_ARCH="$arch" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace \
    >"$OUT/build2.log" 2>&1 || { tail -n 30 "$OUT/build2.log"; exit 1; }
fi

MODEL=/tmp/smollm2-random
"$PY" - "$CARRY/smollm2-config" "$MODEL" <<'PYEOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
src, dst = sys.argv[1:3]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
model.save_pretrained(dst)
for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
    try:
        shutil.copy(f"{src}/{name}", dst)
    except FileNotFoundError:
        pass
print("built", dst, sum(p.numel() for p in model.parameters()), "parameters (random)")
PYEOF

status=0
echo "== pipeline: gdig run --device $DEVICE, SmolLM2-135M architecture, $N_POOL x $N_SEEDS"
head -n "$N_POOL" "$CARRY/pairs/pool.jsonl" >/tmp/gpu_pool.jsonl
head -n "$N_SEEDS" "$CARRY/pairs/seeds.jsonl" >/tmp/gpu_seeds.jsonl
rm -rf /tmp/gpu_run
start=$(date +%s)
"$PY" -m gdig run --device "$DEVICE" --model "$MODEL" --seeds /tmp/gpu_seeds.jsonl \
  --pool /tmp/gpu_pool.jsonl --out /tmp/gpu_run --budget $((N_POOL / 10)) --tau 0.5 \
  --on-short fill --autocast bf16 --no-progress 2>&1 | tee "$OUT/pipeline.log" || status=1
echo "pipeline wall $(($(date +%s) - start)) s" | tee -a "$OUT/pipeline.log"
"$PY" - /tmp/gpu_run "$OUT/pipeline.json" <<'PYEOF' || status=1
import json, sys, torch
run, out = sys.argv[1:3]
m = json.load(open(f"{run}/manifest.json"))
st = m["stages"]
gpu = torch.cuda.is_available()
res = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
       "stages_s": {k: v.get("seconds") for k, v in st.items()},
       "candidates": st["score"]["candidates"], "seeds": st["score"]["seeds"]}
res["candidates_per_s"] = res["candidates"] / st["score"]["seconds"]
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
PYEOF
echo "gpu_pipeline: done (status $status); results in $OUT"
exit $status
