"""Cases and providers for ``linear_token_logprobs``: lm_head + per-token log-prob, forward and backward.

``torch_eager`` is what training code does today: materialise the logits, log_softmax, gather.
"""

from __future__ import annotations

import torch

import rapid_kernels
from benchmarks.kernels.harness import rapid_backend

OP = "linear_token_logprobs"
PROVIDERS = ("rapid", "rapid_triton", "rapid_cuda", "rapid_cpp", "torch_eager", "torch_compile", "liger")


def cases(device: str) -> list[dict]:
    if device == "cuda":   # Qwen2.5-0.5B (D = 896) and 1.5B (D = 1536) lm_heads, vocabulary 151 936
        return [dict(shape=dict(N=n, D=d, V=151936), dtype="bfloat16") for d in (896, 1536)
                for n in (4096, 16384, 32768)]
    acceptance = [dict(shape=dict(N=1024, D=d, V=16384), dtype=dt)   # issue 13: D in {256, 896, 1536}, fp32 + bf16
                  for dt in ("float32", "bfloat16") for d in (256, 896, 1536)]
    acceptance.append(dict(shape=dict(N=4096, D=1536, V=16384), dtype="bfloat16"))   # memory when N ≫ D / 4
    return acceptance + [dict(shape=dict(N=n, D=d, V=v), dtype="float32")        # tiny models on CPU
                         for n, d, v in ((1024, 128, 4096), (2048, 256, 16384), (4096, 128, 32768),
                                         (2048, 512, 32768), (4096, 896, 16384), (8192, 256, 8192))]


def shape_str(shape: dict) -> str:
    return "x".join(f"{k}={v}" for k, v in shape.items())


def make_inputs(shape: dict, dtype: torch.dtype, device: str) -> dict:
    n, d, v = shape["N"], shape["D"], shape["V"]
    return dict(hidden=torch.randn(n, d, device=device, dtype=dtype).requires_grad_(),
                weight=(torch.randn(v, d, device=device) / d**0.5).to(dtype).requires_grad_(),
                targets=torch.randint(0, v, (n,), device=device), grad=torch.randn(n, device=device))


def eager(hidden, weight, targets):
    """The naive approach: (N, V) logits in memory, fp32 log_softmax, gather."""
    logits = (hidden @ weight.T).float()                                  # (N, V)
    return torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def provider(name: str, device: str):
    backend = rapid_backend(name)
    if backend is not None:
        return lambda x: rapid_kernels.linear_token_logprobs(x["hidden"], x["weight"], x["targets"], backend=backend)
    if name == "torch_eager":
        return lambda x: eager(x["hidden"], x["weight"], x["targets"])
    if name == "torch_compile":
        compiled = torch.compile(eager)
        return lambda x: compiled(x["hidden"], x["weight"], x["targets"])
    if name == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        # Liger precomputes its gradient in forward for a scalar loss, so it runs as a summed cross-entropy (its
        # native use); a per-token output with a per-token upstream gradient is not what it supports.
        return lambda x: -liger_fused_linear_cross_entropy(x["hidden"], x["weight"], x["targets"], reduction="sum")
    raise ValueError(f"unknown provider {name!r}")


def backward(out: torch.Tensor, inputs: dict) -> None:
    out.backward() if out.dim() == 0 else out.backward(inputs["grad"])


def zero_grads(inputs: dict) -> None:
    for name in ("hidden", "weight"):
        inputs[name].grad = None
