"""Answer extraction and equivalence tables for the math reward (math_verify decides; GSM8K integers by hand)."""

import pytest

from rapid.rewards import answers_equal, extract_answer, gold_answer, math_answer_reward, math_reward
from rapid.rewards.math_answer import extract_boxed, normalize_answer, to_number

EXTRACT = [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),                 # nested braces
    ("first \\boxed{1} then \\boxed{2}", "2"),                                 # the last box wins
    ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),       # escaped braces balance
    ("\\fbox{7}", "7"),
    ("hence $\\boxed 5$", "5"),
    ("unclosed \\boxed{12 and later 13", None),                                # a stated box: no number guessing
    ("The answer is 12, or maybe 13.", "12, or maybe 13"),                     # graded on what it stated
    ("She has 5 apples.\n#### 72", "72"),
    ("#### 1,234", "1,234"),
    ("Step 1 #### 3\nStep 2 #### 4", "4"),
    ("The answer is 17.", "17"),
    ("Final answer: 3.5.", "3.5"),
    ("I have 3 apples and 4 pears, 7 in total", "7"),
    ("the temperature is -5 degrees", "-5"),
    ("costs $1,250.50 in total", "1,250.50"),
    ("half is 1/2", "1/2"),
    ("no digits here", None),
    ("", None),
    ("\\boxed{} nothing", ""),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


EQUAL = [
    ("0.5", "\\frac{1}{2}"), ("\\dfrac{3}{4}", "3/4"), ("\\tfrac{3}{4}", "0.75"), ("\\frac34", "0.75"),
    ("-\\frac{3}{4}", "-0.75"), ("\\frac{-3}{4}", "-0.75"), ("7.5", "15/2"), ("3.0", "3"), ("3.00", "3"),
    ("0.50", "\\frac{1}{2}"), ("1,000", "1000"), ("1,000,000", "1000000"), ("1{,}000", "1000"), ("\\$18", "18"),
    ("$18$", "18"), ("18 dollars", "18"), ("\\text{18 dollars}", "18"), ("5 cm", "5"), ("50\\%", "50"),
    ("50%", "50"), ("10^\\circ", "10"), ("10^{\\circ}", "10"), ("x = 5", "5"), ("y=-2", "-2"), ("\\sqrt3", "\\sqrt{3}"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("(B)", "B"), ("\\text{(C)}", "C"), (".5", "0.5"), ("17.", "17"),
    ("1250.50", "1,250.5"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("\\[ 4 \\]", "4"),
]

NOT_EQUAL = [
    ("12", "13"), ("1/3", "0.333"), ("2,3", "23"), ("0.5", "5"), ("-1", "1"), ("\\frac{1}{3}", "\\frac{1}{2}"),
    ("100", "1000"), ("", "0"), ("x", "y"), ("1e3", "1000"), (None, "3"), ("3", None),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal(a, b):
    assert answers_equal(a, b, use_math_verify=False)
    assert answers_equal(b, a, use_math_verify=False)
    assert answers_equal(a, b)  # with math_verify when installed: it can only add matches


@pytest.mark.parametrize("a,b", NOT_EQUAL)
def test_not_equal(a, b):
    assert not answers_equal(a, b, use_math_verify=False)


def test_math_verify_decides_symbolic_equivalence():
    assert answers_equal("2\\sqrt{2}", "\\sqrt{8}")
    assert not answers_equal("2\\sqrt{2}", "\\sqrt{8}", use_math_verify=False)


# (what the completion states, the reference, equivalent?) — graded by math_answer_reward in one batch.
TABLE = [
    ("x²+2x+1", "(x+1)²", True), ("2√2", "√8", True), ("π/2", "\\frac{π}{2}", True), ("3, 5", "5, 3", True),
    ("−5", "-5", True), ("x^2+2x+1", "(x+1)^2", True), ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True), ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True), ("2^{10}", "1024", True), ("\\dfrac{1}{2}", "0.5", True),
    ("7/2", "3.5", True), ("1/2", "50\\%", True), ("\\text{B}", "(B)", True), ("x = 5", "5", True),
    ("(1, 2)", "\\left( 1, 2 \\right)", True), ("[0, 1)", "[0,1)", True), ("18 dollars", "18", True),
    ("\\$1,000", "1000", True), ("72.0", "72", True), ("-\\frac{3}{4}", "-0.75", True), ("0.5", "\\frac{1}{2}", True),
    ("\\sqrt{12}", "2\\sqrt{3}", True), ("3×4", "12", True), ("10^\\circ", "10", True), ("a+b", "b+a", True),
    ("\\frac{7}{2}", "3.5", True),
    ("x^2+1", "(x+1)^2", False), ("2\\sqrt{3}", "\\sqrt{8}", False), ("\\pi", "3.14", False),
    ("1/3", "0.333", False), ("(1,2)", "[1,2]", False), ("[0,1)", "[0,1]", False), ("3, 5", "3, 5, 7", False),
    ("-5", "5", False), ("B", "C", False), ("2,3", "23", False), ("1e3", "1000", False), ("12", "13", False),
    ("\\frac{1}{3}", "\\frac{1}{2}", False), ("x", "y", False), ("7", "\\frac{7}{2}", False),
    ("x+1", "x-1", False),
]


def test_equivalence_table_through_math_verify():
    assert len(TABLE) >= 40
    completions = [f"Working... so the result is $\\boxed{{{pred}}}$." for pred, _, _ in TABLE]
    completions += ["The answer is 12, or maybe 13.", "I am not sure \\boxed{12 and 13", "no answer given"]
    golds = [gold for _, gold, _ in TABLE] + ["13", "13", "4"]
    expected = [float(ok) for _, _, ok in TABLE] + [0.0, 0.0, 0.0]
    got = math_answer_reward(completions, golds)
    wrong = [(c, g, e) for c, g, e, x in zip(completions, golds, expected, got) if e != x]
    assert wrong == []


def test_math_verify_off_the_main_thread_is_time_limited(monkeypatch):
    import threading
    import time

    from rapid.rewards import math_answer

    monkeypatch.setattr(math_answer, "MATH_VERIFY_TIMEOUT_S", 1)
    out = []
    worker = threading.Thread(target=lambda: out.append(math_answer_reward(
        ["\\boxed{2\\sqrt{2}}", "\\boxed{10^{10^{10^{10}}}}", "\\boxed{\\sqrt{9}}"], ["\\sqrt{8}", "1", "3"])))
    start = time.monotonic()
    worker.start()
    worker.join(60)
    assert out == [[1.0, 0.0, 1.0]] and time.monotonic() - start < 30


def test_helpers():
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert to_number("\\frac{1}{0}") is None
    assert gold_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gold_answer("so it is $\\boxed{\\frac{1}{4}}$.") == "\\frac{1}{4}"
    assert gold_answer(" 5 ") == "5"


def test_math_answer_reward_and_reward_fn_form():
    completions = ["so \\boxed{\\frac{1}{2}}", "The answer is 1,000 dollars.", "#### 72", "I think 12", "nothing",
                   "The answer is 12, or maybe 13."]
    answers = ["0.5", "1000", "He sold 24.\n#### 72", "13", "4", "13"]
    assert math_answer_reward(completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert math_reward(["p"] * 6, completions, answer=answers, other=[0] * 6) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        math_answer_reward(["1"], [])
