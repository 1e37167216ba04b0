"""The training run (DESIGN §3's loop): prompts → rollout → rewards → RolloutBuffer → H updates → weight sync.

``loop.Training`` is the run ``rapid.train`` builds; ``rollout`` collects and scores a rollout, ``overlap`` keeps the
next one generating while this one trains, ``buffer`` holds it as mini-batches, ``update`` runs the H optimizer
steps on ``policy`` (master weights, optimizer, the loss module), ``session`` is the resumable state, ``adaptive``
picks H, ``metrics`` is the run's metric sink and progress bar.
"""
