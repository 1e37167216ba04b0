"""``dtype="auto"`` on CPU: bfloat16 only where the CPU has native bf16 and a timed GEMM says it pays."""

import logging

import pytest
import torch

from rapid import precision
from rapid.config import RapidConfig
from rapid.training.policy import resolve_dtype


@pytest.fixture
def fresh_decision(monkeypatch):
    monkeypatch.delenv("RAPID_CPU_BF16", raising=False)     # tests/conftest.py pins fp32 for the other tests
    precision.cpu_bf16_decision.cache_clear()
    yield
    precision.cpu_bf16_decision.cache_clear()


def _speeds(fp32: float, bf16: float):
    return lambda dtype, *a, **k: {torch.float32: fp32, torch.bfloat16: bf16}[dtype]


@pytest.mark.parametrize("flags, fp32, bf16, want", [
    (set(), 100.0, 1000.0, torch.float32),                  # no native bf16: never timed, never chosen
    ({"avx512_bf16"}, 100.0, 240.0, torch.bfloat16),        # native and measured 2.4x
    ({"amx_bf16"}, 100.0, 110.0, torch.float32),            # native but only 1.1x: not worth its rounding
])
def test_auto_dtype_on_cpu_follows_flags_and_measurement(fresh_decision, monkeypatch, caplog, flags, fp32, bf16,
                                                         want):
    timed = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags | {"avx2"})
    monkeypatch.setattr(precision, "gemm_gflops", lambda dtype, *a, **k: timed.append(dtype) or _speeds(
        fp32, bf16)(dtype))
    with caplog.at_level(logging.INFO, logger="rapid.precision"):
        got = resolve_dtype(RapidConfig(), torch.device("cpu"))
    assert got == want
    assert bool(timed) == bool(flags)                       # the probe runs only where the flags allow bf16
    lines = [r.getMessage() for r in caplog.records if r.name == "rapid.precision"]
    assert len(lines) == 1 and str(want).removeprefix("torch.") in lines[0]


def test_explicit_dtype_and_cuda_skip_the_probe(fresh_decision, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: pytest.fail("probed"))
    assert resolve_dtype(RapidConfig(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(RapidConfig(), torch.device("cuda")) == torch.bfloat16


def test_this_cpus_decision_matches_its_flags(fresh_decision):
    """On the real CPU: no native bf16 flag means float32 (the probe must not be fooled into emulated bf16)."""
    use_bf16, why = precision.cpu_bf16_decision()
    if not set(precision.NATIVE_BF16_FLAGS) & precision.cpu_flags():
        assert not use_bf16 and "flag" in why
    else:
        assert ("bf16 GEMM" in why) and (use_bf16 == (" < " not in why))


@pytest.mark.parametrize("value, want", [("0", torch.float32), ("1", torch.bfloat16)])
def test_the_environment_overrides_the_decision(fresh_decision, monkeypatch, value, want):
    monkeypatch.setenv("RAPID_CPU_BF16", value)
    monkeypatch.setattr(precision, "cpu_flags", lambda: pytest.fail("probed despite the override"))
    assert resolve_dtype(RapidConfig(), torch.device("cpu")) == want


def test_cpu_flags_reads_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "absent")) == set()
