"""rapid_kernels: fused log-prob and RAPID-loss ops with interchangeable backends.

Public ops (DESIGN.md section 2), each taking ``backend="auto" | "triton" | "cuda" | "cpp" | "torch"``:

- ``token_logprobs(logits, targets, temperature=1.0, *, softcap=None, threshold=None, return_entropy=False)``
- ``linear_token_logprobs(hidden, weight, targets, temperature=1.0, bias=None, *, softcap=None, threshold=None,
  return_entropy=False)``  -> (N,) float32, or (log-probs, entropy) with return_entropy
- ``rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, ...)`` -> RapidLossOutput
- ``fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, ...,
  temperature=1.0, bias=None, *, softcap=None, threshold=None, return_entropy=False)`` -> RapidLossOutput

``auto`` picks, per device, the backend a recorded measurement found fastest for the op (``_dispatch``: a JSON
table shipped in the package or written by ``python -m benchmarks.kernels.record_dispatch``), falling back to a
fixed order (CUDA: Triton, then the CUDA extension; CPU: the C++ extension, else the eager reference) when no
record exists. float64 inputs always use the reference. Importing this package never touches a GPU and never
compiles anything.
"""

from __future__ import annotations

from . import _validate, reference
from ._dispatch import available_backends, resolve_backend
from .reference import RapidLossOutput

__all__ = [
    "RapidLossOutput",
    "available_backends",
    "fused_rapid_loss",
    "linear_token_logprobs",
    "rapid_loss",
    "reference",
    "resolve_backend",
    "token_logprobs",
]


def token_logprobs(logits, targets, temperature: float = 1.0, *, softcap: float | None = None, threshold=None,
                   return_entropy: bool = False, backend: str = "auto"):
    """Per-token log-prob of ``targets`` under the processed distribution. Returns (N,) float32, or
    ``(logprobs, entropy)`` (both (N,) float32, entropy detached) with ``return_entropy=True``.

    Processed logit z = softcap · tanh(logit / softcap) / temperature (no soft-cap when ``softcap`` is None); with
    ``threshold`` (float32 (N,)) row n is the softmax over {v : z_v ≥ threshold[n]} ∪ {targets[n]} (top-k / top-p),
    so log π = z_target − logsumexp over that set; −inf means no truncation.
    """
    _validate.check_backend(backend)
    cap = _validate.check_token_logprobs(logits, targets, temperature, softcap, threshold, return_entropy)
    impl = resolve_backend(backend, "token_logprobs", logits)
    lp, entropy = impl(logits, targets, float(temperature), cap, threshold, return_entropy)
    return (lp, entropy) if return_entropy else lp


def linear_token_logprobs(hidden, weight, targets, temperature: float = 1.0, bias=None, *,
                          softcap: float | None = None, threshold=None, return_entropy: bool = False,
                          backend: str = "auto"):
    """log softmax of process(hidden @ weightᵀ + bias)[targets] without materialising the (N, V) logits.

    Same processing (soft-cap, temperature, threshold) and return convention as ``token_logprobs``.
    """
    _validate.check_backend(backend)
    cap = _validate.check_linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold,
                                                return_entropy)
    impl = resolve_backend(backend, "linear_token_logprobs", hidden)
    lp, entropy = impl(hidden, weight, targets, float(temperature), bias, cap, threshold, return_entropy)
    return (lp, entropy) if return_entropy else lp


def rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size: int, eta: float = 2.0,
               baseline: str = "loo", loss_norm: float = 1.0, is_level: str = "sequence",
               is_clip: str = "truncate", adv_scale: str = "none", *, backend: str = "auto") -> RapidLossOutput:
    """Sequence importance ratio, η clip, importance-weighted group baseline and policy-gradient loss.

    See ``reference.rapid_loss`` for the exact estimator; every backend matches it.
    """
    _validate.check_backend(backend)
    _validate.check_rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                               loss_norm, is_level, is_clip, adv_scale)
    impl = resolve_backend(backend, "rapid_loss", token_logprobs, is_level=is_level)
    return impl(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, float(eta), baseline,
                float(loss_norm), is_level, is_clip, adv_scale)


def fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size: int,
                     eta: float = 2.0, baseline: str = "loo", loss_norm: float = 1.0, is_level: str = "sequence",
                     is_clip: str = "truncate", adv_scale: str = "none", temperature: float = 1.0, bias=None, *,
                     softcap: float | None = None, threshold=None, return_entropy: bool = False,
                     backend: str = "auto") -> RapidLossOutput:
    """lm_head + token log-probs + RAPID loss in one op: hidden states in, loss out, no (N, V) tensor.

    ``softcap`` / ``threshold`` as in ``token_logprobs``; ``return_entropy=True`` fills ``RapidLossOutput.entropy``
    ((N,) float32, detached) from the same pass.
    """
    _validate.check_backend(backend)
    cap = _validate.check_fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens,
                                           group_size, eta, baseline, loss_norm, is_level, is_clip, adv_scale,
                                           temperature, bias, softcap, threshold, return_entropy)
    impl = resolve_backend(backend, "fused_rapid_loss", hidden, is_level=is_level)
    return impl(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, float(eta), baseline,
                float(loss_norm), is_level, is_clip, adv_scale, float(temperature), bias, cap, threshold,
                return_entropy)
