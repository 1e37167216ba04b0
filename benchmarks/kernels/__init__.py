"""Kernel benchmarks: one harness (``harness.py``), one CLI (``run.py``), one CSV, one plot script (``plot.py``)."""
