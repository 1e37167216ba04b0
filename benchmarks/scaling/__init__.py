"""Data-parallel scaling benchmarks (torchrun world sizes)."""
