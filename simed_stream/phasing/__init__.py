"""Phasing: classical iterative phase retrieval (the baseline) and, later, DiffraGAN."""
