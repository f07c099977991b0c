"""Rendering prompts with trained LoRA files outside training (sample.py): which file goes on
which expert (loras.py) and the preview sampler on a run's config (sampler.py)."""
