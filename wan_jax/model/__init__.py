"""Model definitions (Flax NNX); nothing here imports data/ or train/."""
