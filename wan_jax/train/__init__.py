"""Training, in three rooms:

  step/     the step's mathematics: the objective, timesteps, the optimizer, which expert trains
            when, the mesh and sharding rules, and the memory planner's candidates. Imports
            model/, tasks/ and data/'s geometry; nothing of run/ or outputs/.
  outputs/  what a run writes besides checkpoints: previews, trackers (TensorBoard, W&B,
            metrics.jsonl), loss.png, the LoRA files' metadata. May import step/; not run/.
  run/      the run itself: loading the models, data and caches, the planned and compiled step,
            checkpoints and resume, the loop (`trainer.train`) and its summary. Imports the two
            rooms above and everything below them.
LoRA adapters are model code (wan_jax/model/lora.py); writing weights files is weights/export.py.
"""
