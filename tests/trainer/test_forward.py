"""The training forward: packed (position ids restart per sequence, no mask) equals padded and separate forwards."""

import torch

from rapid.loss.forward import check_packing, model_parts, packed_hidden, packing_pays, padded_hidden

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
COMPLETIONS = [[20, 21], [22, 23, 24, 25], [26]]


def test_packed_equals_padded_and_separate(tiny):
    model, _ = tiny
    base = model_parts(model).base.eval()
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed = packed_hidden(base, PROMPTS, COMPLETIONS, cpu)                                  # (7, D)
        padded = padded_hidden(base, PROMPTS, COMPLETIONS, cpu)                                  # (7, D)
        separate = torch.cat([packed_hidden(base, [p], [c], cpu) for p, c in zip(PROMPTS, COMPLETIONS)])
    assert packed.shape == (sum(map(len, COMPLETIONS)), model.config.hidden_size)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, separate, atol=1e-5, rtol=1e-5)
    assert check_packing(base, cpu, model.config.vocab_size)


def test_hidden_positions_predict_completion_tokens(tiny):
    """Selected positions are those whose next token is a completion token: compare with full logits."""
    model, _ = tiny
    model.eval()
    seq = PROMPTS[0] + COMPLETIONS[0]
    with torch.no_grad():
        full = model(torch.tensor([seq])).logits[0]                                              # (T, V)
        hidden = packed_hidden(model_parts(model).base, PROMPTS[:1], COMPLETIONS[:1], torch.device("cpu"))
        torch.testing.assert_close(model.lm_head(hidden), full[len(PROMPTS[0]) - 1:-1], atol=1e-5, rtol=1e-5)


def test_packing_pays_only_when_cheaper():
    assert packing_pays([10] * 64, 128, varlen=True)
    assert not packing_pays([10] * 64, 128, varlen=False)          # dense attention over 640² pairs
    assert packing_pays([2000, 10, 10, 10], 896, varlen=False)      # one long sequence: padding wastes more


def test_shared_prompt_forward_equals_packed_with_gradients(tiny):
    """Each distinct prompt computed once, its KV cache repeated per completion: the same hidden states and the
    same parameter gradients as the packed forward (groups of different sizes, prompts of different lengths)."""
    from rapid.loss.forward import check_sharing, shared_prompt_hidden, sharing_pays

    model, _ = tiny
    base = model_parts(model).base.train()
    cpu = torch.device("cpu")
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[10, 11]] * 2 + [[12, 13, 14]]
    comps = [[20, 21], [22, 23, 24, 25], [26], [27, 28, 29], [30], [31, 32]]
    weights = torch.linspace(-1, 1, sum(map(len, comps)))[:, None]                          # (N, 1)
    grads = []
    for fn in (shared_prompt_hidden, packed_hidden):
        model.zero_grad(set_to_none=True)
        hidden = fn(base, prompts, comps, cpu)                                                # (N, D)
        (hidden * weights).sum().backward()
        grads.append((hidden.detach(), {n: p.grad.clone() for n, p in base.named_parameters() if p.grad is not None}))
    (shared, g_shared), (packed, g_packed) = grads
    torch.testing.assert_close(shared, packed, atol=1e-5, rtol=1e-5)
    assert g_shared.keys() == g_packed.keys() and g_shared
    for name, ref in g_packed.items():          # fp32 noise relative to the tensor's scale (summation order differs)
        assert (g_shared[name] - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-8, name
    assert check_sharing(base, cpu, model.config.vocab_size)
    assert sharing_pays([[1] * 40] * 8, [[2] * 20] * 8, 576)            # a chat group: the prompt once, not 8 times
    assert not sharing_pays([[1] * 4, [3] * 4], [[2] * 20] * 2, 576)     # no prompt shared: nothing to gain
