#!/usr/bin/env bash
# Wan 2.2 TI2V-5B on one lent GPU (issue 24; docs/training.md, "Text-and-image-to-video"):
# the LoRA step at 704x1280x121 (its native size) and 480x832x81 on the whole card (MFU, peak,
# plan), then the same planned for a 24 GB card (23 GiB) with the allocator limited to match, so
# a wrong prediction fails for real. Half the rows train image-to-video (ti2v.i2v_prob 0.5: the
# first latent frame clean at t = 0, one timestep per latent frame). Every log is teed into $OUT.
#
#   bash benchmarks/gpu_5b_run.sh           # ~8 min on an H200 (141 GB, 140.4 GiB usable)
#
# Needs the wheels in .whl (docs/performance.md) installed on PYTHONPATH first.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CARD_GIB=${CARD_GIB:-140.4}  # what the allocator can use of the whole card
fraction() { python3 -c "print(f'{$1 / $CARD_GIB:.4f}')"; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
git log -1 --format=%h 2>/dev/null | tee -a "$OUT/gpu.txt"
bench() {  # name, allocator GiB, timeout, args...
  local name=$1 gib=$2 limit=$3; shift 3
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(fraction "$gib") timeout "$limit" python3 \
    benchmarks/train_step.py --arch wan22_ti2v_5b --out "$OUT/$name.json" "$@" 2>&1 \
    | tee "$OUT/log_$name.txt"
}
# 1. A 24 GB card (23 GiB): does the 5B fit at its native size and at 480p, which plan, what step.
bench d_23gib_auto 23 240 --cases d a --plan auto --device-memory-gib 23 --stream-weights auto \
  --steps 2 --warmup 0
# 2. The whole card: the fastest plan at both sizes (MFU against the measured matmul peak).
bench da_h200_auto 135 240 --cases d a --plan auto --stream-weights false --steps 3
