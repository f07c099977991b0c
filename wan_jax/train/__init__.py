"""Training: objective, adapters, sharding, checkpoints, previews and the loop that ties them."""
