"""What a run writes besides its checkpoints: previews (and the MP4/PNG files), trackers
(TensorBoard, W&B, metrics.jsonl), loss.png and the metadata of exported LoRA files. May import
wan_jax/train/step (expert names) and the model; never wan_jax/train/run."""
