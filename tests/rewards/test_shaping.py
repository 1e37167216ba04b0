"""pass@k against its closed form, DAPO's overlong penalty, and the regex format reward."""

import math
import pickle
from fractions import Fraction

import pytest

from rapid.rewards import OverlongPenalty, combine, format_reward, math_reward, overlong_penalty, pass_at_k


def closed_form(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k), exactly (math.comb is 0 when k > n - c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16, 37, 200])
def test_pass_at_k_matches_the_closed_form(n):
    step = max(1, n // 25)  # every count for small n, a grid for n = 200 (the exact binomials are slow)
    for c in [*range(0, n + 1, step), n]:
        for k in [*range(1, n + 1, step), n]:
            assert pass_at_k(n, c, k) == pytest.approx(float(closed_form(n, c, k)), abs=1e-12, rel=1e-12)


def test_pass_at_k_known_counts_and_large_n():
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)          # pass@1 is the fraction correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)           # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(10, 0, 10) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(5, 3, 3) == 1.0
    # C(2000, 1000) overflows a float; the product form does not
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(100000, 1, 1) == pytest.approx(1e-5, rel=1e-9)


def test_pass_at_k_bad_counts_name_the_argument():
    for args, name in (((0, 0, 1), "n"), ((5, 6, 1), "c"), ((5, -1, 1), "c"), ((5, 1, 0), "k"), ((5, 1, 6), "k"),
                       ((5.0, 1, 1), "n"), ((5, True, 1), "c")):
        with pytest.raises(ValueError, match=rf"^{name}"):
            pass_at_k(*args)


def test_overlong_penalty_is_dapos_piecewise_ramp():
    # L_max = 20, L_cache = 5: free up to 15, then -1/5 per token, -1 at 20 and beyond
    assert overlong_penalty([0, 15, 16, 18, 20, 21, 100], 20, 5) == pytest.approx([0, 0, -0.2, -0.6, -1, -1, -1])
    assert overlong_penalty([16, 25], 20, 5, factor=0.5) == pytest.approx([-0.1, -0.5])
    assert overlong_penalty([20, 21], 20, 0) == [0.0, -1.0]   # no buffer: a hard limit
    for kwargs, name in (({"max_length": 0, "cache_length": 0}, "max_length"),
                         ({"max_length": 10, "cache_length": 11}, "cache_length"),
                         ({"max_length": 10, "cache_length": 2, "factor": -1.0}, "factor")):
        with pytest.raises(ValueError, match=name):
            overlong_penalty([1], **kwargs)


class WordTokenizer:
    def __call__(self, texts, add_special_tokens):
        assert add_special_tokens is False
        return {"input_ids": [t.split() for t in texts]}


def test_overlong_penalty_reward_function_counts_tokens_or_characters():
    by_tokens = OverlongPenalty(max_length=4, cache_length=2, tokenizer=WordTokenizer())
    assert by_tokens(["p"] * 3, ["a b", "a b c", "a b c d e"]) == pytest.approx([0.0, -0.5, -1.0])
    by_chars = OverlongPenalty(max_length=4, cache_length=2)
    assert by_chars(["p"] * 2, ["ab", "abcd"]) == pytest.approx([0.0, -1.0])
    with pytest.raises(ValueError, match="cache_length"):
        OverlongPenalty(max_length=4, cache_length=5)


def test_format_reward_full_match_search_and_pickling():
    fmt = format_reward(r"<think>.*</think>\s*<answer>.*</answer>")
    completions = ["<think>a\nb</think>\n<answer>4</answer>", "<answer>4</answer>",
                   "x <think></think><answer>1</answer>"]
    assert fmt(["p"] * 3, completions) == [1.0, 0.0, 0.0]
    anywhere = format_reward(r"\\boxed\{.+\}", search=True, value=0.5)
    assert anywhere(["p"] * 2, ["so \\boxed{3}.", "3"]) == [0.5, 0.0]
    assert pickle.loads(pickle.dumps(fmt))(["p"], completions[:1]) == [1.0]   # can run in reward workers
    mixed = combine([(math_reward, 1.0), (anywhere, 1.0)])
    assert mixed(["p", "p"], ["\\boxed{4}", "4"], answer=["4", "5"]) == [1.5, 0.0]
    with pytest.raises(ValueError, match="regular expression"):
        format_reward("(")
    with pytest.raises(ValueError, match="pattern"):
        format_reward("")
