"""One tolerance table for the kernel tests, keyed by (op, input dtype), and the comparison every test uses.

A result passes when it is finite wherever the float64 reference is finite (NaN or inf never pass) and
max |actual − expected| ≤ atol + rtol · max |expected| (a norm-wise bound: low-precision errors scale with the
largest entry, not each entry's own size). The 16-bit entries sit at about twice PyTorch's own error for the same
computation (its logits / d logits rounded to the input dtype, as ours are), the flash-attention rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tol(NamedTuple):
    atol: float
    rtol: float


# (op, dtype) -> {"out": ..., "grad": ...}
TOLERANCES: dict[tuple[str, torch.dtype], dict[str, Tol]] = {
    ("token_logprobs", torch.float32): {"out": Tol(2e-5, 1e-6), "grad": Tol(1e-6, 1e-5)},
    ("token_logprobs", torch.float16): {"out": Tol(2e-5, 1e-6), "grad": Tol(1e-6, 1e-3)},
    ("token_logprobs", torch.bfloat16): {"out": Tol(2e-5, 1e-6), "grad": Tol(1e-6, 8e-3)},
    ("linear_token_logprobs", torch.float32): {"out": Tol(5e-5, 1e-6), "grad": Tol(1e-5, 1e-5)},
    ("linear_token_logprobs", torch.float16): {"out": Tol(5e-5, 1e-6), "grad": Tol(1e-5, 2e-3)},
    ("linear_token_logprobs", torch.bfloat16): {"out": Tol(5e-4, 1e-5), "grad": Tol(1e-5, 1.5e-2)},
    ("rapid_loss", torch.float32): {"out": Tol(1e-5, 1e-5), "grad": Tol(1e-7, 1e-5)},
    ("fused_rapid_loss", torch.float32): {"out": Tol(5e-5, 1e-5), "grad": Tol(1e-5, 1e-5)},
    ("fused_rapid_loss", torch.float16): {"out": Tol(5e-5, 1e-5), "grad": Tol(1e-5, 2e-3)},
    ("fused_rapid_loss", torch.bfloat16): {"out": Tol(5e-4, 1e-4), "grad": Tol(1e-5, 1.5e-2)},
}

# The entropy (a detached diagnostic, lse − E[z]) loses a few fp32 ulps of |z| to cancellation: its own bound.
for _entry in TOLERANCES.values():
    _entry["entropy"] = Tol(1e-4, 1e-5)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, op: str, dtype: torch.dtype, kind: str = "out",
                 name: str = "") -> None:
    """Compare with the float64 reference under TOLERANCES[(op, dtype)][kind]."""
    tol = TOLERANCES[(op, dtype)][kind]
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    finite = torch.isfinite(e)
    assert torch.isfinite(a[finite]).all(), f"{name}: non-finite values where the reference is finite"
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{name}: NaN pattern differs from the reference"
    if not finite.any():
        return
    err = (a[finite] - e[finite]).abs().max().item()
    bound = tol.atol + tol.rtol * e[finite].abs().max().item()
    assert err <= bound, f"{name} ({op}, {dtype}, {kind}): max abs error {err:.3g} > {bound:.3g}"
