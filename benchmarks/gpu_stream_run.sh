#!/usr/bin/env bash
# Streamed weights and an fp8 base on one lent GPU (issue 22; docs/performance.md, "Owed:
# streamed weights"; docs/training.md, "An fp8 base"):
# one prepared script, the most informative case first, every log teed into $OUT so a run cut
# short still reports. Small cards are simulated twice over: the planner's capacity
# (--device-memory-gib) and the allocator's own limit (XLA_PYTHON_CLIENT_MEM_FRACTION of the
# card), so a wrong prediction fails for real instead of fitting in the spare memory.
#
#   bash benchmarks/gpu_stream_run.sh           # ~11 min on an H200 (141 GB, 140.4 GiB usable)
#
# Needs the wheels in .whl (docs/performance.md) installed on PYTHONPATH first.
source "$(dirname "$0")/gpu_common.sh"  # $OUT, the card and commit, bench()
# 1. A 24 GB card (23 GiB), 480x832x81, both experts, the planner's choice: does it fit, which
#    plan, what step time (the planner should stream; the idle expert waits in host memory).
bench a_23gib_auto 23 240 --cases a --plan auto --device-memory-gib 23 --stream-weights auto \
  --resident-experts 2 --steps 2 --warmup 0
# 1b. The same with an fp8 base (model.quantize=fp8): plan, peak and step time.
bench a_23gib_auto_fp8 23 240 --cases a --plan auto --device-memory-gib 23 --stream-weights auto \
  --quantize fp8 --resident-experts 2 --steps 2 --warmup 0
# 2. The same checkpointing plan resident vs streamed on the whole card: the transfer cost at
#    480p (goal: streamed <= 1.3x resident), then for a 1024x1024 image (transfer-bound).
bench a_resident 135 150 --cases a --plan offload_residual --stream-weights false --steps 2 \
  --warmup 0
bench a_streamed 135 150 --cases a --plan offload_residual --stream-weights true --steps 2 \
  --warmup 0
bench c_resident_streamed 135 120 --cases c --plan full --stream-weights false --steps 3
bench c_streamed 23 120 --cases c --plan auto --device-memory-gib 23 --stream-weights true \
  --steps 3
# 4. The fp8 base's error: one real-size expert (random bf16 weights) at 480x832x81, fp8 vs bf16.
timeout 180 python3 benchmarks/fp8_error.py --expert --out "$OUT/fp8_expert_error.json" 2>&1 \
  | tee "$OUT/log_fp8_expert_error.txt"
