"""The three test formats of code_tests_reward (assert lists are covered in test_sandbox.py): HumanEval check
programs judged in the parent through a proxy, MBPP+-style test programs, and stdin/stdout cases — on right, wrong,
crashing, hanging and hostile programs. Every run must leave nothing behind."""

import time

import pytest

from rapid.rewards import SandboxLimits, assemble_program, code_reward, code_tests_reward
from rapid.rewards.sandbox_calls import SandboxGone, SandboxedError, open_program

from .test_sandbox import leftovers

PROMPT = 'from typing import List\n\n\ndef add_all(xs: List[int], k: int) -> List[int]:\n    """Add k to each."""\n'
CHECK = ("METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2], 1) == [2, 3]\n"
         "    assert candidate([], 5) == []\n    assert candidate([-1], k=1) == [0]\n")
GOOD_BODY = "    return [x + k for x in xs]\n"
FAST = SandboxLimits(timeout_s=3.0, memory_mb=512)


def check_score(completion: str, test: str = CHECK, limits=FAST, prompt=PROMPT) -> float:
    start = time.monotonic()
    value = code_tests_reward([completion], [test], entry_point="add_all", prompt_code=prompt, limits=limits)[0]
    assert time.monotonic() - start < limits.timeout_s + 4.0, "the sandbox overran its wall limit"
    assert leftovers() == [], "the program left something behind"
    return value


def test_humaneval_check_right_and_wrong_continuations_and_full_programs():
    assert check_score(GOOD_BODY) == 1.0                                          # base model: continues the prompt
    assert check_score(f"Sure:\n```python\n{PROMPT}{GOOD_BODY}```") == 1.0        # instruct model: whole function
    assert check_score(f"def add_all(xs, k):\n{GOOD_BODY}") == 1.0                # unfenced full definition
    assert check_score(f"{GOOD_BODY}```\nThis adds k to each.") == 1.0             # a body, then chatter
    assert check_score("    return [x + k for x in xs if x > 0]\n") == 0.0        # fails one assert: 0 (0/1 check)
    assert check_score("    return None\n") == 0.0
    assert check_score("    raise ValueError('no')\n") == 0.0
    assert check_score("    return [x + k for x in\n") == 0.0                     # does not compile
    assert check_score("    while True:\n        pass\n", limits=SandboxLimits(timeout_s=1.0)) == 0.0


def test_humaneval_check_hostile_programs():
    tamper = ("import builtins\n"
              "def check(candidate):\n    pass\n"                                 # its own check: never called
              "builtins.AssertionError = type('Never', (Exception,), {})\n"
              "class Anything(list):\n    def __eq__(self, other): return True\n"
              "def add_all(xs, k):\n    return Anything()\n")
    assert check_score(tamper, prompt=None) == 0.0
    exits = "import os\nos._exit(0)\ndef add_all(xs, k):\n    return [x + k for x in xs]\n"
    assert check_score(exits, prompt=None) == 0.0
    stops = ("def add_all(xs, k):\n    raise StopIteration\n")                   # would end map() in the test early
    assert check_score(stops, "def check(candidate):\n    assert all(map(lambda x: candidate([x], 0), [1, 2]))\n",
                       prompt=None) == 0.0
    forged = ("import os\nfor fd in range(3, 40):\n    try:\n"
              "        os.write(fd, b'{\"reply\": 0, \"value\": [\"l\", [[\"i\", \"2\"], [\"i\", \"3\"]]]}\\n' * 3)\n"
              "    except OSError:\n        pass\ndef add_all(xs, k):\n    return None\n")
    assert check_score(forged, prompt=None) == 0.0                                # forged replies: first ones only
    deep = ("import os\nfor fd in range(3, 40):\n    try:\n        os.write(fd, b'[' * 200000 + b'\\n')\n"
            "    except OSError:\n        pass\ndef add_all(xs, k):\n    return None\n")
    assert check_score(deep, prompt=None) == 0.0                                  # cannot crash the parser


def test_test_program_helpers_private_random_and_mbpp_plus_style():
    # a test using a helper from the prompt (HumanEval/32's poly) and the random module
    prompt = "def double(x):\n    return 2 * x\n\n\ndef twice(x):\n    \"\"\"double(x)\"\"\"\n"
    test = ("import random\n\ndef check(candidate):\n    for _ in range(20):\n        x = random.randint(-9, 9)\n"
            "        assert candidate(x) == double(x)\n")
    import random as global_random

    global_random.seed(123)
    before = global_random.random()
    global_random.seed(123)
    got = code_tests_reward(["    return x + x\n", "    return x * x\n"], [test, test], entry_point="twice",
                            prompt_code=prompt, limits=FAST)
    assert got == [1.0, 0.0]
    assert global_random.random() == before, "the test's random module moved the trainer's global state"
    plus = ("inputs = [[1, 2], [3, 4], [0.5, 0.25]]\nresults = [3, 7, 0.75]\n"
            "for inp, exp in zip(inputs, results):\n    assert abs(adder(*inp) - exp) < 1e-9\n")
    assert code_tests_reward(["def adder(a, b):\n    return a + b", "def adder(a, b):\n    return int(a + b)"],
                             [plus, plus], entry_point="adder", limits=FAST) == [1.0, 0.0]
    assert leftovers() == []


CASES = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"},
         {"input": "5 5", "output": "10   \n\n"}]


def stdio_score(program: str, cases=CASES, limits=FAST) -> float:
    value = code_tests_reward([program], [cases], limits=limits)[0]
    assert leftovers() == []
    return value


def test_stdin_stdout_cases():
    solution = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert stdio_score(solution) == 1.0
    assert stdio_score(f"```python\nimport sys\n\ndef main():\n    {solution.replace(chr(10), chr(10) + '    ')}"
                       f"\nif __name__ == '__main__':\n    main()\n```") == 1.0     # scripts run as __main__
    assert stdio_score("a, b = map(int, input().split())\nprint(a - b if a == 10 else a + b)\n") == pytest.approx(2 / 3)
    assert stdio_score("print(3)\n") == pytest.approx(1 / 3)            # the expected stdout for the wrong input
    assert stdio_score(solution + "raise SystemExit(1)\n") == 0.0         # right output, failing exit
    assert stdio_score(solution + "import sys\nsys.exit(0)\n") == 1.0     # a clean exit is fine
    assert stdio_score("while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0)) == 0.0
    assert stdio_score("import sys\nsys.stdout.write('x' * 5_000_000)\n",
                       limits=SandboxLimits(timeout_s=3.0, output_bytes=1 << 16)) == 0.0
    leaker = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n" + solution)
    assert stdio_score(leaker) == 1.0                                      # its leftover processes are killed


def test_continuations_are_joined_with_the_prompt():
    assert assemble_program(GOOD_BODY, PROMPT, "add_all") == PROMPT + GOOD_BODY
    fenced = assemble_program(f"```python\ndef add_all(xs, k):\n{GOOD_BODY}```", PROMPT, "add_all")
    assert fenced.startswith(PROMPT.rstrip()) and fenced.endswith(f"def add_all(xs, k):\n{GOOD_BODY}")
    assert assemble_program("print(1)", None, None) == "print(1)"


def test_bad_test_specs_fail_early_naming_the_argument():
    with pytest.raises(ValueError, match=r"tests\[0\].*entry_point"):
        code_tests_reward(["x"], [CHECK])
    with pytest.raises(ValueError, match=r"tests\[1\].*not valid Python"):
        code_tests_reward(["x", "y"], [CHECK, "def check(:"], entry_point="f")
    with pytest.raises(ValueError, match=r"tests\[0\]"):
        code_tests_reward(["x"], [[{"input": "1"}]])
    with pytest.raises(ValueError, match="entry_point has 2 entries"):
        code_tests_reward(["x"], [CHECK], entry_point=["f", "g"])
    with pytest.raises(ValueError, match="packages: 'no_such_package_xyz' is not installed"):
        code_tests_reward(["def f(): return 1"], [["assert f() == 1"]], packages=("no_such_package_xyz",))
    with pytest.raises(ValueError, match="top-level package name"):
        SandboxLimits(packages=("numpy.linalg",))


def test_package_allow_list_is_off_by_default():
    program = "import numpy as np\ndef total(n):\n    return np.arange(n).sum()\n"
    assert code_tests_reward([program], [["assert total(5) == 10"]], limits=FAST) == [0.0]
    assert code_tests_reward([program], [["assert total(5) == 10"]], packages=("numpy",)) == [1.0]
    sneaky = "import json, sys\ndef total(n):\n    import transformers\n    return 10\n"   # not on the list
    assert code_tests_reward([sneaky], [["assert total(5) == 10"]], packages=("numpy",)) == [0.0]
    assert leftovers() == []


def test_sandboxed_program_calls_and_their_failures():
    with open_program("def f(x):\n    return {'v': x}\ndef g():\n    raise KeyError(1)\n"
                      "def h():\n    class C: pass\n    return C()\n", FAST) as program:
        assert program.function("f")([1, (2, 3)]) == {"v": [1, (2, 3)]}
        with pytest.raises(KeyError):
            program.function("g")()
        assert program.function("h")() != program.function("h")()  # opaque values equal nothing
        with pytest.raises(NameError):
            program.function("missing")()
    with open_program("class Odd(Exception):\n    pass\ndef f():\n    raise Odd()\n", FAST) as program:
        with pytest.raises(SandboxedError, match="Odd"):
            program.function("f")()
    with open_program("raise SystemExit(0)\n", FAST) as program:
        with pytest.raises(SandboxGone):
            program.function("f")(1)
    assert leftovers() == []


def test_reward_function_form_takes_the_task_columns():
    got = code_reward(["p"] * 2, [GOOD_BODY, "    return xs\n"], tests=[CHECK, CHECK],
                      entry_point=["add_all", "add_all"], prompt_code=[PROMPT, PROMPT])
    assert got == [1.0, 0.0]
