"""Benchmarks for `make bench`: run as `python -m benchmarks`; results in docs/benchmarks.md."""
