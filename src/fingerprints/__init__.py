"""Fingerprints: which series go to which model, and where the predictions go."""
