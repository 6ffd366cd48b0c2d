"""Benchmark scripts (run as files) and their smoke test."""
