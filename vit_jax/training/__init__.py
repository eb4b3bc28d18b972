"""Training library behind train.py: config, optimiser, state, steps, parallelism, checkpoints, metrics."""
