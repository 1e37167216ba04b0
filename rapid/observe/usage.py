"""The profiler's background sampler: GPU utilisation and memory through NVML on CUDA, this process's CPU
utilisation and resident memory otherwise (``/proc/self/statm`` + ``os.times``, else psutil), each sample tagged
with the phase running at that moment."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .profiling import Profiler

logger = logging.getLogger(__name__)

_GIB = 1024 ** 3


class UsageSampler(threading.Thread):
    """Daemon thread: one utilisation/memory sample every ``interval`` seconds, tagged with the running phase."""

    def __init__(self, profiler: Profiler, interval: float, max_samples: int = 100_000) -> None:
        super().__init__(name="rapid-profiler-sampler", daemon=True)
        self.profiler, self.interval, self.max_samples = profiler, interval, max_samples
        self.t: list[float] = []
        self.phase: list[str | None] = []
        self.util: list[float] = []
        self.mem_gb: list[float] = []
        self.busy_s = 0.0
        self._stop_event = threading.Event()
        self._fd: int | None = None
        self._read = self._init_source(profiler.device)

    def _init_source(self, device: torch.device):
        if device.type == "cuda":
            try:
                import pynvml  # noqa: PLC0415 (optional: nvidia-ml-py)

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(device))
            except ImportError:
                logger.warning("pynvml (nvidia-ml-py) not installed: sampling CPU utilisation instead")
            except Exception as err:  # noqa: BLE001 - pynvml.NVMLError derives from Exception only
                logger.warning("NVML initialisation failed (%s): sampling CPU utilisation instead", err)
            else:
                self.source = "nvml"

                def read_nvml() -> tuple[float, float]:
                    util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / _GIB
                return read_nvml
        ncpu = os.cpu_count() or 1
        self.source = "proc"
        try:   # Linux: os.times() + /proc/self/statm cost ~6 µs a sample; psutil ~170 µs
            fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            self._fd = fd
            page = os.sysconf("SC_PAGE_SIZE")
            last = [time.perf_counter(), sum(os.times()[:2])]

            def read_proc() -> tuple[float, float]:
                now, cpu = time.perf_counter(), sum(os.times()[:2])   # user + system, all threads
                util = 100.0 * (cpu - last[1]) / max(now - last[0], 1e-9) / ncpu
                last[0], last[1] = now, cpu
                return util, int(os.pread(fd, 64, 0).split()[1]) * page / _GIB
            return read_proc
        import psutil  # noqa: PLC0415

        proc = psutil.Process()
        proc.cpu_percent(None)                  # primes the counter; the first call always returns 0
        self.source = "psutil"

        def read_psutil() -> tuple[float, float]:
            return proc.cpu_percent(None) / ncpu, proc.memory_info().rss / _GIB
        return read_psutil

    def run(self) -> None:
        clock, t0 = time.perf_counter, self.profiler.t0
        while not self._stop_event.wait(self.interval):
            start = clock()
            phase = self.profiler.current_phase
            util, mem = self._read()
            self.t.append(start - t0)
            self.phase.append(phase)
            self.util.append(util)
            self.mem_gb.append(mem)
            if len(self.t) >= self.max_samples:   # long runs: halve the resolution instead of growing forever
                for series in (self.t, self.phase, self.util, self.mem_gb):
                    del series[1::2]
                self.interval *= 2
            self.busy_s += clock() - start

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5.0)
        if self._fd is not None and not self.is_alive():
            os.close(self._fd)
            self._fd = None


def _physical_index(device: torch.device) -> int:
    """NVML numbers GPUs physically; map the CUDA ordinal through CUDA_VISIBLE_DEVICES when it is a list."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index
