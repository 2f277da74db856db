"""Benchmarks of rebar-np's training step (run with `python -m benchmarks`)."""
