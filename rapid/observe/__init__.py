"""Watching a run: ``profiling`` (phase timings, FLOPs, MFU), ``usage`` (its background GPU/CPU utilisation and memory
sampler), ``profile_report`` (the table, JSON line and timeline of a ``profile.json``), ``loggers`` (metrics.jsonl /
TensorBoard / wandb sinks, completions.jsonl)."""
