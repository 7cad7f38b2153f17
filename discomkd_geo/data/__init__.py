"""Data layer: datasets, samplers, normalisation, augmentations and synthetic data."""
