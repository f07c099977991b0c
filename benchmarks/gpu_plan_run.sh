#!/usr/bin/env bash
# The memory-planner run on one lent GPU (docs/performance.md, "GPU run plan"): one prepared
# script, most informative case first, every log teed into $OUT so a run cut short still reports.
#
#   bash benchmarks/gpu_plan_run.sh bench    # 480p both experts vs PyTorch; 720p both, auto plan
#   bash benchmarks/gpu_plan_run.sh launch   # launch.py at real size, random weights, H100 memory
#
# Needs the wheels in .whl (docs/performance.md) installed on PYTHONPATH first.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
part=${1:-bench}

if [[ $part == bench ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
  git log -1 --format=%h 2>/dev/null | tee -a "$OUT/gpu.txt"
  # Target 1: 480x832x81, both experts resident, attention outputs saved, PyTorch in the same run.
  timeout 330 python3 benchmarks/train_step.py --cases a --torch --plan save_attention \
    --resident-experts 2 --steps 2 --warmup 0 --out "$OUT/a_save_attention.json" 2>&1 \
    | tee "$OUT/log_a.txt"
  # Target 2: 720x1280x81, both experts resident, the planner's choice on this card.
  timeout 300 python3 benchmarks/train_step.py --cases b --plan auto --resident-experts 2 \
    --steps 1 --warmup 0 --out "$OUT/b_auto.json" 2>&1 | tee "$OUT/log_b.txt"
fi

if [[ $part == launch ]]; then
  # Target 3 through the real entry point: random real-size experts, VAE and umT5, generated
  # clips, planned for an H100's memory; 2 steps (one per expert), a checkpoint, LoRA files and
  # a short preview.
  timeout 420 python3 launch.py --config configs/wan22_masked.py --workdir /tmp/run \
    --noprogress --config.model.random_weights=True --config.train.device_memory_gib=79 \
    --config.train.steps=2 --config.train.switch_boundary_every=1 \
    "--config.datasets[0].resolution=[632]" "--config.datasets[0].num_frames=81" \
    --config.checkpoint.every=2 --config.save.every=0 --config.preview.every=2 \
    --config.preview.num_steps=2 --config.preview.height=240 --config.preview.width=416 \
    --config.preview.num_frames=5 --config.cache.dir=/tmp/cache 2>&1 | tee "$OUT/log_launch.txt"
  ls -la /tmp/run /tmp/run/lora /tmp/run/previews 2>&1 | tee -a "$OUT/log_launch.txt"
  cp /tmp/run/metrics.jsonl "$OUT/" 2>/dev/null
fi
