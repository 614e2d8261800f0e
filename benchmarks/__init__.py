"""Benchmark suites: ``python -m benchmarks [suite ...]`` (``make bench`` runs them all)."""
