"""``rapid.train``: generate one large batch, then H small off-policy policy-gradient steps on it (RAPID).

``train`` is four steps: ``check_inputs`` (everything cheap, before anything is loaded) and ``join`` (the process
group, the checkpoint to resume) → build (``rapid.training.loop.Training``: seed → model/policy/engine → resume) → loop
over rollouts [adaptive H → ``collect_rollout`` (wake → sync weights → generate → sleep → rewards) → (recompute
log μ) → ``update`` (H optimizer steps) → ``rollout_metrics`` → eval / checkpoint] → finish (final checkpoint,
final model).

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
   in ``rapid.loss.sampling`` for both sides), not a second forward pass, unless ``behavior_logprobs="recompute"``
   (the default for grpo); the gap is logged as ``rapid/engine_logprob_diff``.
6. Failed rewards (``None``) count as 0.0 and are reported as ``reward/errors``.
7. ``algo="grpg"`` (on-policy, w ≡ 1) and ``algo="grpo"`` (PPO-clip, std-normalised advantages, token-mean loss)
   run in this same loop, for fair comparisons.
8. Parameters and optimizer state are fp32 masters; forward/backward run in ``dtype`` (rapid.training.policy).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from . import checkpoint, data
from .config import RapidConfig
from .distributed import Dist, init_distributed, main_logger
from .models import chat_template_decision, check_output_dir, context_length, load_tokenizer, resolve_model_arg
from .parallel import check_parallel
from .output_dir import check_resume_config, holds_a_run
from .training.loop import Inputs, Training, TrainResult
from .training.metrics import quietly
from .training.rollout import evaluate_rewards

logger = logging.getLogger(__name__)
log = main_logger(__name__)                # rank 0 only under torchrun

__all__ = ["TrainResult", "evaluate_rewards", "train"]


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
    inputs = check_inputs(model, dataset, reward_fn, cfg, tokenizer, eval_dataset, eval_fn)      # 1. check
    with contextlib.ExitStack() as cleanup:
        # the group's release comes first, so it runs last, also when a check in join() fails (config mismatch)
        dist = init_distributed(cfg.dist_timeout_s)
        cleanup.callback(quietly, dist.close, "closing the process group")
        last = join(cfg, inputs, dist)
        training = Training(cfg, inputs, dist, last, peft_config, cleanup)                          # 2. build
        training.loop()                                                                             # 3. loop
        return training.finish()                                                                    # 4. finish


def check_inputs(model, dataset, reward_fn, cfg: RapidConfig, tokenizer, eval_dataset, eval_fn) -> Inputs:
    """Every cheap check before anything expensive: paths, rows and their columns, the chat template decision,
    prompt lengths against the context, an output_dir that already holds a run. ValueErrors name the argument."""
    if cfg.output_dir:
        check_output_dir(cfg.output_dir)
    if isinstance(model, str):                    # a built-in name, a local directory (checked at once) or a hub id
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
    return Inputs(model=model, tokenizer=tokenizer, rows=rows, texts=texts, reward_fn=reward_fn, eval_rows=eval_rows,
                  eval_texts=eval_texts, eval_fn=eval_fn, out_dir=out_dir)


def join(cfg: RapidConfig, inputs: Inputs, dist: Dist) -> Path | None:
    """The checks that need the process group (``init_distributed``): batch sizes per rank, one config on every
    rank, the checkpoint to resume and its config, a reward that runs. Returns the checkpoint to resume."""
    if cfg.prompts_per_step % dist.world_size:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be divisible by the world size "
                         f"({dist.world_size}): batch sizes are global and each rank trains on an equal share")
    dist.check_same_config(cfg.to_dict())
    root = inputs.out_dir / "checkpoints" if inputs.out_dir else None
    last = checkpoint.latest_intact_checkpoint(root, dist) if cfg.resume and root else None
    if last is not None:
        check_resume_config(cfg, last)
    data.probe_reward(inputs.reward_fn, inputs.rows, cfg.reward_timeout_s)
    log.info("rapid config: %s", json.dumps(cfg.to_dict(), default=str))
    return last
