"""The generation process behind ``rapid.engines.process.client.ProcessEngine``.

Started as ``python -m rapid.engines.process.worker --fd FD --parent-pid PID --threads T`` (never through
``multiprocessing``'s spawn, which would re-import the user's ``__main__``). It talks to its parent over one end of
a ``socket.socketpair`` (FD, inherited through ``pass_fds``): a private channel no other process can connect to, so
it needs no address and no authkey. Messages are ``pickle`` bytes (``Connection.send_bytes``): plain pickle, never
``ForkingPickler``, whose torch reductions would try to move tensors through shared-memory handles.

Protocol (parent → child, one reply each except ``fault``):

    init dict                         → ("ready", info) | ("error", None, traceback)
    ("load", version)                 → ("loaded", version, seconds) | ("error", None, traceback)
    ("generate", handle, prompts, n, sampling) → ("result", handle, Rollout) | ("error", handle, traceback)
    ("fault", kind)                   → nothing; arms a test fault for the next generate ("exit" | "raise")
    ("close",)                        → the child closes its engine and exits 0

The child's model is built from the trainer model's config in the engine dtype. On CPU with shared memory each of
its parameters is a view of one buffer (``shared_weights.SharedBuffer``, created by the parent) that the parent writes
(``ProcessEngine.sync_weights``), so for HF a weight update costs the parent's one copy and nothing here; vLLM
copies the views into its own parameters on ``load``. On a GPU (its own: ``CUDA_VISIBLE_DEVICES`` names it alone)
the parameters live on ``cuda:0`` and ``load`` fills them from the views or, with ``transport="broadcast"``, from
the weight group (``weight_channel``: joined right after ``init``, version 0 received before ``ready``).

The child exits by itself when the parent dies: EOF on the channel, or (when a fork of the parent still holds the
channel open, or the child is busy generating) a watcher thread that sees its parent pid change. SIGINT is ignored:
a Ctrl-C in the terminal reaches the whole process group, and the parent decides when the engine stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

logger = logging.getLogger("rapid.engines.worker")

PARENT_POLL_S = 0.5
DEDICATED_GPU_UTILIZATION = 0.85    # vLLM's share when the engine has a GPU of its own (the default 0.35 colocates)


def send(conn: Connection, message: object) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection) -> object:
    return pickle.loads(conn.recv_bytes())


def _watch_parent(parent_pid: int) -> None:
    """Exit the moment the parent is gone (re-parented: getppid changes), even while the main thread generates."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="rapid-engine-parent-watch", daemon=True).start()


class _Worker:
    """Holds the child model (views of the shared weights) and the inner engine; serves the parent's requests."""

    def __init__(self, init: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from .. import make_engine

        torch.set_num_threads(init["threads"])
        self.dtype = dtype = getattr(torch, init["dtype"])
        device = torch.device(init["device"])
        self.layout = init["layout"]
        start = time.perf_counter()
        self.channel = None
        if init["channel"] is not None:          # joined first: the parent blocks in the join until we do
            from .weight_channel import WeightChannel

            spec = init["channel"]
            self.channel = WeightChannel(spec["host"], spec["port"], 1, spec["device"], spec["timeout_s"])
            self.channel.join()
        model = AutoModelForCausalLM.from_config(init["model_config"], dtype=dtype,
                                                 attn_implementation=init["attn_implementation"])
        if init["generation_config"] is not None:
            model.generation_config = init["generation_config"]
        self.params = params = dict(model.named_parameters())   # tied weights appear once, as in hf_weights
        layout = {name: (offset, tuple(shape)) for name, offset, shape in self.layout}
        missing, extra = sorted(set(params) - set(layout)), sorted(set(layout) - set(params))
        if missing or extra:
            raise ValueError(f"the engine model's parameters do not match the trainer's weights: missing "
                             f"{missing[:5]}, unexpected {extra[:5]}")
        for name, (_, shape) in layout.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{name}: engine shape {tuple(params[name].shape)} != trainer shape {shape}")
        # shared memory: a CPU engine's parameters *are* views of the buffer (the parent's writes are seen here); a
        # GPU engine copies the views in on every load
        self.views: dict[str, torch.Tensor] = {}
        if init["shm_path"] is not None:
            flat = torch.from_file(init["shm_path"], shared=True, size=init["numel"], dtype=dtype)  # (numel,)
            self.views = {name: flat[off:off + math.prod(shape)].view(shape) for name, (off, shape) in layout.items()}
        self.zero_copy = device.type == "cpu" and bool(self.views)
        if self.zero_copy:
            for name, view in self.views.items():
                params[name].data = view
        else:
            model.to(device)
            self._receive_weights()                       # version 0
        model.requires_grad_(False)
        model.eval()
        self.model = model
        config = init["config"]
        changes = {"engine": init["kind"]}
        if any(f.name == "overlap" for f in dataclasses.fields(config)):
            changes["overlap"] = False          # this process *is* the overlapped engine: never nest another
        if device.type == "cuda" and _is_default(config, "gpu_memory_utilization"):
            changes["gpu_memory_utilization"] = DEDICATED_GPU_UTILIZATION    # the whole GPU is the engine's
        config = dataclasses.replace(config, **changes)
        self.engine = make_engine(config, model, init["tokenizer"], init["workdir"])
        self.version = init["version"]
        self.fault: str | None = None
        self.startup_s = time.perf_counter() - start

    def handle(self, conn: Connection, message: tuple) -> bool:
        """Serve one request; False when the parent asked to close."""
        op = message[0]
        if op == "close":
            return False
        if op == "fault":
            self.fault = message[1]
            return True
        handle = message[1] if op == "generate" else None
        try:
            if op == "load":
                start = time.perf_counter()
                if not self.zero_copy:
                    self._receive_weights()
                self.engine.sync_weights(self.model)      # HF: the parameters hold them; vLLM: load_weights
                self.version = message[1]
                send(conn, ("loaded", self.version, time.perf_counter() - start))
            elif op == "generate":
                send(conn, ("result", handle, self._generate(*message[2:])))
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception:   # noqa: BLE001 - every failure goes back to the parent as text, the child keeps serving
            send(conn, ("error", handle, traceback.format_exc()))
        return True

    def _receive_weights(self) -> None:
        """Copy the parent's weights into the parameters: from the broadcast, or from the shared views."""
        import torch

        if self.channel is not None:
            weights = self.channel.receive(self.layout, self.dtype, lambda: None)   # parent death: _watch_parent
        else:
            weights = self.views.items()
        with torch.no_grad():
            for name, tensor in weights:
                self.params[name].copy_(tensor)

    def _generate(self, prompts, n, sampling):
        fault, self.fault = self.fault, None
        if fault == "exit":
            os._exit(3)
        if fault == "raise":
            raise RuntimeError("fault injected by the test hook")
        cpu0 = sum(os.times()[:2])
        start = time.monotonic()
        rollout = self.engine.generate(prompts, n, sampling)
        end = time.monotonic()
        rollout.stats.update({"weights_version": self.version, "gen_start": start, "gen_end": end,
                              "engine/cpu_s": sum(os.times()[:2]) - cpu0})
        return rollout

    def close(self) -> None:
        self.engine.close()
        if self.channel is not None:
            self.channel.close()


def _is_default(config, name: str) -> bool:
    fields = {f.name: f for f in dataclasses.fields(config)}
    return name in fields and getattr(config, name) == fields[name].default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="this end of the socketpair")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s engine-worker %(levelname)s %(name)s: %(message)s")
    _watch_parent(args.parent_pid)
    conn = Connection(args.fd)
    try:
        init = recv(conn)
    except EOFError:
        return 0
    try:
        worker = _Worker(init)
    except Exception:   # noqa: BLE001 - reported to the parent, which raises EngineError with this text
        send(conn, ("error", None, traceback.format_exc()))
        return 1
    logger.info("engine %s ready in %.2f s (pid %d, %d threads)", init["kind"], worker.startup_s, os.getpid(),
                args.threads)
    send(conn, ("ready", {"pid": os.getpid(), "startup_s": worker.startup_s}))
    try:
        while True:
            try:
                message = recv(conn)
            except EOFError:              # the parent closed the channel or died
                break
            if not worker.handle(conn, message):
                break
    except (BrokenPipeError, ConnectionResetError):   # parent gone while we replied
        pass
    finally:
        start = time.perf_counter()
        worker.close()
        logger.info("engine closed in %.2f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter teardown: third-party atexit hooks and non-daemon threads (vLLM's) can take seconds there,
    # and the engine was already closed above.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
