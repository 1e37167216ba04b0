"""Math reward: pull the final answer out of a completion and decide whether it equals the reference.

Extraction: the last complete ``\\boxed{...}`` (nested braces balanced; also ``\\fbox``, ``\\boxed 5``), else the
last ``#### n`` (GSM8K), else what follows "the answer is" / "answer:", else the last number in the text. The
last-number fallback applies only when the completion states no answer: a completion with a ``\\boxed`` it did
not close, or "the answer is 12, or maybe 13", is graded on what it stated, never on a number picked out of it.

Equivalence is decided by ``math_verify`` (symbolic: ``x^2+2x+1`` = ``(x+1)^2``, ``2\\sqrt{2}`` = ``\\sqrt{8}``,
sets ``3, 5`` = ``5, 3``, intervals, percentages, units), under a time limit per pair (``MATH_VERIFY_TIMEOUT_S``:
math_verify's own signal-based limit in the main thread; elsewhere — a reward running in a watchdog thread — the
pair is sent to a helper process that is killed if it overruns). Unicode ``²``, ``√``, ``π``, ``−``, ``×`` are
rewritten as LaTeX first. The one exception is GSM8K: when the reference is an integer (``#### 72``) and the
answer reads as a number after the hand-rolled normalisation (``$1,000``, ``18 dollars``, ``72.0``), they are
compared exactly here, which is both faster and right for GSM8K's unit-laden answers.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from fractions import Fraction

logger = logging.getLogger(__name__)

MATH_VERIFY_TIMEOUT_S = 5
"""Seconds math_verify may spend on parsing each side and on the comparison of one pair."""
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.*?)(?:\.\s|\.?$|\n)", re.I)
_UNIT_WORDS = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z]+\.?\s*)+$")
_INTEGER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_VERIFY_LOCK = threading.Lock()
_VERIFY_POOL = None
_WARNED = False


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
    if stated:
        return stated[-1].strip() or None
    if re.search(r"\\(?:boxed|fbox)", text):  # a box it did not close: no guessing from the numbers around it
        return None
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


def unicode_to_latex(s: str) -> str:
    """Rewrite the Unicode maths a model may write (``x²``, ``2√2``, ``π``, ``−5``, ``3×4``) as LaTeX."""
    s = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+", lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", s)
    s = re.sub(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\{[^{}]*\}|\([^()]*\))",
               lambda m: "\\sqrt{" + m.group(1).strip("{}") + "}", s)
    for char, latex in (("π", "\\pi "), ("−", "-"), ("×", "\\times "), ("÷", "\\div "), ("·", "\\cdot "),
                        ("∞", "\\infty "), ("≤", "\\le "), ("≥", "\\ge ")):
        s = s.replace(char, latex)
    return s


def _verify_here(pred: str, gold: str, timeout: int | None) -> bool:
    """math_verify on one pair in this process (``timeout``: its signal-based limit; main thread only)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${unicode_to_latex(gold)}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${unicode_to_latex(pred)}$", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception as exc:  # noqa: BLE001 - a verifier failure is "not shown equal", never a crash
        logger.debug("math_verify failed on %r vs %r: %s", pred, gold, exc)
        return False


def _verify_job(pred: str, gold: str, timeout: int) -> bool:
    """One pair in the helper process (its main thread: math_verify's own limits apply there too)."""
    return _verify_here(pred, gold, timeout)


def verify_pairs(pairs: list[tuple[str, str]]) -> list[bool]:
    """math_verify's verdict on each (prediction, reference) pair, each under ``MATH_VERIFY_TIMEOUT_S`` (a pair past
    it is "not equal"); see the module doc for how the limit is enforced off the main thread."""
    global _VERIFY_POOL
    if not pairs:
        return []
    if threading.current_thread() is threading.main_thread():
        return [_verify_here(p, g, MATH_VERIFY_TIMEOUT_S) for p, g in pairs]
    from .reward_pool import RewardPool

    with _VERIFY_LOCK:
        if _VERIFY_POOL is None:
            _VERIFY_POOL = RewardPool(1)
            atexit.register(_VERIFY_POOL.close)
        jobs = [((p, g, MATH_VERIFY_TIMEOUT_S), {}) for p, g in pairs]
        results = _VERIFY_POOL.run(_verify_job, jobs, 3 * MATH_VERIFY_TIMEOUT_S + 10)
    verdicts = []
    for (pred, gold), (status, value) in zip(pairs, results):
        if status != "ok":
            logger.warning("math_verify: %s on %r vs %r; counted as not equal", status, pred[:80], gold[:80])
        verdicts.append(status == "ok" and value is True)
    return verdicts


def _math_verify_available() -> bool:
    global _WARNED
    try:
        import math_verify  # noqa: F401 - a core dependency; checked so a broken install degrades, not crashes
    except ImportError:
        if not _WARNED:
            _WARNED = True
            logger.warning("math_verify is not importable: math answers are compared by rapid's own normaliser only "
                           "(symbolic equivalences such as 2\\sqrt{2} = \\sqrt{8} are graded wrong); pip install "
                           "math-verify")
        return False
    return True


def _hand_rolled(pred: str, gold: str) -> bool | None:
    """The exact comparison of rapid's normaliser: True/False when both read as numbers (or as the same string),
    None when it cannot tell."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        return abs(x - y) <= Fraction(1, 10**9) * max(1, abs(y))
    return True if a == b else None


def _decide(pred: str | None, gold: str | None, use_math_verify: bool) -> bool | None:
    """True/False when decided without math_verify, None when math_verify must decide."""
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return False
    if pred.strip() == gold.strip():
        return True
    if _INTEGER.fullmatch(gold.strip()):  # GSM8K: an integer reference, compared exactly when the answer is a number
        value = to_number(normalize_answer(pred))
        if value is not None:
            return value == int(gold.strip().replace(",", ""))
    if not use_math_verify or not _math_verify_available():
        return bool(_hand_rolled(pred, gold))
    return None


def answers_equal(pred: str | None, gold: str | None, use_math_verify: bool = True) -> bool:
    """Whether two extracted answers are the same (see the module doc). ``use_math_verify=False``: rapid's own
    normaliser only (exact numbers and identical normalised strings)."""
    decided = _decide(pred, gold, use_math_verify)
    return decided if decided is not None else verify_pairs([(pred, gold)])[0]


def math_answer_reward(completions: list[str], answers: list[str]) -> list[float]:
    """1.0 where the completion's final answer equals the reference answer, else 0.0. A reference may be a bare
    answer or a full GSM8K/MATH solution (its ``#### n`` / ``\\boxed{}`` is used)."""
    if len(completions) != len(answers):
        raise ValueError(f"completions ({len(completions)}) and answers ({len(answers)}) differ in length")
    pairs = [(extract_answer(c), gold_answer(a)) for c, a in zip(completions, answers)]
    decided = [_decide(p, g, True) for p, g in pairs]
    undecided = [i for i, d in enumerate(decided) if d is None]
    for i, verdict in zip(undecided, verify_pairs([pairs[i] for i in undecided])):
        decided[i] = verdict
    return [float(d) for d in decided]


def math_reward(prompts: list[str], completions: list[str], answer: list[str], **_columns) -> list[float]:
    """``math_answer_reward`` in the reward-function form (column ``answer``)."""
    return math_answer_reward(completions, answer)
