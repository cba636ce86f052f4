"""Quantum Detectors Merlin: the MPX data stream's adapter and a simulator speaking it."""
