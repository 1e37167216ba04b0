"""torch.compile(fullgraph=True) traces the trainer's loss path — hidden states → fused kernel → loss and its
diagnostics (rapid.loss.algorithms.loss_from_hidden) — with no graph break, and gives the eager result."""

import pytest
import torch

from rapid.loss.algorithms import PackedBatch, loss_from_hidden

from rapid.testing import small_config


def _batch(n_seqs=8, vocab=50, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (n_seqs,), generator=gen)
    cu = torch.zeros(n_seqs + 1, dtype=torch.long)
    cu[1:] = lengths.cumsum(0)
    n = int(cu[-1])
    batch = PackedBatch(targets=torch.randint(0, vocab, (n,), generator=gen),
                        behavior_logprobs=-torch.rand(n, generator=gen) * 3,
                        rewards=torch.rand(n_seqs, generator=gen), cu_seqlens=cu)
    hidden = torch.randn(n, dim, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=gen, requires_grad=True)
    return batch, hidden, weight


@pytest.mark.parametrize("algo", ["rapid", "grpo"])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_loss_path_compiles_fullgraph_and_matches_eager(algo, backend):
    cfg = small_config(algo=algo, kernel_backend=backend, group_size=4)
    batch, hidden, weight = _batch()

    def loss_fn(h, w):
        res = loss_from_hidden(cfg, batch, h, w)
        return res.loss, res.stats["rapid/w_mean"]

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")   # dynamo + AOT autograd, no codegen
    loss_c, w_c = compiled(hidden, weight)
    (gh_c, gw_c) = torch.autograd.grad(loss_c, (hidden, weight))
    loss_e, w_e = loss_fn(hidden, weight)
    (gh_e, gw_e) = torch.autograd.grad(loss_e, (hidden, weight))
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(w_c, w_e)
    torch.testing.assert_close(gh_c, gh_e)
    torch.testing.assert_close(gw_c, gw_e)
