"""Kernel tests share the session setup of ``tests/conftest.py`` (Triton interpreter on CPU, GPU tier skipped)."""
