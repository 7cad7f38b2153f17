"""Models: encoders, the DisCoM-KD network, baselines, losses and predictors."""
