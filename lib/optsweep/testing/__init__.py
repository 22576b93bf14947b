"""Synthetic run tables from known truths, shared by the tests and the benchmarks."""
