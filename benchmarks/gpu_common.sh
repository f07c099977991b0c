# What the prepared GPU scripts share (sourced, not run): $OUT for every log and JSON, the card and
# commit recorded first, and `bench NAME GIB TIMEOUT ARGS...`: benchmarks/train_step.py with the
# allocator limited to GIB of the card (XLA_PYTHON_CLIENT_MEM_FRACTION), so a simulated smaller
# card fails for real when the planner's prediction is wrong; its JSON and log go into $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CARD_GIB=${CARD_GIB:-140.4}  # what the allocator can use of the whole card (an H200)
fraction() { python3 -c "print(f'{$1 / $CARD_GIB:.4f}')"; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
git log -1 --format=%h 2>/dev/null | tee -a "$OUT/gpu.txt"
bench() {  # name, allocator GiB, timeout, args...
  local name=$1 gib=$2 limit=$3; shift 3
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(fraction "$gib") timeout "$limit" python3 \
    benchmarks/train_step.py --out "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/log_$name.txt"
}
