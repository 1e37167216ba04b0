"""``rapid.train``: generate one large batch, then H small off-policy policy-gradient steps on it (RAPID).

Reads top to bottom: validate → seed → model / policy / engine → (resume) → loop over rollouts
[adaptive H → ``collect_rollout`` (wake → sync weights → generate → sleep → rewards) → (recompute log μ)
→ ``update`` (H optimizer steps) → ``rollout_metrics`` → eval / checkpoint] → final checkpoint.

Departures from textbook GRPO (Shao et al. 2024), each deliberate:

1. One generation call per rollout, then H = prompts_per_rollout / prompts_per_step optimizer steps on disjoint
   mini-batches of whole groups (not several epochs over the same batch): steps after the first are off-policy.
2. The off-policy correction is a *sequence-level* importance weight w = π(y)/μ(y), truncated at η (min(w, η),
   computed in log space), not PPO's per-token clipped ratio; there is no KL penalty and no reference model.
3. The baseline is importance-weighted and leave-one-out within the group, b_s = Σ_{j≠s} w̄_j R_j / (K−1);
   advantages are not divided by the group std (``adv_scale="none"`` default).
4. The loss is the sequence log-prob sum scaled by a constant (``loss_norm``, default max_new_tokens), averaged
   over sequences — no per-token length normalisation (which biases towards long wrong answers).
5. log μ comes from the generation engine (the processed distribution it sampled from, which rapid defines once
   in ``rapid.sampling`` for both sides), not a second forward pass, unless ``behavior_logprobs="recompute"``
   (the default for grpo); the gap is logged as ``rapid/engine_logprob_diff``.
6. Failed rewards (``None``) count as 0.0 and are reported as ``reward/errors``.
7. ``algo="grpg"`` (on-policy, w ≡ 1) and ``algo="grpo"`` (PPO-clip, std-normalised advantages, token-mean loss)
   run in this same loop, for fair comparisons.
8. Parameters and optimizer state are fp32 masters; forward/backward run in ``dtype`` (rapid.policy).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, data
from .adaptive import AdaptiveH
from .config import RapidConfig
from .distributed import check_parallel, init_distributed, main_logger
from .engines import make_engine
from .engines.hf import copy_weights
from .lifecycle import (SignalWatch, check_resume_config, close_profiler, evaluated_at, holds_a_run,
                        quietly, save_final_model, seed_everything, start_engine_process)
from .loggers import CompletionLog
from .metrics import MetricsSink, StopFlag, make_profiler, progress_bar
from .models import (apply_peft, chat_template_decision, check_output_dir, context_length, load_model, load_tokenizer,
                     resolve_model_arg, training_device)
from .policy import Policy
from .rollout import (collect_rollout, completion_rows, eval_metrics, eval_records, evaluate_rewards, plan_rollout,
                      rollout_metrics, rollout_sampling)
from .overlap import Pipeline, Request
from .session import Pending, Session, engine_copy, share
from .update import recompute_behavior, update

logger = logging.getLogger(__name__)
log = main_logger(__name__)                # rank 0 only under torchrun

__all__ = ["TrainResult", "evaluate_rewards", "train"]


@dataclass
class TrainResult:
    model: torch.nn.Module                              # the trained policy: fp32 master weights
    tokenizer: object
    history: list[dict] = field(default_factory=list)   # one metrics dict per rollout (and eval points)
    output_dir: str | None = None
    interrupted: bool = False                           # stopped by SIGINT/SIGTERM (after saving a checkpoint)
    profile_summary: str | None = None                  # per-phase time / utilisation table of the run


def train(model, dataset, reward_fn, config: RapidConfig | None = None, tokenizer=None, peft_config=None,
          eval_dataset=None, eval_fn=None) -> TrainResult:
    """Fine-tune ``model`` with RAPID (or GRPG / GRPO, ``config.algo``) on ``dataset`` scored by ``reward_fn``.

    Args:
        model: an HF model id, a local model directory, ``"tiny"`` (the demo's warm-started tiny model, built and
            cached on first use), or a ``PreTrainedModel`` instance (then pass ``tokenizer``). A local-looking path
            that does not exist fails at once. Its parameters become the fp32 master copy (``config.dtype`` is the
            compute dtype).
        dataset: rows (a list of dicts or a ``datasets.Dataset``) with a ``"prompt"`` — a string, or a list of
            ``{"role", "content"}`` chat messages rendered with the tokenizer's chat template — plus the columns
            ``reward_fn`` needs (e.g. ``"answer"``).
        reward_fn: ``reward_fn(prompts, completions, **columns) -> list[float | None]``, one value per
            completion; ``None``, an exception or a timeout (``config.reward_timeout_s``) scores 0.0 and is
            counted in ``reward/errors``. It receives the rows' own prompts and its columns repeated per sample.
        config: a ``RapidConfig`` (defaults when None); validated before anything is loaded.
        tokenizer: required when ``model`` is an instance without one attached.
        peft_config: a ``peft`` config (e.g. ``LoraConfig``): train adapters only; the engine gets merged weights.
        eval_dataset: rows evaluated greedily before training, every ``config.eval_every`` rollouts and at the
            end (``eval/reward``).
        eval_fn: ``eval_fn(model, tokenizer) -> dict[str, float]``, logged under ``eval/``.

    Returns:
        ``TrainResult`` with the trained model (fp32), the tokenizer, the metrics history (one dict per rollout,
        verl's metric names), the output directory and whether the run was interrupted. With ``output_dir`` set,
        the run writes ``metrics.jsonl``, ``profile.json`` / ``profile_timeline.png``, checkpoints (atomic; resume
        with ``resume=True``) and the final model under ``output_dir/model``.

    SIGINT / SIGTERM finish the current optimizer step, save a checkpoint that holds the rest of the rollout
    (when output_dir is set) and return with ``interrupted=True``; resuming continues exactly where it stopped.
    """
    cfg = config if config is not None else RapidConfig()
    if not isinstance(cfg, RapidConfig):
        raise ValueError(f"config must be a RapidConfig, got {type(cfg).__name__}")

    # ---- validate everything cheap before anything expensive ------------------------------------------------
    if cfg.output_dir:
        check_output_dir(cfg.output_dir)
    if isinstance(model, str):                    # "tiny", a local directory (checked at once) or a hub id
        model, found = resolve_model_arg(model)
        tokenizer = tokenizer if tokenizer is not None else found
    rows = data.as_rows(dataset, "dataset")
    data.check_columns(rows, reward_fn, "dataset")
    eval_rows = data.as_rows(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    if eval_rows is not None:
        data.check_columns(eval_rows, reward_fn, "eval_dataset")
    if eval_fn is not None and not callable(eval_fn):
        raise ValueError("eval_fn must be callable: eval_fn(model, tokenizer) -> dict[str, float]")
    tokenizer = load_tokenizer(model, tokenizer)
    template, why = chat_template_decision(cfg.chat_template, tokenizer, model)
    log.info("chat template for string prompts: %s (%s)", "on" if template else "off", why)
    texts = data.render_prompts(rows, tokenizer, template)
    eval_texts = data.render_prompts(eval_rows, tokenizer, template) if eval_rows is not None else None
    context = context_length(model)
    limit = cfg.max_prompt_tokens or ((context - cfg.max_new_tokens) if context else None)
    if limit is not None and limit < 1:
        raise ValueError(f"max_new_tokens ({cfg.max_new_tokens}) leaves no room for prompts in the context "
                         f"({context})")
    longest = data.check_prompt_lengths(texts, tokenizer, limit, "dataset")
    if eval_texts:
        longest = max(longest, data.check_prompt_lengths(eval_texts, tokenizer, limit, "eval_dataset"))
    if cfg.micro_batch_tokens is not None and longest + cfg.max_new_tokens > cfg.micro_batch_tokens:
        raise ValueError(f"micro_batch_tokens ({cfg.micro_batch_tokens}) is smaller than the longest prompt "
                         f"({longest} tokens) + max_new_tokens ({cfg.max_new_tokens}): one sequence must fit")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if out_dir is not None and not cfg.resume and holds_a_run(out_dir):
        raise ValueError(f"output_dir {out_dir} already holds a run (metrics.jsonl or checkpoints): pass resume=True "
                         "(--resume) to continue it, or choose another output_dir — a new run would mix with it")
    check_parallel(cfg.parallel)

    # ---- the process group (torchrun), then everything per rank --------------------------------------------------
    dist = init_distributed(cfg.dist_timeout_s)
    if cfg.prompts_per_step % dist.world_size:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be divisible by the world size "
                         f"({dist.world_size}): batch sizes are global and each rank trains on an equal share")
    dist.check_same_config(cfg.to_dict())
    root = out_dir / "checkpoints" if out_dir else None
    last = checkpoint.latest_intact_checkpoint(root, dist) if cfg.resume and root else None
    if last is not None:
        check_resume_config(cfg, last)
    data.probe_reward(reward_fn, rows, cfg.reward_timeout_s)
    log.info("rapid config: %s", json.dumps(cfg.to_dict(), default=str))

    # ---- seed, model, policy, engine, profiler ------------------------------------------------------------------
    seed_everything(cfg.seed)                      # before LoRA init: two runs with one seed are identical
    device = dist.device if dist.active else training_device()
    model = load_model(model, cfg, device)
    if peft_config is not None:
        model = apply_peft(model, peft_config)
    sharded = dist.active and cfg.parallel == "fsdp"
    engine_model = engine_copy(model) if sharded else model     # HF engine under FSDP2: its own full copy
    policy = Policy(model, cfg, device, total_steps=cfg.num_rollouts * cfg.steps_per_rollout, dist=dist)
    main = dist.is_main
    summary: list[str | None] = []                # the profiler's table, filled when it closes
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(quietly, dist.close, "closing the process group")
        cleanup.callback(quietly, policy.release, "releasing the data-parallel wrapper")   # runs before dist.close
        workdir = out_dir / f"engine-rank{dist.rank}" if out_dir is not None and dist.active else out_dir
        if cfg.overlap:
            engine = start_engine_process(cfg, engine_model, tokenizer, workdir, policy.compute_dtype, device)
        else:
            engine = make_engine(cfg, engine_model, tokenizer, workdir, dtype=policy.compute_dtype)
        cleanup.callback(quietly, engine.close, "closing the engine")   # a leaked vLLM engine breaks the next
        profiler = make_profiler(device, out_dir if main else None, policy.num_params)
        cleanup.callback(quietly, lambda: summary.append(close_profiler(profiler)), "writing the profile")
        controller = AdaptiveH(cfg) if cfg.adaptive_h else None
        completions = CompletionLog(str(out_dir) if out_dir and cfg.log_completions and main else None)
        run = Session(cfg, dist, policy, controller, data.PromptSampler(rows, cfg.seed))

        # ---- resume ----------------------------------------------------------------------------------------------
        if cfg.resume and last is None:
            log.warning("resume=True but no intact checkpoint under %s: starting fresh", root)
        if last is not None:
            run.load(last)
        signal_watch = SignalWatch(log, run.history)
        sink = MetricsSink(out_dir if main else None, cfg, run.history, tensorboard=cfg.tensorboard and main,
                           wandb=cfg.wandb and main, resume_rollout=run.rollout if cfg.resume else None)
        cleanup.callback(quietly, sink.close, "closing the metrics log")

        pipeline = Pipeline(engine, model, reward_fn, cfg, profiler, lambda: stop.requested) if cfg.overlap else None
        if pipeline is not None:
            cleanup.callback(pipeline.close)

        def settle() -> None:
            """Overlap: land the rollout in flight (it becomes the next one to train on) before the engine is used
            for something else or the run is saved: a checkpoint then holds it, and resume is exact."""
            if pipeline is not None and pipeline.busy:
                run.ready = run.accept(pipeline.take())

        def save() -> None:
            if root is not None:
                settle()
                with profiler.phase("save"):
                    run.save(root)

        def request(index: int) -> Request:
            """Rollout ``index``'s prompts (this rank's share), sampling and mini-batches; rank 0 decides H."""
            h = dist.broadcast_object(controller.next_h() if controller is not None else cfg.steps_per_rollout)
            first_key = run.sampler.consumed
            idx = run.sampler.take_indices(h * cfg.prompts_per_step)
            groups, plan = plan_rollout(len(idx), h, run.minibatch_seed(index), dist.rank, dist.world_size)
            return Request(rows=[rows[idx[g]] for g in groups], texts=[texts[idx[g]] for g in groups],
                           sampling=rollout_sampling(cfg, index, first_key, groups=groups), h=h, groups=groups,
                           plan=plan, num_groups=len(idx), first_key=first_key)

        def next_rollout() -> Pending:
            if pipeline is None:            # sequential: wake → sync → generate → sleep → rewards, now
                req = request(run.rollout)
                buffer, info = collect_rollout(engine, model, req.rows, req.texts, reward_fn, cfg, req.sampling,
                                               profiler, lambda: stop.requested)
                if cfg.behavior_source == "recompute":
                    with profiler.phase("old_log_prob"):
                        recompute_behavior(policy, buffer)
                return run.accept(Pending(buffer=buffer, info=info, h=req.h, groups=req.groups, plan=req.plan,
                                          num_groups=req.num_groups, weights_step=run.global_step,
                                          first_key=req.first_key))
            if run.ready is None and not pipeline.busy:
                pipeline.submit(request(run.rollout), run.global_step)
            pending = run.accept(run.ready if run.ready is not None else pipeline.take())
            run.ready = None
            if pending is not None and run.rollout + 1 < cfg.num_rollouts:   # the next, from the pre-update weights
                pipeline.submit(request(run.rollout + 1), run.global_step)
            return pending

        def evaluate() -> dict[str, float]:
            metrics: dict[str, float] = {}
            settle()
            with profiler.phase("eval"):
                if eval_fn is not None:
                    metrics.update({k if k.startswith("eval/") else f"eval/{k}": float(v)
                                    for k, v in eval_fn(model, tokenizer).items()})
                if eval_rows is not None:
                    samples: list[dict] | None = [] if completions.output_dir else None
                    records = eval_records(engine, model, share(eval_rows, dist), share(eval_texts, dist),
                                           reward_fn, cfg, samples)
                    metrics.update(eval_metrics(run.gather_records(records), cfg.eval_samples))
                    completions.write(samples or [], run.rollout, eval_=True)
            return metrics

        # ---- the loop -------------------------------------------------------------------------------------------
        interrupted = False
        if run.rollout == 0 and run.pending is None and (eval_rows is not None or eval_fn is not None):
            sink.log({"rollout": 0, "time/train_s": 0.0, **evaluate()})
        bar = progress_bar(cfg, initial=run.rollout, enabled=main)
        with StopFlag() as stop:
            while run.rollout < cfg.num_rollouts and not stop.requested:
                if cfg.max_train_seconds is not None and run.train_seconds >= cfg.max_train_seconds:
                    break
                profiler.start_rollout()
                t_start = time.perf_counter()
                if run.pending is None:             # a new rollout (else: the rest of an interrupted one)
                    run.pending = next_rollout()
                    if run.pending is None:         # an interrupt cut its scoring short: dropped, regenerated later
                        break
                pending = run.pending

                def on_step(j: int, stats: dict[str, float]) -> bool:
                    stats["rapid/staleness"] = float(run.global_step - pending.weights_step)
                    pending.step_stats.append(stats)
                    pending.next_step = j + 1
                    run.global_step += 1
                    if controller is not None:
                        controller.observe_step(stats)
                    stopping = bool(dist.all_reduce(float(stop.requested), "max"))   # every rank stops together
                    if stopping and j + 1 < pending.h:
                        log.warning("interrupt: saving the rollout with %d of %d steps left", pending.h - j - 1,
                                    pending.h)
                        stop.requested = True
                        return False
                    return True

                with profiler.phase("update_actor"):
                    _, tokens = update(policy, pending.buffer, pending.plan, start=pending.next_step,
                                       on_step=on_step)
                pending.tokens += tokens
                profiler.add_tokens("update_actor", tokens)
                step_s = time.perf_counter() - t_start
                run.train_seconds += step_s
                if pending.next_step < pending.h:                 # interrupted inside the rollout
                    break
                run.pending = None
                run.rollout += 1
                buffer, info = pending.buffer, pending.info
                if cfg.log_completions:
                    completions.write(completion_rows(buffer, info, cfg.log_completions, cfg.seed + run.rollout),
                                      run.rollout)
                metrics = profiler.end_rollout()
                metrics.update(rollout_metrics(buffer, info, pending.step_stats))
                metrics = dist.reduce_metrics(metrics)            # timings: slowest rank; diagnostics: mean
                metrics.update(run.rollout_totals(buffer))        # rewards and lengths of the whole rollout
                metrics.update({"rollout": run.rollout, "global_step": run.global_step,
                                "time/train_s": run.train_seconds,
                                "perf/samples_per_s": metrics.pop("perf/samples") / step_s})
                signal_watch.update(metrics["reward/std"] == 0 or all(map(buffer.zero_variance,
                                                                          range(buffer.num_groups))),
                                    buffer.num_groups, metrics["reward/mean"])
                if controller is not None:
                    controller.update(metrics)
                    metrics.update(controller.state())
                if cfg.eval_every and run.rollout % cfg.eval_every == 0 and run.rollout < cfg.num_rollouts:
                    metrics.update(evaluate())
                sink.log(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}",
                                tok_s=f"{metrics.get('perf/throughput', 0.0):.0f}")
                dist.barrier(f"rollout {run.rollout}")            # a crashed or hung rank is named here
                if cfg.save_every and run.rollout % cfg.save_every == 0 and not stop.requested:
                    save()
                if controller is not None and controller.exhausted:
                    break                                   # the controller's step budget is spent
            interrupted = stop.requested
            bar.close()
            if not interrupted and (eval_rows is not None or eval_fn is not None) and not evaluated_at(
                    run.history, run.rollout):
                sink.log({"rollout": run.rollout, "time/train_s": run.train_seconds, "final": True, **evaluate()})
            save()
        if sharded:                 # FSDP2 shards die with the process group: the full (LoRA: merged) weights
            copy_weights(model, engine_model)
        if out_dir is not None and not interrupted:
            save_final_model(policy, tokenizer, out_dir, full=engine_model if sharded else None)
        if sharded:
            model = engine_model.float().train()
    return TrainResult(model=model, tokenizer=tokenizer, history=run.history,
                       output_dir=str(out_dir) if out_dir else None, interrupted=interrupted,
                       profile_summary=summary[0] if summary else None)
