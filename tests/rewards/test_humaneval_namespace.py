"""HumanEval test programs see the names of the module they are part of, as HumanEval's harness runs prompt +
completion + test + check(entry_point) as one program: helpers the test reads (HumanEval/32's poly, /38's
encode_cyclic, /50's encode_shift) resolve whether the prompt's code is given or only the completion defines them —
and that shared namespace gives a program no way to forge a pass."""

import os
import time

import pytest

from rapid.rewards import SandboxLimits, code_tests_reward
from rapid.rewards.code_judges import module_references
from rapid.rewards.sandbox.calls import SandboxedFunction, SandboxGone, open_program
from rapid.tasks.humaneval import load_problems

from .test_sandbox import leftovers

FAST = SandboxLimits(timeout_s=3.0, memory_mb=512)
PROBLEMS = {p["task_id"]: p for p in load_problems()}
HELPER_PROBLEMS = ["HumanEval/32", "HumanEval/38", "HumanEval/50"]
WORKERS = max(2, min(8, os.cpu_count() or 1))  # threads that mostly wait on sandbox subprocesses


def _score(problems: list[dict], completions: list[str], with_prompt: bool) -> list[float]:
    prompts = [p["prompt"] for p in problems] if with_prompt else None
    tests, entries = [p["test"] for p in problems], [p["entry_point"] for p in problems]
    return code_tests_reward(completions, tests, entry_point=entries, prompt_code=prompts,
                             limits=SandboxLimits(timeout_s=10.0), num_workers=WORKERS)


def test_every_canonical_solution_scores_one_and_no_stub_does():
    problems = list(PROBLEMS.values())
    assert len(problems) == 164
    start = time.monotonic()
    full = _score(problems, [p["prompt"] + p["canonical_solution"] for p in problems], with_prompt=False)
    body = _score(problems, [p["canonical_solution"] for p in problems], with_prompt=True)
    assert [p["task_id"] for p, s in zip(problems, full) if s != 1.0] == [], "full programs, no prompt_code"
    assert [p["task_id"] for p, s in zip(problems, body) if s != 1.0] == [], "bodies after prompt_code"
    prompt_only = _score(problems, [p["prompt"] for p in problems], with_prompt=False)
    pass_body = _score(problems, ["    pass\n"] * len(problems), with_prompt=True)
    for name, scores in (("prompt only", prompt_only), ("pass body", pass_body)):
        passing = [p["task_id"] for p, s in zip(problems, scores) if s != 0.0]
        assert len(passing) <= 2, f"{name}: stubs that pass their check: {passing}"
    assert time.monotonic() - start < 120
    assert leftovers() == []


@pytest.mark.parametrize("task_id", HELPER_PROBLEMS)
def test_problems_whose_tests_call_the_prompts_helpers(task_id):
    problem = PROBLEMS[task_id]
    prompt, body = problem["prompt"], problem["canonical_solution"]
    wrong = "    return " + ("0.5\n" if task_id == "HumanEval/32" else "s[::-1]\n")
    cases = [(prompt + body, False, 1.0), (prompt + body, True, 1.0), (body, True, 1.0),
             (f"Here it is:\n```python\n{prompt}{body}```\n", False, 1.0),
             (f"Here it is:\n```python\n{prompt}{body}```\n", True, 1.0),
             (prompt + wrong, False, 0.0), (prompt + wrong, True, 0.0), (wrong, True, 0.0),
             (body, False, 0.0)]  # a body alone with no prompt code is no program
    got = [code_tests_reward([completion], [problem["test"]], entry_point=problem["entry_point"],
                             prompt_code=prompt if with_prompt else None, limits=FAST)[0]
           for completion, with_prompt, _ in cases]
    assert got == [expected for *_, expected in cases]
    assert leftovers() == []


def test_module_references_are_the_globals_a_test_reads_and_never_binds():
    test = ("import math as m\nMETADATA = {}\nfrom string import ascii_lowercase\n"
            "def check(candidate):\n    import random\n    global G\n    G = 1\n"
            "    s = ''.join(c for c in ascii_lowercase if helper(c))\n"
            "    assert abs(m.fabs(poly([1], 0))) < len(s), (candidate, METADATA, check, AssertionError)\n"
            "    class K:\n        a = in_class\n    return [encode(x) for x in range(3)]\n"
            "inputs = [1]\nfor i in inputs:\n    assert top_level(i) and G\n"
            "def later():\n    return __name__, __builtins__\n")
    assert module_references(test) == ("encode", "helper", "in_class", "poly", "top_level")
    assert module_references(PROBLEMS["HumanEval/32"]["test"]) == ("poly",)
    assert module_references(PROBLEMS["HumanEval/0"]["test"]) == ()


def test_lookup_returns_proxies_copies_and_only_what_was_asked():
    source = ("TABLE = {'a': [1, 2]}\ndef twice(x):\n    return 2 * x\nclass Box:\n    pass\n"
              "import math\nBOX = Box()\n")
    with open_program(source, FAST) as program:
        found = program.lookup(["twice", "TABLE", "Box", "math", "BOX", "missing"])
        assert set(found) == {"twice", "TABLE", "Box", "math", "BOX"}
        assert isinstance(found["twice"], SandboxedFunction) and found["twice"](21) == 42
        assert found["TABLE"] == {"a": [1, 2]}
        assert isinstance(found["Box"], SandboxedFunction)
        assert found["math"] != found["math"] and found["BOX"] != found["BOX"]  # opaque: equal to nothing
        assert program.lookup([]) == {}
    with open_program("import os\nos._exit(0)\n", FAST) as program, pytest.raises(SandboxGone):
        program.lookup(["twice"])
    assert leftovers() == []


# A test program that reads the module's helper (like HumanEval/32) and uses builtins and its own names.
HELPER_TEST = ("METADATA = {}\n\n\ndef check(candidate):\n    import math\n"
               "    for xs in ([1, 2], [-6, 11, -6, 1], [3, -1]):\n"
               "        assert math.fabs(poly(xs, candidate(xs))) < 1e-4\n"
               "        assert abs(poly(xs, candidate(xs))) < 1e-4 and len(xs) > 0 and isinstance(xs, list)\n")
POLY = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
RIGHT = (POLY + "def find_zero(xs):\n    lo, hi = -10.0, 10.0\n    while hi - lo > 1e-10:\n"
         "        mid = (lo + hi) / 2\n        if poly(xs, lo) * poly(xs, mid) > 0:\n            lo = mid\n"
         "        else:\n            hi = mid\n    return lo\n")
WRONG = POLY + "def find_zero(xs):\n    return 0.25\n"
# the same check judged by builtins only: a program whose abs, len or isinstance the test took would pass it
ABS_TEST = ("def check(candidate):\n    for xs in ([1, 2], [3, -1]):\n"
            "        assert abs(poly(xs, candidate(xs))) < 1e-4 and len(xs) > 0 and isinstance(xs, list)\n")


def helper_score(program: str, test: str = HELPER_TEST, prompt: str | None = None, limits=FAST) -> float:
    start = time.monotonic()
    value = code_tests_reward([program], [test], entry_point="find_zero", prompt_code=prompt, limits=limits)[0]
    assert time.monotonic() - start < limits.timeout_s + 4.0, "the sandbox overran its wall limit"
    assert leftovers() == [], "the program left something behind"
    return value


def test_the_shared_namespace_scores_right_and_wrong_programs():
    assert helper_score(RIGHT) == 1.0
    assert helper_score(WRONG) == 0.0
    assert helper_score(RIGHT.replace("def poly", "def polynomial")) == 0.0  # no poly anywhere: NameError, a fail
    assert helper_score("POLY = 1\n" + WRONG.replace("def poly", "def other")) == 0.0


def test_a_program_cannot_forge_a_pass_through_the_shared_namespace():
    builtins_and_check = ("import builtins\n"
                          "def check(candidate):\n    pass\n"                # its own check: never taken
                          "builtins.AssertionError = type('Never', (Exception,), {})\n"
                          "abs = lambda x: 0\nlen = lambda x: 1\nisinstance = lambda *a: True\n"
                          "class math:\n    fabs = staticmethod(lambda x: 0)\n" + WRONG)
    assert helper_score(builtins_and_check) == 0.0
    assert helper_score(builtins_and_check, test=ABS_TEST) == 0.0
    for exit_call in ("import sys\n    sys.exit(0)", "import os\n    os._exit(0)", "raise SystemExit(0)",
                      "raise StopIteration", "raise KeyboardInterrupt"):
        exits_in_helper = f"def poly(xs, x):\n    {exit_call}\n" + WRONG.replace("def poly", "def _unused")
        assert helper_score(exits_in_helper) == 0.0, exit_call
    exits_at_load = RIGHT + "import sys\nsys.exit(0)\n"  # right, but it never finishes loading
    assert helper_score(RIGHT) == 1.0 and helper_score(exits_at_load) == 0.0
    prints = ("import sys\nprint('All tests passed'); print('OK'); sys.stderr.write('PASSED\\n')\n" + POLY +
              "def find_zero(xs):\n    print('1 passed')\n    sys.stdout.flush()\n    return 0.25\n")
    assert helper_score(prints) == 0.0


HIJACK = ("import os, sys\nchild = sys.modules['__main__']\n"
          "CLAIMED = ['abs', 'len', 'isinstance', 'check', 'AssertionError', 'poly']\n"
          "def fake_lookup(env, msg):\n"
          "    return {'reply': msg['id'], 'callables': CLAIMED, 'values': {'abs': ['i', '0'], 'check': None}}\n"
          "child._lookup = fake_lookup\n"
          "for fd in range(3, 40):\n    try:\n"
          "        os.write(fd, b'{\"reply\": 0, \"callables\": [\"abs\", \"check\", \"poly\"]}\\n' * 2)\n"
          "    except OSError:\n        pass\n"
          "def abs(x):\n    return 0\n" + POLY + "def find_zero(xs):\n    return 0.25\n")


def test_a_hijacked_reporting_channel_binds_nothing_the_test_did_not_ask_for():
    # the program's look-up (and forged replies written before it) claim builtins and check as its own: only poly,
    # the one name the test reads from the module, is bound; abs stays the builtin, so the wrong root fails
    assert helper_score(HIJACK, test=ABS_TEST) == 0.0
    assert helper_score(HIJACK.replace("return 0.25", "return -0.5 if xs == [1, 2] else 3.0"), test=ABS_TEST) == 1.0
    # a forged emitter makes every call "return" 0.0; with the prompt's poly trusted, 0.0 is judged for what it is
    emitter = ("emit = child._Emitter.__call__\n"
               "def forged(self, obj):\n"
               "    if 'reply' in obj and 'callables' not in obj:\n"
               "        obj = {'reply': obj['reply'], 'value': ['f', '0.0']}\n"
               "    emit(self, obj)\n"
               "child._Emitter.__call__ = forged\n")
    prompt = POLY + "def find_zero(xs):\n    \"\"\"x with poly(xs, x) == 0.\"\"\"\n"
    assert helper_score(HIJACK + emitter, test=ABS_TEST, prompt=prompt) == 0.0


def test_with_prompt_code_the_datasets_helpers_judge_not_the_programs():
    problem = PROBLEMS["HumanEval/38"]
    identity = "def encode_cyclic(s: str):\n    return s\n\n\ndef decode_cyclic(s: str):\n    return s\n"
    assert code_tests_reward([identity], [problem["test"]], entry_point=problem["entry_point"],
                             prompt_code=problem["prompt"], limits=FAST) == [0.0]
    prompt = POLY + "def find_zero(xs):\n    \"\"\"x with poly(xs, x) == 0.\"\"\"\n"
    fake_poly = "def poly(xs, x):\n    return 0.0\n" + WRONG.replace("def poly", "def _unused")
    assert helper_score(fake_poly, prompt=prompt) == 0.0
    assert helper_score(RIGHT, prompt=prompt) == 1.0
