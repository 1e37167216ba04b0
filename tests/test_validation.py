"""Every bad input listed in DESIGN.md section 2 raises ValueError naming the argument, on every CPU backend."""

import pytest
import torch

import rapid_kernels

BACKENDS = rapid_kernels.available_backends("cpu")


def _loss_args(**over):
    args = dict(token_logprobs=torch.randn(6), behavior_logprobs=torch.randn(6), rewards=torch.ones(2),
                cu_seqlens=torch.tensor([0, 3, 6]), group_size=2)
    args.update(over)
    return args


LOSS_CASES = [
    ("token_logprobs", dict(token_logprobs=torch.randn(6, 1))),                    # rank
    ("token_logprobs", dict(token_logprobs=torch.randn(6).half())),                # dtype: log-probs are fp32
    ("behavior_logprobs", dict(behavior_logprobs=torch.randn(5))),                 # length
    ("behavior_logprobs", dict(behavior_logprobs=torch.tensor([0.0, 1, 2, float("nan"), 4, 5]))),
    ("behavior_logprobs", dict(behavior_logprobs=torch.randn(6, device="meta"))),  # device mismatch
    ("rewards", dict(rewards=torch.tensor([1.0, float("inf")]))),                  # non-finite
    ("rewards", dict(rewards=torch.tensor([1.0, float("nan")]))),
    ("rewards", dict(rewards=torch.ones(0), cu_seqlens=torch.tensor([0]))),        # empty
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 4, 3]))),                      # not increasing / not ending at N
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 5, 4, 6]), rewards=torch.ones(3), group_size=3)),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([1, 3, 6]))),                      # not starting at 0
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 3, 6]).float())),              # dtype
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 6]))),                         # S + 1 entries
    ("divisible", dict(rewards=torch.ones(3), cu_seqlens=torch.tensor([0, 2, 4, 6]), group_size=2)),
    ("group_size", dict(group_size=1)),                                            # K < 2 with LOO
    ("group_size", dict(group_size=0, baseline="mean")),
    ("eta", dict(eta=0.0)),
    ("eta", dict(eta=-1.0)),
    ("eta", dict(eta=float("inf"))),
    ("loss_norm", dict(loss_norm=0.0)),
    ("baseline", dict(baseline="median")),
    ("is_level", dict(is_level="tokens")),
    ("is_clip", dict(is_clip="clamp")),
    ("adv_scale", dict(adv_scale="zscore")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,over", LOSS_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LOSS_CASES)])
def test_rapid_loss_bad_input(backend, name, over):
    with pytest.raises(ValueError, match=name):
        rapid_kernels.rapid_loss(**_loss_args(**over), backend=backend)


TOKEN_CASES = [
    ("logits", dict(logits=torch.randn(4))),
    ("logits", dict(logits=torch.randint(0, 3, (4, 5)))),
    ("targets", dict(targets=torch.tensor([0, 1, 5, 2]))),                          # >= V
    ("targets", dict(targets=torch.tensor([0, -1, 1, 2]))),                         # < 0
    ("targets", dict(targets=torch.tensor([0, 1, 2]))),                             # length
    ("targets", dict(targets=torch.tensor([0.0, 1, 2, 3]))),                        # dtype
    ("targets", dict(targets=torch.tensor([0, 1, 2, 3], device="meta"))),           # device mismatch
    ("temperature", dict(temperature=0.0)),
    ("temperature", dict(temperature=float("nan"))),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,over", TOKEN_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TOKEN_CASES)])
def test_token_logprobs_bad_input(backend, name, over):
    args = dict(logits=torch.randn(4, 5), targets=torch.tensor([0, 1, 2, 3]), temperature=1.0)
    args.update(over)
    with pytest.raises(ValueError, match=name):
        rapid_kernels.token_logprobs(**args, backend=backend)


LINEAR_CASES = [
    ("hidden", dict(hidden=torch.randn(4, 3, 2))),
    ("weight", dict(weight=torch.randn(7, 4))),                                     # D mismatch
    ("weight", dict(weight=torch.randn(7, 3).double())),                            # dtype mismatch
    ("bias", dict(bias=torch.randn(6))),
    ("targets", dict(targets=torch.tensor([0, 1, 7, 2]))),
    ("weight", dict(weight=torch.randn(7, 3, device="meta"))),
    ("temperature", dict(temperature=-2.0)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,over", LINEAR_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LINEAR_CASES)])
def test_linear_and_fused_bad_input(backend, name, over):
    args = dict(hidden=torch.randn(4, 3), weight=torch.randn(7, 3), targets=torch.tensor([0, 1, 6, 2]),
                temperature=1.0, bias=None)
    args.update(over)
    with pytest.raises(ValueError, match=name):
        rapid_kernels.linear_token_logprobs(**args, backend=backend)
    loss = dict(behavior_logprobs=torch.zeros(4), rewards=torch.ones(2), cu_seqlens=torch.tensor([0, 2, 4]),
                group_size=2)
    with pytest.raises(ValueError, match=name):
        rapid_kernels.fused_rapid_loss(**args, **loss, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_checks_sequence_arguments_against_hidden(backend):
    args = dict(hidden=torch.randn(4, 3), weight=torch.randn(7, 3), targets=torch.tensor([0, 1, 6, 2]),
                rewards=torch.ones(2), cu_seqlens=torch.tensor([0, 2, 4]), group_size=2)
    with pytest.raises(ValueError, match="behavior_logprobs"):
        rapid_kernels.fused_rapid_loss(behavior_logprobs=torch.zeros(5), **args, backend=backend)
    args["cu_seqlens"] = torch.tensor([0, 2, 3])
    with pytest.raises(ValueError, match="cu_seqlens"):
        rapid_kernels.fused_rapid_loss(behavior_logprobs=torch.zeros(4), **args, backend=backend)


PROCESSING_CASES = [
    ("softcap", dict(softcap=0.0)),
    ("softcap", dict(softcap=-1.0)),
    ("softcap", dict(softcap=float("inf"))),
    ("softcap", dict(softcap="3")),
    ("threshold", dict(threshold=torch.zeros(3))),                                   # length
    ("threshold", dict(threshold=torch.zeros(4, dtype=torch.float64))),              # dtype
    ("threshold", dict(threshold=torch.zeros(4, 1))),                                # rank
    ("threshold", dict(threshold=torch.tensor([0.0, float("nan"), 0.0, 0.0]))),      # NaN
    ("threshold", dict(threshold=torch.zeros(4, device="meta"))),                    # device
    ("return_entropy", dict(return_entropy=1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,over", PROCESSING_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(PROCESSING_CASES)])
def test_processing_bad_input(backend, name, over):
    """softcap / threshold / return_entropy are checked by all three log-prob ops, before any kernel runs."""
    logits, targets = torch.randn(4, 7), torch.tensor([0, 1, 6, 2])
    with pytest.raises(ValueError, match=name):
        rapid_kernels.token_logprobs(logits, targets, **over, backend=backend)
    lin = dict(hidden=torch.randn(4, 3), weight=torch.randn(7, 3), targets=targets)
    with pytest.raises(ValueError, match=name):
        rapid_kernels.linear_token_logprobs(**lin, **over, backend=backend)
    loss = dict(behavior_logprobs=torch.zeros(4), rewards=torch.ones(2), cu_seqlens=torch.tensor([0, 2, 4]),
                group_size=2)
    with pytest.raises(ValueError, match=name):
        rapid_kernels.fused_rapid_loss(**lin, **loss, **over, backend=backend)


def test_infinite_thresholds_are_valid():
    out = rapid_kernels.token_logprobs(torch.randn(2, 5), torch.tensor([0, 4]),
                                       threshold=torch.tensor([float("-inf"), float("inf")]), backend="torch")
    assert torch.isfinite(out).all() and out[1] == 0


class _SyncCounter:
    """Counts the Tensor → Python conversions that force a device sync (item, tolist, bool, int, float)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return counted


def test_validation_syncs_at_most_once_per_call(monkeypatch):
    """All data checks of a call (targets range, cu_seqlens, finite rewards / behaviour log-probs, NaN-free
    threshold) reach the host in ONE transfer: on CUDA each sync is a pipeline bubble."""
    from rapid_kernels import _validate

    n = 6
    args = dict(hidden=torch.randn(n, 3), weight=torch.randn(7, 3), targets=torch.tensor([0, 1, 6, 2, 3, 4]),
                behavior_logprobs=torch.zeros(n), rewards=torch.ones(2), cu_seqlens=torch.tensor([0, 2, n]),
                group_size=2, eta=2.0, baseline="loo", loss_norm=1.0, is_level="sequence", is_clip="truncate",
                adv_scale="none", temperature=1.0, bias=None, softcap=None, threshold=torch.zeros(n),
                return_entropy=False)
    counter = _SyncCounter(monkeypatch)
    _validate.check_fused_rapid_loss(**args)
    assert counter.calls == ["tolist"]
    counter.calls.clear()
    _validate.check_rapid_loss(torch.zeros(n), torch.zeros(n), torch.ones(2), torch.tensor([0, 2, n]), 2, 2.0, "loo",
                               1.0, "sequence", "truncate", "none")
    assert counter.calls == ["tolist"]
    counter.calls.clear()
    bad = dict(args, rewards=torch.ones(3), cu_seqlens=torch.tensor([0, 4, 2, n]), group_size=3, baseline="mean")
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):   # still the precise message
        _validate.check_fused_rapid_loss(**bad)
    assert counter.calls == ["tolist"]
