"""One training run after its inputs are checked: build it, loop over rollouts, finish (``rapid.train``'s steps 2-4).

``Training(...)`` builds everything per rank — seed, model (LoRA), policy (DDP / FSDP2), engine (in-process or an
engine process for overlap), profiler, metrics sink, the session (resumed from a checkpoint) — registering each
resource's release on the caller's ``ExitStack`` in reverse order of need. ``loop()`` runs the rollouts:

    rollout source (sequential: wake → sync weights → generate → sleep → rewards [→ recompute log μ];
                    overlapped: the engine process generates rollout r+1 while rollout r trains)
    → ``update`` (H optimizer steps, ``_on_step`` after each) → metrics → eval / checkpoint

then the final evaluation and checkpoint; ``finish()`` saves the final model and returns the ``TrainResult``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import data
from .adaptive import AdaptiveH
from ..config import RapidConfig
from ..distributed import Dist, main_logger
from ..engines import make_engine
from ..engines.hf import copy_weights
from ..output_dir import save_final_model
from ..engines.process.launch import start_engine_process
from ..loss.seeds import completion_log_seed, seed_everything
from ..observe.loggers import CompletionLog
from ..observe.profiling import close_profiler
from .metrics import MetricsSink, SignalWatch, StopFlag, evaluated_at, make_profiler, progress_bar, quietly
from ..models import apply_peft, load_model, training_device
from .overlap import Pipeline
from .policy import Policy
from .rollout import (collect_rollout, completion_rows, eval_metrics, eval_records, plan_rollout, rollout_metrics,
                      rollout_sampling)
from .session import Pending, Request, Session, engine_copy, share
from .update import recompute_behavior, update

logger = logging.getLogger(__name__)
log = main_logger(__name__)                # rank 0 only under torchrun


@dataclass
class TrainResult:
    model: torch.nn.Module                              # the trained policy: fp32 master weights
    tokenizer: object
    history: list[dict] = field(default_factory=list)   # one metrics dict per rollout (and eval points)
    output_dir: str | None = None
    interrupted: bool = False                           # stopped by SIGINT/SIGTERM (after saving a checkpoint)
    profile_summary: str | None = None                  # per-phase time / utilisation table of the run


@dataclass
class Inputs:
    """What ``rapid.train``'s checks produced: the model (an instance or a path), tokenizer, rendered prompts."""

    model: object
    tokenizer: object
    rows: list[dict]
    texts: list[str]
    reward_fn: object
    eval_rows: list[dict] | None
    eval_texts: list[str] | None
    eval_fn: object
    out_dir: Path | None


class Training:
    """A run's state and its resources; see the module docstring for the order of events."""

    def __init__(self, cfg: RapidConfig, inputs: Inputs, dist: Dist, last: Path | None, peft_config,
                 cleanup: contextlib.ExitStack) -> None:
        self.cfg, self.inputs, self.dist = cfg, inputs, dist
        out_dir = inputs.out_dir
        self.root = out_dir / "checkpoints" if out_dir else None
        seed_everything(cfg.seed)                      # before LoRA init: two runs with one seed are identical
        device = dist.device if dist.active else training_device()
        model = load_model(inputs.model, cfg, device)
        if peft_config is not None:
            model = apply_peft(model, peft_config)
        self.sharded = dist.active and cfg.parallel == "fsdp"
        self.model = model
        self.engine_model = engine_copy(model) if self.sharded else model   # HF engine under FSDP2: a full copy
        self.policy = Policy(model, cfg, device, total_steps=cfg.num_rollouts * cfg.steps_per_rollout, dist=dist)
        main = dist.is_main
        # before dist.close, which the caller registered first
        cleanup.callback(quietly, self.policy.release, "releasing the data-parallel wrapper")
        workdir = out_dir / f"engine-rank{dist.rank}" if out_dir is not None and dist.active else out_dir
        if cfg.overlap:
            self.engine = start_engine_process(cfg, self.engine_model, inputs.tokenizer, workdir,
                                               self.policy.compute_dtype, device)
        else:
            self.engine = make_engine(cfg, self.engine_model, inputs.tokenizer, workdir,
                                      dtype=self.policy.compute_dtype)
        cleanup.callback(quietly, self.engine.close, "closing the engine")   # a leaked vLLM engine breaks the next
        self.profiler = make_profiler(device, out_dir if main else None, self.policy.num_params,
                                      self.policy.compute_dtype)
        self.profile_summary: str | None = None
        cleanup.callback(quietly, self._close_profiler, "writing the profile")
        self.controller = AdaptiveH(cfg) if cfg.adaptive_h else None
        self.completions = CompletionLog(str(out_dir) if out_dir and cfg.log_completions and main else None)
        self.run = Session(cfg, dist, self.policy, self.controller, data.PromptSampler(inputs.rows, cfg.seed))
        if cfg.resume and last is None:
            log.warning("resume=True but no intact checkpoint under %s: starting fresh", self.root)
        if last is not None:
            self.run.load(last)
        self.signal_watch = SignalWatch(log, self.run.history)
        self.sink = MetricsSink(out_dir if main else None, cfg, self.run.history, tensorboard=cfg.tensorboard and main,
                                wandb=cfg.wandb and main, resume_rollout=self.run.rollout if cfg.resume else None)
        cleanup.callback(quietly, self.sink.close, "closing the metrics log")
        self.stop: StopFlag | None = None              # SIGINT / SIGTERM while the loop runs
        self.pipeline = (Pipeline(self.engine, model, inputs.reward_fn, cfg, self.profiler, self._stopping)
                         if cfg.overlap else None)
        if self.pipeline is not None:
            cleanup.callback(self.pipeline.close)
        self.pending: Pending | None = None
        self.interrupted = False

    # ---- step 3: the loop -------------------------------------------------------------------------------------------
    def loop(self) -> None:
        cfg, run = self.cfg, self.run
        if run.rollout == 0 and run.pending is None and self._evaluates:
            self.sink.log({"rollout": 0, "time/train_s": 0.0, **self.evaluate()})
        bar = progress_bar(cfg, initial=run.rollout, enabled=self.dist.is_main, initial_seconds=run.train_seconds)
        with StopFlag() as self.stop:
            while run.rollout < cfg.num_rollouts and not self.stop.requested:
                if cfg.max_train_seconds is not None and run.train_seconds >= cfg.max_train_seconds:
                    break
                metrics = self._train_one_rollout()
                if metrics is None:                 # interrupted inside the rollout (or while scoring it)
                    break
                self.sink.log(metrics)
                bar.advance(metrics["timing_s/step"], rollout=run.rollout, reward=f"{metrics['reward/mean']:.3f}",
                            tok_s=f"{metrics.get('perf/throughput', 0.0):.0f}")
                self.dist.barrier(f"rollout {run.rollout}")        # a crashed or hung rank is named here
                if cfg.save_every and run.rollout % cfg.save_every == 0 and not self.stop.requested:
                    self.save()
                if self.controller is not None and self.controller.exhausted:
                    break                                   # the controller's step budget is spent
            self.interrupted = self.stop.requested
            bar.close()
            if not self.interrupted and self._evaluates and not evaluated_at(run.history, run.rollout):
                self.sink.log({"rollout": run.rollout, "time/train_s": run.train_seconds, "final": True,
                               **self.evaluate()})
            self.save()

    def _train_one_rollout(self) -> dict | None:
        """Generate (or take) one rollout and take its H steps; its metrics, or None when interrupted."""
        cfg, run, profiler = self.cfg, self.run, self.profiler
        profiler.start_rollout()
        t_start = time.perf_counter()
        if run.pending is None:             # a new rollout (else: the rest of an interrupted one)
            run.pending = self._next_rollout()
            if run.pending is None:         # an interrupt cut its scoring short: dropped, regenerated later
                return None
        self.pending = pending = run.pending
        with profiler.phase("update_actor"):
            _, tokens = update(self.policy, pending.buffer, pending.plan, start=pending.next_step,
                               on_step=self._on_step)
        pending.tokens += tokens
        profiler.add_tokens("update_actor", tokens)
        step_s = time.perf_counter() - t_start
        run.train_seconds += step_s
        if pending.next_step < pending.h:                 # interrupted inside the rollout
            return None
        run.pending = None
        run.rollout += 1
        buffer, info = pending.buffer, pending.info
        if cfg.log_completions:
            self.completions.write(completion_rows(buffer, info, cfg.log_completions,
                                                   completion_log_seed(cfg.seed, run.rollout)), run.rollout)
        metrics = profiler.end_rollout()
        metrics.update(rollout_metrics(info, pending.step_stats))
        metrics = self.dist.reduce_metrics(metrics)            # timings: slowest rank; diagnostics: mean
        metrics.update(run.rollout_totals(buffer))             # rewards and lengths of the whole rollout
        metrics.update({"rollout": run.rollout, "global_step": run.global_step, "time/train_s": run.train_seconds,
                        "perf/samples_per_s": metrics.pop("perf/samples") / step_s})
        no_signal = metrics["reward/std"] == 0 or all(map(buffer.zero_variance, range(buffer.num_groups)))
        self.signal_watch.update(no_signal, buffer.num_groups, metrics["reward/mean"])
        if self.controller is not None:
            self.controller.update(metrics)
            metrics.update(self.controller.state())
        if cfg.eval_every and run.rollout % cfg.eval_every == 0 and run.rollout < cfg.num_rollouts:
            metrics.update(self.evaluate())
        return metrics

    def _on_step(self, j: int, stats: dict[str, float]) -> bool:
        """After optimizer step ``j`` of the rollout in training: record it; False stops the rollout (interrupt)."""
        run, pending = self.run, self.pending
        stats["rapid/staleness"] = float(run.global_step - pending.weights_step)
        pending.step_stats.append(stats)
        pending.next_step = j + 1
        run.global_step += 1
        if self.controller is not None:
            self.controller.observe_step(stats)
        stopping = bool(self.dist.all_reduce(float(self.stop.requested), "max"))   # every rank stops together
        if stopping and j + 1 < pending.h:
            log.warning("interrupt: saving the rollout with %d of %d steps left", pending.h - j - 1, pending.h)
            self.stop.requested = True
            return False
        return True

    # ---- the rollout source: sequential, or the overlapped pipeline --------------------------------------------
    def _next_rollout(self) -> Pending | None:
        run, pipeline = self.run, self.pipeline
        if pipeline is None:                # sequential: wake → sync → generate → sleep → rewards, now
            req = self._request(run.rollout)
            buffer, info = collect_rollout(self.engine, self.model, req.rows, req.texts, self.inputs.reward_fn,
                                           self.cfg, req.sampling, self.profiler, self._stopping)
            if self.cfg.behavior_source == "recompute":
                with self.profiler.phase("old_log_prob"):
                    recompute_behavior(self.policy, buffer)
            return run.accept(Pending.of(req, buffer, info, weights_step=run.global_step))
        if run.ready is None and not pipeline.busy:
            pipeline.submit(self._request(run.rollout), run.global_step)
        pending = run.accept(run.ready if run.ready is not None else pipeline.take())
        run.ready = None
        if pending is not None and run.rollout + 1 < self.cfg.num_rollouts:   # the next, from pre-update weights
            pipeline.submit(self._request(run.rollout + 1), run.global_step)
        return pending

    def _request(self, index: int) -> Request:
        """Rollout ``index``'s prompts (this rank's share), sampling and mini-batches; rank 0 decides H."""
        cfg, run, dist, inputs = self.cfg, self.run, self.dist, self.inputs
        h = dist.broadcast_object(self.controller.next_h() if self.controller is not None else cfg.steps_per_rollout)
        first_key = run.sampler.consumed
        idx = run.sampler.take_indices(h * cfg.prompts_per_step)
        groups, plan = plan_rollout(len(idx), h, run.minibatch_seed(index), dist.rank, dist.world_size)
        return Request(rows=[inputs.rows[idx[g]] for g in groups], texts=[inputs.texts[idx[g]] for g in groups],
                       sampling=rollout_sampling(cfg, index, first_key, groups=groups), h=h, groups=groups,
                       plan=plan, num_groups=len(idx), first_key=first_key)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def _settle(self) -> None:
        """Overlap: land the rollout in flight (it becomes the next one to train on) before the engine is used for
        something else or the run is saved: a checkpoint then holds it, and resume is exact."""
        if self.pipeline is not None and self.pipeline.busy:
            self.run.ready = self.run.accept(self.pipeline.take())

    # ---- evaluation and saving ----------------------------------------------------------------------------------
    @property
    def _evaluates(self) -> bool:
        return self.inputs.eval_rows is not None or self.inputs.eval_fn is not None

    def evaluate(self) -> dict[str, float]:
        inputs, dist = self.inputs, self.dist
        metrics: dict[str, float] = {}
        self._settle()
        with self.profiler.phase("eval"):
            if inputs.eval_fn is not None:
                metrics.update({k if k.startswith("eval/") else f"eval/{k}": float(v)
                                for k, v in inputs.eval_fn(self.model, inputs.tokenizer).items()})
            if inputs.eval_rows is not None:
                samples: list[dict] | None = [] if self.completions.output_dir else None
                records = eval_records(self.engine, self.model, share(inputs.eval_rows, dist),
                                       share(inputs.eval_texts, dist), inputs.reward_fn, self.cfg, samples)
                metrics.update(eval_metrics(self.run.gather_records(records), self.cfg.eval_samples))
                self.completions.write(samples or [], self.run.rollout, eval_=True)
        return metrics

    def save(self) -> None:
        if self.root is not None:
            self._settle()
            with self.profiler.phase("save"):
                self.run.save(self.root)

    # ---- step 4: finish -------------------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """The final model (saved under output_dir/model unless interrupted) and the profile; the result."""
        run, out_dir = self.run, self.inputs.out_dir
        model = self.model
        if self.sharded:            # FSDP2 shards die with the process group: the full (LoRA: merged) weights
            copy_weights(model, self.engine_model)
        if out_dir is not None and not self.interrupted:
            save_final_model(self.policy, self.inputs.tokenizer, out_dir,
                             full=self.engine_model if self.sharded else None)
        if self.sharded:
            model = self.engine_model.float().train()
        self._close_profiler()
        return TrainResult(model=model, tokenizer=self.inputs.tokenizer, history=run.history,
                           output_dir=str(out_dir) if out_dir else None, interrupted=self.interrupted,
                           profile_summary=self.profile_summary)

    def _close_profiler(self) -> None:
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            self.profile_summary = close_profiler(profiler)
