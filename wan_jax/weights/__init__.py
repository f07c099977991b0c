"""Reading PyTorch checkpoints, mapping their keys, and converted JAX (Orbax) checkpoints."""
