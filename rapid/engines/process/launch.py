"""Where and how the engine's child process runs: its cores and GPU (``start_engine_process``, ``engine_gpu``),
the child's ``CUDA_VISIBLE_DEVICES`` entry, and its shutdown (a ``weakref`` finalizer of ``ProcessEngine``)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from ...config import RapidConfig
from ...distributed import main_logger
from .shared_weights import SharedBuffer
from .weight_channel import WeightChannel

log = main_logger(__name__)

_LOG_TAIL_LINES = 40
_CLOSE_GRACE_S = 15.0       # vLLM's own shutdown takes ~3 s on the 2-core box


def start_engine_process(cfg: RapidConfig, model, tokenizer, workdir, dtype, device):
    """overlap=True: the engine in its own process. CPU: with ``engine_threads`` cores, the trainer keeps the rest.
    CUDA: on a GPU of its own — the trainer's GPU index + the number of trainer processes on this node (one
    engine per rank; a single process trains on GPU i and generates on GPU i + 1) — weights broadcast over NCCL."""
    from .. import resolve_engine_name
    from .client import ProcessEngine

    kind = resolve_engine_name(cfg.engine, device)
    cores = available_cpus()
    threads = cfg.engine_threads or max(1, cores // 2)
    if device.type == "cuda":
        engine_device = engine_gpu(device)
        log.info("overlap: trainer on %s, engine (%s) on cuda:%d, weights broadcast over NCCL", device, kind,
                 engine_device.index)
        return ProcessEngine(model, tokenizer, cfg, kind=kind, threads=threads, workdir=workdir, dtype=dtype,
                             device=engine_device)
    torch.set_num_threads(max(1, cores - threads))
    log.info("overlap: engine process with %d thread(s), trainer with %d", threads, torch.get_num_threads())
    return ProcessEngine(model, tokenizer, cfg, kind=kind, threads=threads, workdir=workdir, dtype=dtype)


def engine_gpu(device: torch.device) -> torch.device:
    """The GPU an overlapped engine gets: the trainer's index + LOCAL_WORLD_SIZE (1 without torchrun); refused
    when the node has too few GPUs — with one GPU per trainer, sleep/wake colocation cannot overlap."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    index = device.index if device.index is not None else (torch.cuda.current_device() if count else 0)
    if index + local >= count:
        raise ValueError(f"overlap=True on CUDA puts each engine on a GPU of its own (GPU {index} trains, GPU "
                         f"{index + local} would generate), but this node has {count} GPU(s) for {local} trainer "
                         f"process(es); with one GPU per trainer, sleep/wake colocation cannot overlap. Set "
                         "overlap=False, or give the node 2 GPUs per trainer process.")
    return torch.device("cuda", index + local)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask: taskset / cgroup cpusets), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _physical_gpu(device: torch.device) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of ``device`` (this process's numbering), for a child that sees only it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ValueError(f"CUDA device {index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[index]


def _release(shm: SharedBuffer | None, channel: WeightChannel | None) -> None:
    if shm is not None:
        shm.close()
    if channel is not None:
        channel.close()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _shutdown(proc: subprocess.Popen, conn: Connection, shm: SharedBuffer | None, channel: WeightChannel | None,
              tmpdir: str | None, pending: dict) -> None:
    """Stop and reap the child, then free the channel, the shared buffer and the temporary directory.

    A weakref finalizer: runs on ``close()``, on garbage collection, or at interpreter exit, whichever is first.
    With generations in flight nobody will collect, the child is terminated at once instead of asked to close.
    """
    if proc.poll() is None and pending:
        proc.terminate()
    if proc.poll() is None:
        try:
            conn.send_bytes(pickle.dumps(("close",)))
        except OSError:
            pass
        try:
            proc.wait(timeout=_CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=_CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    conn.close()
    _release(shm, channel)
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
