"""Cases and providers for ``token_logprobs``: per-token log-prob from given logits, forward and backward."""

from __future__ import annotations

import torch

import rapid_kernels
from benchmarks.kernels.harness import rapid_backend

OP = "token_logprobs"
PROVIDERS = ("rapid", "rapid_triton", "rapid_cuda", "rapid_cpp", "torch_eager", "torch_compile")


def cases(device: str) -> list[dict]:
    if device == "cuda":
        return [dict(shape=dict(N=n, V=151936), dtype="bfloat16") for n in (4096, 16384, 32768)]
    return [dict(shape=dict(N=n, V=v), dtype="float32") for n, v in ((1024, 4096), (4096, 32768), (8192, 16384))]


def shape_str(shape: dict) -> str:
    return "x".join(f"{k}={v}" for k, v in shape.items())


def make_inputs(shape: dict, dtype: torch.dtype, device: str) -> dict:
    n, v = shape["N"], shape["V"]
    return dict(logits=(torch.randn(n, v, device=device) * 3).to(dtype).requires_grad_(),
                targets=torch.randint(0, v, (n,), device=device), grad=torch.randn(n, device=device))


def eager(logits, targets):
    """What training code does today: fp32 log_softmax over the full logits, gather."""
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def provider(name: str, device: str):
    backend = rapid_backend(name)
    if backend is not None:
        return lambda x: rapid_kernels.token_logprobs(x["logits"], x["targets"], backend=backend)
    if name == "torch_eager":
        return lambda x: eager(x["logits"], x["targets"])
    if name == "torch_compile":
        compiled = torch.compile(eager)
        return lambda x: compiled(x["logits"], x["targets"])
    raise ValueError(f"unknown provider {name!r}")


def backward(out: torch.Tensor, inputs: dict) -> None:
    out.backward(inputs["grad"])


def zero_grads(inputs: dict) -> None:
    inputs["logits"].grad = None
