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
source "$(dirname "$0")/gpu_common.sh"  # $OUT, the card and commit, bench()
# 1. A 24 GB card (23 GiB): does the 5B fit at its native size and at 480p, which plan, what step.
bench d_23gib_auto 23 240 --arch wan22_ti2v_5b --cases d a --plan auto --device-memory-gib 23 --stream-weights auto \
  --steps 2 --warmup 0
# 2. The whole card: the fastest plan at both sizes (MFU against the measured matmul peak).
bench da_h200_auto 135 240 --arch wan22_ti2v_5b --cases d a --plan auto --stream-weights false --steps 3
