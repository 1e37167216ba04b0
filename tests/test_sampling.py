"""rapid.loss.sampling: the one definition of the behaviour distribution (truncation, thresholds, the sampler)."""

import math

import pytest
import torch

from rapid.loss import sampling as smp


@pytest.mark.parametrize("top_k, top_p", [(0, 0.8), (5, 1.0), (5, 0.8), (1, 1.0), (0, 0.05), (40, 0.95)])
def test_truncation_matches_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    z = torch.randn(64, 50, generator=torch.Generator().manual_seed(top_k))                       # (B, V)
    expected = z.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = smp.truncate(z, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got[~torch.isinf(got)], z[~torch.isinf(got)])


@pytest.mark.parametrize("top_k, top_p", [(0, 0.8), (7, 1.0), (7, 0.9)])
def test_truncation_matches_vllm(top_k, top_p):
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    z = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    k = torch.full((32,), top_k) if top_k else None
    p = torch.full((32,), top_p) if top_p < 1 else None
    expected = apply_top_k_top_p_pytorch(z.clone(), k, p)
    assert torch.equal(torch.isinf(smp.truncate(z, top_k, top_p)), torch.isinf(expected))


def test_thresholds_are_the_smallest_kept_processed_logit():
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(9, 16, generator=gen), torch.randn(30, 16, generator=gen)        # (N, D), (V, D)
    thr = smp.thresholds(hidden, weight, None, temperature=0.7, top_k=10, top_p=0.9)                # one chunk
    z = smp.processed_logits(hidden, weight, None, 0.7)                                              # (N, V)
    kept = ~torch.isinf(smp.truncate(z, 10, 0.9))
    assert torch.equal(kept, z >= thr[:, None])
    assert kept.sum(1).min() >= 1 and kept.sum(1).max() <= 10
    # row chunks of 4: the same thresholds up to GEMM rounding (oneDNN's AMX path rounds a 4-row matmul differently
    # from a 9-row one, so bit equality across chunkings is not a property of the CPU's matmul)
    chunked = smp.thresholds(hidden, weight, None, temperature=0.7, top_k=10, top_p=0.9,
                             max_chunk_bytes=4 * 30 * 3 * 4)
    torch.testing.assert_close(chunked, thr, rtol=1e-5, atol=1e-5)


def test_sampler_draws_from_the_softmax():
    """Inverse CDF with the counter-based uniforms: empirical frequencies within 4 standard errors of softmax."""
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]])
    n = 40_000
    seeds = smp.row_seeds(7, list(range(n)), 1)
    counts = torch.bincount(smp.sample(z.expand(n, -1), seeds, step=3), minlength=6).double()
    probs = z.softmax(-1)[0].double()
    assert counts[4] == 0                                                       # masked tokens never drawn
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 4 * se + 1e-12).all(), (counts / n, probs)


def test_sampler_is_batch_invariant_and_step_dependent():
    z = torch.randn(12, 40, generator=torch.Generator().manual_seed(3))
    seeds = smp.row_seeds(11, [0, 1, 2], 4)                                     # 3 prompts x 4 samples
    whole = smp.sample(z, seeds, step=5)
    parts = torch.cat([smp.sample(z[i:i + 5], seeds[i:i + 5], step=5) for i in range(0, 12, 5)])
    assert torch.equal(whole, parts)
    assert not torch.equal(smp.uniform_noise(seeds, 5), smp.uniform_noise(seeds, 6))
    assert len(set(seeds.tolist())) == 12                                        # every completion its own stream


def test_block_size_does_not_change_the_draw_and_logprob_is_the_softmax():
    z = torch.randn(6, 1000, generator=torch.Generator().manual_seed(4))
    z[0, :990] = float("-inf")                                                  # mass only in the last block
    seeds = smp.row_seeds(2, [0, 1, 2], 2)
    token, logp = smp.draw(z, seeds, 7, block=1000)
    assert torch.equal(token, smp.draw(z, seeds, 7, block=97)[0])              # 97 does not divide 1000: padded
    assert token[0] >= 990
    torch.testing.assert_close(logp, z.log_softmax(-1).gather(1, token[:, None]).squeeze(1))


def test_a_single_kept_token_is_always_drawn():
    z = torch.full((64, 300), float("-inf"))
    z[torch.arange(64), torch.arange(64) * 4] = 0.0
    token, logp = smp.draw(z, smp.row_seeds(5, list(range(64)), 1), 0, block=32)
    assert torch.equal(token, torch.arange(64) * 4) and logp.abs().max() == 0


def test_noise_is_uniform():
    u = smp.uniform_noise(smp.row_seeds(0, list(range(100)), 1), 0, 1000)       # 100k draws
    assert 0 < u.min() and u.max() < 1
    hist = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (hist - 10_000).abs().max() < 4 * math.sqrt(10_000)
