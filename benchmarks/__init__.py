"""Benchmark suite: `python benchmarks/run.py [--quick] [--json out.json]` (see README.md)."""
