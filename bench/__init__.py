"""Benchmarks and long-running checks, run by hand (see bench/README.md)."""
