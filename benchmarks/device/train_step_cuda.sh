#!/usr/bin/env bash
# The training step on a GPU, one command: bf16 training steps of world-s (32k-token packs) and DiT-XL (16k-token packs)
# through the Trainer with every block compiled as train/parallel.py compiles it (inductor, dynamic=True; the
# compile happens in the warm-up steps), giving tokens/s, MFU, host syncs and recompiles after the first compile,
# written to benchmarks/results/train_step_cuda.json. About 4 minutes on one H100 / H200 (killed at 7:50).
#
#     bash benchmarks/device/train_step_cuda.sh               # on the GPU machine
#     bash benchmarks/device/train_step_cuda.sh --cpu-check   # the same code, tiny and in fp32 on CPU (a script check)
#
# The CPU line of the issue (host share, aten ops, make_pack, fill, recompiles over 50 packs) is
# `python benchmarks/train_step.py` on any machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
if [ "${1:-}" = "--cpu-check" ]; then
    OMP_NUM_THREADS=1 exec timeout 600 "$PY" benchmarks/train_step.py --cpu-check --only-cuda --compile --threads 1 \
        --warmup 1 --steps 1 --out "${2:-/tmp/train_step_cpu_check.json}"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 470 "$PY" benchmarks/train_step.py --device cuda --only-cuda --compile --threads 8 --warmup 10 \
    --steps 8 --xl-steps 6 --out benchmarks/results/train_step_cuda.json
