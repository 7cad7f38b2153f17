"""Training: the Lightning module, checkpoints, evaluation and method comparison."""
