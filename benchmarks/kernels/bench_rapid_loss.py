"""Cases and providers for ``rapid_loss``: the sequence/group epilogue on packed tokens (one launch vs many)."""

from __future__ import annotations

import torch

import rapid_kernels
from benchmarks.kernels.harness import rapid_backend
from rapid_kernels import reference

OP = "rapid_loss"
PROVIDERS = ("rapid", "rapid_triton", "rapid_cuda", "rapid_cpp", "torch_eager", "torch_compile")
GROUP_SIZE = 8


def cases(device: str) -> list[dict]:
    sizes = ((16384, 64), (32768, 128), (262144, 1024)) if device == "cuda" else ((4096, 32), (16384, 64))
    return [dict(shape=dict(N=n, S=s, K=GROUP_SIZE), dtype="float32") for n, s in sizes]


def shape_str(shape: dict) -> str:
    return "x".join(f"{k}={v}" for k, v in shape.items())


def make_inputs(shape: dict, dtype: torch.dtype, device: str) -> dict:
    n, s = shape["N"], shape["S"]
    cuts = torch.sort(torch.randperm(n - 1)[: s - 1] + 1).values               # S − 1 distinct inner boundaries
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).to(device)
    lp = (torch.randn(n, device=device) * 0.3 - 1).requires_grad_()
    return dict(lp=lp, blp=lp.detach() + torch.randn(n, device=device) * 0.01, rewards=torch.randn(s, device=device),
                cu=cu, k=shape["K"])


def provider(name: str, device: str):
    backend = rapid_backend(name)
    if backend is not None:
        return lambda x: rapid_kernels.rapid_loss(x["lp"], x["blp"], x["rewards"], x["cu"], x["k"], backend=backend)
    if name == "torch_eager":
        return lambda x: reference.rapid_loss(x["lp"], x["blp"], x["rewards"], x["cu"], x["k"])
    if name == "torch_compile":
        compiled = torch.compile(reference.rapid_loss)
        return lambda x: compiled(x["lp"], x["blp"], x["rewards"], x["cu"], x["k"])
    raise ValueError(f"unknown provider {name!r}")


def backward(out, inputs: dict) -> None:
    out.loss.backward()


def zero_grads(inputs: dict) -> None:
    inputs["lp"].grad = None
