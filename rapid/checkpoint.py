"""Checkpoints on ``torch.distributed.checkpoint`` (DCP): any world size saves, any world size resumes.

Layout of ``root/rollout-000012/``::

    model_optim/          DCP: trainable model weights + optimizer state; each rank writes its own shards, and a
                          run saved at world size N loads at M (plain, DDP and FSDP2 modules alike)
    trainer_state.pt      rank 0: counters, sampler position, adaptive-H state, ... (anything picklable)
    scheduler.pt          rank 0: the LR scheduler (when one is passed)
    ranks/rank-00001.pt   per rank: RNG states (torch, CUDA, python, numpy) and an optional per-rank state
    config.json, meta.json
    MANIFEST.json         written last: every other file with its size and sha256

Atomic: everything is written into a hidden temporary sibling (``.tmp-rollout-000012-<token>``) and renamed into
place only when complete and listed in the manifest, so a crash leaves earlier checkpoints untouched and never a
half-written one under a final name. ``verify_checkpoint`` says why a checkpoint is not intact;
``latest_intact_checkpoint`` skips (and logs) broken ones. Weights are stored under the HF model's own names (a
wrapping loss module's prefix is dropped), so a checkpoint saved from the wrapped loss module loads into the bare HF
model and back. peft models store only their trainable (adapter) parameters.

Every rank calls ``save_checkpoint`` / ``load_checkpoint`` / ``latest_intact_checkpoint`` (they are collective);
``root`` must be a filesystem every rank sees. A failure on any rank raises on every rank (the failing rank re-raises
its own exception, the others a ``CheckpointError`` naming it); clean-up errors are logged, never raised over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from .distributed import Dist, current_dist
from .engines.weights import unwrap
from .loss.seeds import rank_seed, rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

PREFIX = "rollout-"
MANIFEST = "MANIFEST.json"
FORMAT = "rapid-checkpoint/2"
REQUIRED = ("model_optim/.metadata", "trainer_state.pt", "meta.json", "ranks/rank-00000.pt")
_OUTSIDE = "__outside_model__."         # keys of a wrapping module's own parameters (outside the HF model)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read (the message names the rank and the reason)."""


# ---- names: the HF model's own, whatever wraps it -------------------------------------------------------------------
def _model_prefix(model: torch.nn.Module) -> str:
    """Path of the outermost peft / HF ``PreTrainedModel`` inside ``model`` (DDP / compile wrappers unwrapped)."""
    for name, sub in unwrap(model).named_modules():
        if hasattr(sub, "peft_config") or any(c.__name__ == "PreTrainedModel" for c in type(sub).__mro__):
            return f"{name}." if name else ""
    return ""


def _renamed(msd: dict, osd: dict | None, fn: Callable[[str], str]) -> tuple[dict, dict | None]:
    out = {fn(k): v for k, v in msd.items()}
    if len(out) != len(msd):
        raise CheckpointError("parameter names collide after dropping the model prefix")
    if osd is not None:
        osd = {**osd, "state": {fn(k): v for k, v in osd["state"].items()},
               "param_groups": [{**g, "params": [fn(k) for k in g["params"]]} for g in osd["param_groups"]]}
    return out, osd


def _to_stored(prefix: str) -> Callable[[str], str]:
    return lambda k: k[len(prefix):] if k.startswith(prefix) else _OUTSIDE + k


def _to_local(prefix: str) -> Callable[[str], str]:
    return lambda k: k[len(_OUTSIDE):] if k.startswith(_OUTSIDE) else prefix + k


def _state_dicts(model: torch.nn.Module, optimizer) -> tuple[dict, dict | None]:
    """Model (trainable params + buffers) and optimizer state dicts under stored names; DTensor shards stay shards."""
    options = StateDictOptions(ignore_frozen_params=True)
    if optimizer is None:
        msd, osd = get_model_state_dict(model, options=options), None
    else:
        msd, osd = get_state_dict(model, optimizer, options=options)
    # torch drops frozen parameters by their deduplicated names only: a tied alias of a frozen one (peft + tied
    # embeddings: lm_head.weight) would still be stored, so drop every name of a frozen parameter
    frozen = {n for n, p in unwrap(model).named_parameters(remove_duplicate=False) if not p.requires_grad}
    msd = {k: v for k, v in msd.items() if k not in frozen}
    return _renamed(msd, osd, _to_stored(_model_prefix(model)))


# ---- files ------------------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    _fsync(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _remove(path: Path) -> None:
    """Clean-up that never raises over the error that caused it: failures are logged."""
    def log(_func, target, exc_info) -> None:
        logger.warning("checkpoint clean-up: could not remove %s: %s", target, exc_info[1])

    if path.exists():
        shutil.rmtree(path, onerror=log)


def _together(d: Dist, what: str, fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn`` on every rank, then agree: every rank raises if any rank failed (the failing rank its own error,
    the others a CheckpointError naming it). Returns every rank's result, in rank order."""
    err: Exception | None = None
    result = None
    try:
        result = fn()
    except Exception as exc:              # noqa: BLE001 — shared with the other ranks, then re-raised below
        err = exc
    gathered = d.all_gather_object((None if err is None else f"{type(err).__name__}: {err}", result))
    if err is not None:
        raise err
    failed = [(r, msg) for r, (msg, _) in enumerate(gathered) if msg is not None]
    if failed:
        raise CheckpointError(f"checkpoint {what} failed on rank {failed[0][0]}: {failed[0][1]}")
    return [res for _, res in gathered]


# ---- save ------------------------------------------------------------------------------------------------------
def save_checkpoint(root: str | Path, rollout: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict, config: dict, *, keep: int = 2, dist: Dist | None = None,
                    scheduler=None, rank_state: Any = None) -> Path:
    """Write checkpoint ``rollout`` atomically under ``root`` (collective); keep the newest ``keep`` intact ones
    (``keep <= 0``: keep all). ``model`` is the module holding the parameters: the HF model, or the (DDP / FSDP2
    wrapped) loss module around it; ``trainer_state`` is taken from rank 0.

    ``trainer_state`` (rank 0's, picklable) comes back from ``load_checkpoint``; ``rank_state`` (each rank's own,
    e.g. its share of a rollout buffer) from ``load_rank_state``. Returns the final path on every rank.
    """
    if not isinstance(rollout, int) or rollout < 0:
        raise ValueError(f"rollout must be a non-negative int, got {rollout!r}")
    if not isinstance(trainer_state, dict):
        raise ValueError(f"trainer_state must be a dict, got {type(trainer_state).__name__}")
    if not isinstance(keep, int):
        raise ValueError(f"keep must be an int, got {keep!r}")
    d = dist if dist is not None else current_dist()
    root = Path(root)
    final = root / f"{PREFIX}{rollout:06d}"
    tmp = root / f".tmp-{final.name}-{d.broadcast_object(uuid.uuid4().hex[:12] if d.is_main else None)}"
    started = time.perf_counter()
    try:
        _together(d, "set-up", lambda: (tmp / "ranks").mkdir(parents=True) if d.is_main else None)
        _together(d, "write", lambda: _write_all(d, tmp, rollout, model, optimizer, trainer_state, config,
                                                  scheduler, rank_state))
        files = d.broadcast_object(_files(tmp) if d.is_main else None)
        digests = _together(d, "checksum", lambda: {rel: {"size": (tmp / rel).stat().st_size,
                                                          "sha256": _sha256(tmp / rel)}
                                                    for rel in files[d.rank::d.world_size]})
        _together(d, "publish", lambda: _publish(d, tmp, final, files, digests) if d.is_main else None)
    except BaseException:
        if d.is_main:
            _remove(tmp)
        raise
    if d.is_main:
        _prune(root, keep, final)
        logger.info("checkpoint saved: %s (%.1f s, world size %d)", final, time.perf_counter() - started,
                    d.world_size)
    return final


def _write_all(d: Dist, tmp: Path, rollout: int, model, optimizer, trainer_state: dict, config: dict, scheduler,
               rank_state: Any) -> None:
    msd, osd = _state_dicts(model, optimizer)
    state = {"model": msd} if osd is None else {"model": msd, "optim": osd}
    with warnings.catch_warnings():             # DCP warns that no_dist means one process: that is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=tmp / "model_optim", process_group=d.monitor_group, no_dist=not d.active)
    _save({"rng": rng_state(), "rank_state": rank_state, "rank": d.rank, "world_size": d.world_size},
          tmp / "ranks" / f"rank-{d.rank:05d}.pt")
    if d.is_main:
        _save(trainer_state, tmp / "trainer_state.pt")
        if scheduler is not None:
            _save(scheduler.state_dict(), tmp / "scheduler.pt")
        _write_text(tmp / "config.json", json.dumps(config, indent=2, default=str))
        _write_text(tmp / "meta.json", json.dumps({"format": FORMAT, "rollout": rollout, "world_size": d.world_size,
                                                   "optimizer": optimizer is not None, "torch": torch.__version__,
                                                   "saved_at": time.time()}))


def _publish(d: Dist, tmp: Path, final: Path, files: list[str], digests: list[dict]) -> None:
    """Rank 0: check every rank's files arrived, write the manifest last, rename into place."""
    missing = [r for r in range(d.world_size) if f"ranks/rank-{r:05d}.pt" not in files]
    if missing:
        raise CheckpointError(f"rank(s) {missing} wrote files rank 0 cannot see: the checkpoint root must be a "
                              f"filesystem shared by every rank")
    entries = {rel: info for part in digests for rel, info in part.items()}
    _write_text(tmp / f"{MANIFEST}.partial", json.dumps({"format": FORMAT, "files": entries}, indent=1))
    os.replace(tmp / f"{MANIFEST}.partial", tmp / MANIFEST)
    _fsync(tmp)
    if final.exists():                          # re-saving a rollout: move the old one aside, then swap
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)              # put the previous one back before reporting the failure
            raise
        _remove(old)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def _prune(root: Path, keep: int, final: Path) -> None:
    """Keep the newest ``keep`` intact checkpoints (``final`` always); remove everything older than them."""
    if keep <= 0:
        return
    intact = [p for p in reversed(list_checkpoints(root)) if p == final or verify_checkpoint(p, deep=False) is None]
    kept = intact[:keep]
    if final not in kept:
        return
    oldest = _number(kept[-1])
    for stale in list_checkpoints(root):
        if _number(stale) < oldest:
            _remove(stale)


# ---- find and verify ---------------------------------------------------------------------------------------------
def _number(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (intact or not; temporary directories never)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=_number)


def verify_checkpoint(path: str | Path, deep: bool = True) -> str | None:
    """None when ``path`` is an intact checkpoint, else the reason (missing manifest, missing or truncated file,
    checksum mismatch). ``deep=False`` checks sizes only (no hashing)."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"missing {MANIFEST} (the save did not complete)"
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST}: {err}"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files"
    for rel in REQUIRED:
        if rel not in files:
            return f"{MANIFEST} lacks {rel}"
    for rel, info in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            return f"missing file {rel}"
        size = file.stat().st_size
        if size != info.get("size"):
            return f"truncated or changed file {rel}: {size} bytes, the manifest says {info.get('size')}"
        if deep and _sha256(file) != info.get("sha256"):
            return f"corrupt file {rel}: its sha256 differs from the manifest"
    return None


def latest_intact_checkpoint(root: str | Path, dist: Dist | None = None) -> Path | None:
    """The newest intact checkpoint under ``root`` (rank 0 verifies, every rank gets the answer); each newer one
    skipped is logged with its reason."""
    d = dist if dist is not None else current_dist()
    found = None
    if d.is_main:
        for candidate in reversed(list_checkpoints(root)):
            reason = verify_checkpoint(candidate)
            if reason is None:
                found = candidate
                break
            logger.warning("skipping checkpoint %s: %s", candidate, reason)
    return d.broadcast_object(found)


def stored_model_keys(path: str | Path) -> list[str]:
    """Names of the model tensors a checkpoint holds (the HF model's names; peft: the adapters only)."""
    meta = dcp.FileSystemReader(Path(path) / "model_optim").read_metadata()
    return sorted(k[len("model."):] for k in meta.state_dict_metadata if k.startswith("model."))


def latest_checkpoint(root: str | Path) -> Path | None:
    """Compatibility name for :func:`latest_intact_checkpoint`."""
    return latest_intact_checkpoint(root)


# ---- load -------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    dist: Dist | None = None, scheduler=None) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG in place (collective); return the trainer state.

    The checkpoint may come from any world size and wrapper (plain / DDP / FSDP2, loss module or bare HF model). A
    rank without saved RNG (the world grew) derives one deterministically from rank 0's and logs it."""
    d = dist if dist is not None else current_dist()
    path = Path(path)
    reason = d.broadcast_object(verify_checkpoint(path, deep=False) if d.is_main else None)
    if reason is not None:
        raise CheckpointError(f"{path} is not an intact checkpoint: {reason}")
    if optimizer is not None:
        # stale gradients would stop torch from initialising a fresh optimizer's state (its template for the load);
        # they are meaningless once the checkpoint's weights are in
        optimizer.zero_grad(set_to_none=True)
    msd, osd = _state_dicts(model, optimizer)
    state = {"model": msd} if osd is None else {"model": msd, "optim": osd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path / "model_optim", process_group=d.monitor_group, no_dist=not d.active)
    msd, osd = _renamed(state["model"], state.get("optim"), _to_local(_model_prefix(model)))
    frozen = any(not p.requires_grad for p in model.parameters())     # peft: frozen base weights were not stored
    options = StateDictOptions(ignore_frozen_params=True, strict=not frozen)
    if optimizer is None:
        set_model_state_dict(model, msd, options=options)
    else:
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=options)
    if scheduler is not None:
        if not (path / "scheduler.pt").is_file():
            raise CheckpointError(f"{path} holds no scheduler state, but a scheduler was passed")
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    _restore_rng(path, d)
    if d.is_main:
        logger.info("resumed from %s (rollout %s, saved at world size %s, now %d)", path,
                    trainer_state.get("rollout"), _meta(path).get("world_size"), d.world_size)
    return trainer_state


def _meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def _restore_rng(path: Path, d: Dist) -> None:
    own = path / "ranks" / f"rank-{d.rank:05d}.pt"
    if own.is_file():
        set_rng_state(torch.load(own, map_location="cpu", weights_only=False)["rng"])
    else:
        base = torch.load(path / "ranks" / "rank-00000.pt", map_location="cpu", weights_only=False)["rng"]
        seed = rank_seed(base, d.rank)
        seed_everything(seed)
        logger.warning("rank %d: %s has no RNG state for this rank (saved at world size %s): derived seed %d from "
                       "rank 0's state", d.rank, path.name, _meta(path).get("world_size"), seed)
    saved = _meta(path).get("world_size", 1)
    if d.is_main and saved > d.world_size:
        logger.info("%s: RNG states of ranks %d..%d unused (resumed at world size %d)", path.name, d.world_size,
                    saved - 1, d.world_size)


def load_rank_state(path: str | Path, dist: Dist | None = None) -> Any:
    """This rank's ``rank_state`` from ``save_checkpoint``; None when it saved none or the rank did not exist then."""
    d = dist if dist is not None else current_dist()
    own = Path(path) / "ranks" / f"rank-{d.rank:05d}.pt"
    if not own.is_file():
        logger.warning("rank %d: %s holds no per-rank state for this rank", d.rank, Path(path).name)
        return None
    return torch.load(own, map_location="cpu", weights_only=False).get("rank_state")
