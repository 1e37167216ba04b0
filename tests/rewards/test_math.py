"""Answer extraction and equivalence tables for the math reward (own implementation; math_verify optional)."""

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
    ("unclosed \\boxed{12 and later 13", "13"),                                # broken box: fall back to last number
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


def test_math_verify_adds_symbolic_equivalence():
    pytest.importorskip("math_verify")
    assert answers_equal("2\\sqrt{2}", "\\sqrt{8}")
    assert not answers_equal("2\\sqrt{2}", "\\sqrt{8}", use_math_verify=False)


def test_helpers():
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert to_number("\\frac{1}{0}") is None
    assert gold_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gold_answer("so it is $\\boxed{\\frac{1}{4}}$.") == "\\frac{1}{4}"
    assert gold_answer(" 5 ") == "5"


def test_math_answer_reward_and_reward_fn_form():
    completions = ["so \\boxed{\\frac{1}{2}}", "The answer is 1,000 dollars.", "#### 72", "I think 12", "nothing"]
    answers = ["0.5", "1000", "He sold 24.\n#### 72", "13", "4"]
    assert math_answer_reward(completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert math_reward(["p"] * 5, completions, answer=answers, other=[0] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        math_answer_reward(["1"], [])
