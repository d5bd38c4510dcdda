"""Benchmarks: speed, robustness and reward, written as JSON + markdown + PNG. Run `python -m benchmarks`."""
