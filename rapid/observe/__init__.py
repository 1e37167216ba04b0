"""Watching a run: ``profiling`` (phase timings, GPU/CPU utilisation, MFU), ``profile_report`` (the table, JSON line
and timeline of a ``profile.json``), ``loggers`` (metrics.jsonl / TensorBoard sinks, completions.jsonl)."""
