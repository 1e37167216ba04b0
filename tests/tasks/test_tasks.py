"""Dataset loaders on the offline samples, the countdown verifier and generator, and the task registry."""

import json
import os
import sys

import pytest

from rapid.rewards import code_reward, math_reward
from rapid.tasks import Task, get_task, list_tasks, register_task
from rapid.tasks.countdown import (check_solution, countdown_reward, evaluate_expression, extract_expression,
                                   make_countdown_task)
from rapid.tasks.datasets import (format_prompt, gsm8k_rows, load_records, math_rows, mbpp_rows, split_rows)

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
GSM8K, MATH, MBPP = (os.path.join(DATA, f"{n}_sample.jsonl") for n in ("gsm8k", "math", "mbpp"))


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<|{t['role']}|>{t['content']}" for t in turns) + "<|assistant|>"


def test_gsm8k_rows_and_reward():
    rows = gsm8k_rows(load_records(GSM8K))
    assert [r["answer"] for r in rows] == ["12", "110", "8", "950", "70"]
    assert rows[0]["prompt"].startswith("A baker makes 24 muffins") and "\\boxed{}" in rows[0]["prompt"]
    completions = ["... so \\boxed{12}", "#### 110", "The answer is $8.", "950 chickens", "I get 69"]
    assert math_reward([r["prompt"] for r in rows], completions, answer=[r["answer"] for r in rows]) == \
        [1.0, 1.0, 1.0, 1.0, 0.0]


def test_math_rows_prefer_answer_field_else_boxed():
    rows = math_rows(load_records(MATH))
    assert [r["answer"] for r in rows] == ["\\frac{5}{6}", "5", "5\\sqrt{2}", "9", "720^\\circ", "10"]
    assert math_reward(None, ["\\boxed{5/6}", "x = 5", "", "9", "720", "\\boxed{10}"],
                       answer=[r["answer"] for r in rows]) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="boxed"):
        math_rows([{"problem": "p", "solution": "no box"}])


def test_mbpp_rows_reference_code_passes_in_the_sandbox():
    records = load_records(MBPP)
    rows = mbpp_rows(records)
    assert rows[2]["test_setup"] == "import math"
    assert "assert sum_squares([1, 2, 3]) == 14" in rows[0]["prompt"]
    assert "common elements" in rows[3]["prompt"]  # MBPP+ / sanitized use "prompt" instead of "text"
    references = [f"```python\n{r['code']}\n```" for r in records]
    columns = {"tests": [r["tests"] for r in rows], "test_setup": [r["test_setup"] for r in rows]}
    assert code_reward(None, references, **columns) == [1.0, 1.0, 1.0, 1.0]
    wrong = ["def sum_squares(xs):\n    return 14", "def is_palindrome(s):\n    return s == s[::-1]",
             "def circle_area(r):\n    return 3.14159", "def common(a, b):\n    return ()"]
    assert code_reward(None, wrong, **columns) == pytest.approx([1 / 3, 2 / 3, 0.5, 0.5])


def test_chat_template_used_when_present():
    rows = gsm8k_rows(load_records(GSM8K)[:1], tokenizer=ChatTokenizer())
    assert rows[0]["prompt"].startswith("<|user|>A baker") and rows[0]["prompt"].endswith("<|assistant|>")
    assert format_prompt("hi", ChatTokenizer(), system="be brief") == "<|system|>be brief<|user|>hi<|assistant|>"
    assert format_prompt("hi", object()) == "hi"  # no chat template: the plain text


def test_json_variants(tmp_path):
    records = load_records(GSM8K)
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "data.json").write_text(json.dumps({"data": records}))
    (tmp_path / "splits.json").write_text(json.dumps({"train": records[:3], "test": records[3:]}))
    assert load_records(str(tmp_path / "list.json")) == records
    assert load_records(str(tmp_path / "data.json")) == records
    assert load_records(str(tmp_path / "splits.json"), split="test") == records[3:]
    (tmp_path / "bad.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(ValueError, match="list of records"):
        load_records(str(tmp_path / "bad.json"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported"):
        load_records(str(tmp_path / "x.csv"))


def test_parquet_with_pyarrow_or_a_clear_error(tmp_path, monkeypatch):
    records = load_records(MBPP)[:3]
    path = str(tmp_path / "mbpp.parquet")
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        open(path, "wb").close()
    else:
        pq.write_table(pyarrow.Table.from_pylist(records), path)
        assert load_records(path) == records
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="needs pyarrow"):
        load_records(path)


def test_hub_ids_need_datasets_and_missing_files_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="`datasets` package"):
        load_records("openai/gsm8k", hub_config="main")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_records("no/such/file.jsonl")


def test_dataset_tasks_from_files():
    task = get_task("gsm8k", path=GSM8K, n_eval=2)
    assert (task.name, len(task.train), len(task.eval), task.reward_fn) == ("gsm8k", 3, 2, math_reward)
    math_task = get_task("math", path=MATH, eval_path=MATH)
    assert len(math_task.train) == len(math_task.eval) == 6
    mbpp = get_task("mbpp", path=MBPP, limit=3)
    assert len(mbpp.train) + len(mbpp.eval) == 3 and mbpp.reward_fn is code_reward
    assert set(mbpp.columns(mbpp.train)) == {"tests", "test_setup", "entry_point"}
    train, held = split_rows(list(range(10)), 3, seed=1)
    assert sorted(train + held) == list(range(10)) and len(held) == 3
    with pytest.raises(ValueError, match="needs path="):
        get_task("gsm8k")


CHECKS = [
    ("(25 - 3) * 2", [25, 3, 2, 7], 44, True),
    ("25 - 3 * 2", [25, 3, 2], 19, True),
    ("100 / 4 + 1", [100, 4, 1], 26, True),
    ("7 / 2 * 2", [7, 2, 2], 7, True),          # exact rationals, not floats
    ("7 / 2", [7, 2], 3, False),
    ("3 + 3", [3, 5], 6, False),                # 3 used twice, given once
    ("3 + 3", [3, 3], 6, True),
    ("2 ** 10", [2, 10], 1024, False),          # powers are not allowed
    ("-2 + 12", [2, 12], 10, False),            # neither is unary minus
    ("2.5 * 4", [4], 10, False),
    ("5 / 0", [5, 0], 0, False),
    ("__import__('os').system('true')", [1], 0, False),
    ("x + 1", [1], 1, False),
    ("(" * 90 + "1" + ")" * 90, [1], 1, True),
    ("(" * 300 + "1" + ")" * 300, [1], 1, False),  # over the length limit
    ("", [1], 1, False),
]


@pytest.mark.parametrize("expr,numbers,target,ok", CHECKS)
def test_countdown_check_solution(expr, numbers, target, ok):
    assert check_solution(expr, numbers, target) is ok


def test_countdown_extraction_and_reward():
    assert extract_expression("Let me think.\n(25 - 3) * 2 = 44") == "(25 - 3) * 2"
    assert extract_expression("<answer>4 + 6</answer> done") == "4 + 6"
    assert extract_expression("Expression: 4 + 6.") == "4 + 6"
    assert evaluate_expression("1 + 2")[1] == [1, 2]
    reward = countdown_reward(None, ["4 + 6", "4 * 6", "junk"], [[4, 6, 1]] * 3, [10, 10, 10])
    assert reward == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_countdown_puzzles_are_solvable_and_split(difficulty):
    task = make_countdown_task(difficulty, n_train=60, n_eval=10, seed=difficulty)
    rows = task.train + task.eval
    assert len(task.train) == 60 and len(task.eval) == 10
    assert countdown_reward([r["prompt"] for r in rows], [r["solution"] for r in rows], **{
        k: [r[k] for r in rows] for k in ("numbers", "target")}) == [1.0] * 70
    keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in task.train}
    assert not keys & {(tuple(sorted(r["numbers"])), r["target"]) for r in task.eval}


def test_registry():
    assert {"arithmetic", "countdown", "gsm8k", "math", "mbpp"} <= set(list_tasks())
    task = get_task("countdown", difficulty=1, n_train=10, n_eval=3)
    assert isinstance(task, Task) and task.max_new_tokens >= 8
    arithmetic = get_task("arithmetic", difficulty=2, n_train=20, n_eval=5)
    assert arithmetic.name == "arithmetic" and len(arithmetic.train) == 20
    register_task("tiny", lambda n=2: Task("tiny", [{"prompt": "1+1=", "answer": "2"}] * n, [],
                                           reward_fn=math_reward))
    assert len(get_task("tiny", n=3).train) == 3
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError):
        register_task("bad", "no-colon")
    with pytest.raises(ValueError, match="prompt"):
        Task("t", [{"question": "x"}], [], reward_fn=math_reward)
    with pytest.raises(ValueError, match="difficulty"):
        make_countdown_task(9)


def test_one_digit_arithmetic_has_training_data_and_a_clear_error_when_not():
    from rapid.tasks.arithmetic import make_arithmetic_task

    task = make_arithmetic_task(difficulty=1)          # 100 problems: the default split must leave training rows
    assert len(task.train) == 80 and len(task.eval) == 20
    assert not {r["prompt"] for r in task.train} & {r["prompt"] for r in task.eval}
    with pytest.raises(ValueError, match="n_eval"):
        make_arithmetic_task(difficulty=1, n_eval=100)


def test_arithmetic_rewards_accept_a_chat_answer_and_keep_the_strict_form():
    from rapid.tasks.arithmetic import arithmetic_exact_reward, arithmetic_reward, make_arithmetic_task

    chatty = ["7 + 7 = 14", "The answer is 14.", "so \\boxed{14}", "14", "7 + 7 = 15", "no idea"]
    assert arithmetic_reward(None, chatty, ["14"] * 6) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert arithmetic_exact_reward(None, chatty, ["14"] * 6) == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    question = make_arithmetic_task(difficulty=1, prompt="question", seed=3)
    assert question.train[0]["prompt"].startswith("What is ") and question.max_new_tokens >= 24
    strict = make_arithmetic_task(difficulty=1, answer="exact")
    assert strict.reward_fn(None, ["7 + 7 = 14"], answer=["14"]) == [0.0]
    with pytest.raises(ValueError, match="prompt"):
        make_arithmetic_task(prompt="poem")


def test_countdown_rewards_accept_a_chat_answer_and_keep_the_strict_form():
    from rapid.tasks.countdown import countdown_exact_reward

    chatty = ["We can do 4 \\times 6 - 14 = 10.", "<answer>4 * 6 - 14</answer>", "\\boxed{4 \\cdot 6 - 14}",
              "4 + 6 = 10", "4 * 6 = 24"]
    numbers, target = [[4, 6, 14]] * 5, [10] * 5
    assert countdown_reward(None, chatty, numbers, target) == [1.0, 1.0, 1.0, 1.0, 0.0]   # a subset may be used
    assert countdown_exact_reward(None, chatty, numbers, target)[0] == 0.0
