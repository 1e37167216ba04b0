#!/usr/bin/env bash
# Every GPU-side measurement of rapid, re-runnable on ONE Hopper GPU without network (issue 9).
#
#   bash benchmarks/gpu/run_all.sh [OUT_DIR]          # default OUT_DIR: $OUT (device tool) or runs/gpu
#
# Expects the GPU image's stack (torch 2.11 + Triton 3.6 + transformers 5.17, nvcc, pybind11, pytest). vLLM 0.20.0
# and the packages the image lacks come as manylinux cp312 wheels in .whl/ (see benchmarks/gpu/README.md); without
# them the vLLM steps are reported as skipped and everything else still runs. Each step logs to OUT_DIR/<step>.log
# and a failing step does not stop the others; the summary at the end says which failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
declare -A STATUS

step() {  # step NAME COMMAND...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  if "$@" >"$OUT_DIR/$name.log" 2>&1; then STATUS[$name]="ok ($((SECONDS - t0)) s)"
  else STATUS[$name]="FAILED rc=$? ($((SECONDS - t0)) s)"; fi
  tail -n 5 "$OUT_DIR/$name.log"
}

# 0. Environment: versions, the two ceilings every kernel number is compared against.
step env bash -c "nvidia-smi; $PY -c 'import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, torch.cuda.get_device_name())'"
step ceilings $PY benchmarks/gpu/ceilings.py

# 1. vLLM 0.20.0 from wheels (no network on the GPU machine).
if ls .whl/*.whl >/dev/null 2>&1; then
  step vllm_install $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. Build rapid with the CUDA extension against the image's torch.
step build env RAPID_BUILD_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  $PY -m pip install -q --no-deps --no-build-isolation -e .

# 3. GPU test tier: Triton and CUDA kernels vs the float64 reference, memory bounds, opcheck, vLLM sleep/wake.
step test_gpu $PY -m pytest -m gpu -q -p no:cacheprovider tests

# 4. Kernel benchmarks at Qwen2.5-0.5B / 1.5B shapes vs eager, torch.compile (and Liger when installed), each row
#    beside the analytic estimate of the same design (h100_est_ms); the sm_90 compile tier under the image's Triton
#    (register / shared-memory report of every kernel); and the measured auto-dispatch record for this GPU (copy it
#    into rapid_kernels/dispatch_table.json, or pass --ship, to make `auto` use it).
step compile_sm90 $PY -m benchmarks.gpu.compile_sm90
step cost_model $PY -m rapid_kernels.cost_model
step bench_kernels $PY -m benchmarks.kernels.run --device cuda --out "$OUT_DIR/kernels_cuda.csv"
step plot_kernels $PY -m benchmarks.kernels.plot --csv "$OUT_DIR/kernels_cuda.csv" --out "$OUT_DIR/kernels_cuda.png"
step record_dispatch $PY -m benchmarks.kernels.record_dispatch --device cuda --out "$OUT_DIR/dispatch_table.json"

# 5. vLLM sleep / wake / weight sync on a Qwen2.5-0.5B-shaped model (target <= 0.5 s).
step sleep_wake $PY benchmarks/gpu/bench_sleep_wake.py --level 2 --cycles 10

# 6. End to end: RAPID (several H) vs GRPG vs GRPO on a Qwen2.5-0.5B-shaped model with vLLM; profile PNG per run.
step e2e $PY benchmarks/e2e/run_e2e.py --gpu --out "$OUT_DIR/e2e"

echo "=== summary"
for k in "${!STATUS[@]}"; do echo "$k: ${STATUS[$k]}"; done | sort
