"""Math reward: pull the final answer out of a completion and compare it with the reference.

Extraction order: the last ``\\boxed{...}`` (nested braces balanced; also ``\\fbox``, ``\\boxed 5``), then the last
``#### n`` (GSM8K), then "the answer is ...", then the last number in the text.

Equivalence: the two answers are normalised (``$``, ``\\text{}``, units, ``%``, degree signs, ``x =`` prefixes,
thousands separators, ``\\dfrac``/``\\tfrac``, ``\\frac12``, spacing macros, ``\\left``/``\\right`` are removed or
rewritten), then compared as exact rationals when both parse as numbers (integers, decimals, ``a/b``,
``\\frac{a}{b}``), else as strings without spaces. When the ``math_verify`` package is installed, a pair that this
comparison rejects is also offered to it (symbolic equivalence: ``2\\sqrt{2}`` vs ``\\sqrt{8}``); it can only turn a
"no" into a "yes".
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.I)
_UNIT_WORDS = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z]+\.?\s*)+$")


def _braced(text: str, open_at: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[open_at] == "{"`` and the index after it."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i], i + 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed x``), else None."""
    found = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s+[^\s$]+)", text):
        if m.group(1) == "{":
            got = _braced(text, m.start(1))
            if got is not None:
                found = got[0]
        else:
            found = m.group(1).strip()
    return found.strip() if found is not None else None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (see the module doc for the order), or None if there is none."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    stated = _ANSWER_IS.findall(text)
    if stated and stated[-1].strip():
        return stated[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def gold_answer(reference: str) -> str:
    """The answer inside a reference that is a full solution (GSM8K ``#### n``, MATH ``\\boxed``), else itself."""
    reference = str(reference)
    if "####" in reference or "\\boxed" in reference or "\\fbox" in reference:
        return extract_answer(reference) or reference.strip()
    return reference.strip()


def _unwrap_text(s: str) -> str:
    """Replace ``\\text{x}``, ``\\mbox{x}``, ``\\mathrm{x}``, ``\\textbf{x}`` by x (nested braces allowed)."""
    while True:
        m = re.search(r"\\(?:text|mbox|mathrm|textbf|mathbf)\s*\{", s)
        if not m:
            return s
        got = _braced(s, m.end() - 1)
        if got is None:
            return s
        s = s[:m.start()] + got[0] + s[got[1]:]


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer (see the module doc)."""
    s = _unwrap_text(str(answer).strip())
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt\s*(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)", "", s)
    s = s.replace("\\ ", " ").replace("{,}", ",").replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip()
    s = re.sub(r"^[a-zA-Z]\w*\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.rstrip(".").strip()
    unit = _UNIT_WORDS.match(s)
    if unit:
        s = unit.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"\((\s*[A-Ea-e]\s*)\)", s)  # multiple choice "(B)" -> "B"
    if m:
        s = m.group(1).strip()
    return re.sub(r"\s+", "", s)


def to_number(s: str) -> Fraction | None:
    """Exact value of a normalised answer that is a number (int, decimal, ``a/b``, ``\\frac{a}{b}``), else None."""
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    try:
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return -value if m.group(1) else value
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(/\d+)?", s):
            num, _, den = s.partition("/")
            return Fraction(num) / Fraction(den) if den else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _math_verify_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    main = threading.current_thread() is threading.main_thread()  # its timeouts use SIGALRM: main thread only
    timeout = {"parsing_timeout": 5} if main else {"parsing_timeout": None}
    try:
        gold_parsed = parse(f"${gold}$", **timeout)
        pred_parsed = parse(f"${pred}$", **timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=5 if main else None))
    except Exception as exc:  # noqa: BLE001 - a verifier failure is "not shown equal", never a crash
        logger.debug("math_verify failed on %r vs %r: %s", pred, gold, exc)
        return False


def answers_equal(pred: str | None, gold: str | None, use_math_verify: bool = True) -> bool:
    """Whether two extracted answers are the same (see the module doc)."""
    if pred is None or gold is None:
        return False
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        return abs(x - y) <= Fraction(1, 10**9) * max(1, abs(y))
    return use_math_verify and _math_verify_equal(pred, gold)


def math_answer_reward(completions: list[str], answers: list[str]) -> list[float]:
    """1.0 where the completion's final answer equals the reference answer, else 0.0. A reference may be a bare
    answer or a full GSM8K/MATH solution (its ``#### n`` / ``\\boxed{}`` is used)."""
    if len(completions) != len(answers):
        raise ValueError(f"completions ({len(completions)}) and answers ({len(answers)}) differ in length")
    return [float(answers_equal(extract_answer(c), gold_answer(a))) for c, a in zip(completions, answers)]


def math_reward(prompts: list[str], completions: list[str], answer: list[str], **_columns) -> list[float]:
    """``math_answer_reward`` in the reward-function form (column ``answer``)."""
    return math_answer_reward(completions, answer)
