"""The training forward: packed (position ids restart per sequence, no mask) equals padded and separate forwards."""

import torch

from rapid.forward import check_packing, model_parts, packed_hidden, packing_pays, padded_hidden

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
