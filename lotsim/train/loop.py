"""The training loop: plain PyTorch, nanoGPT-shaped, readable top to bottom.

One process::

    python -m lotsim train recipes/copy_reverse_lattice.toml

Several processes (one per GPU, or CPU processes on gloo), one or many nodes, via torchrun::

    torchrun --standalone --nproc_per_node=4 -m lotsim train recipes/char_lm.toml
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 \
        -m lotsim train recipes/char_lm.toml        # and node_rank=1 on the second node

Under torchrun every process runs this same function: DistributedDataParallel averages the
gradients, rank 0 alone writes files (run folder, checkpoints, metrics, TensorBoard, telemetry)
and evaluates. Each process reads its own micro-batches: micro-batch ``m`` of step ``s`` on rank
``r`` is the task's train batch ``(s * grad_accum + m) * world_size + r`` (batches are addressed by
index, so the data position of a checkpoint is just its step).

Per step: ``grad_accum`` micro-batches (forward under bf16 autocast on GPUs only, the task's
cross-entropy plus the weighted regularisers the model reports, backward without DDP sync until
the last), gradient clipping, AdamW (decoupled weight decay on weight matrices only), the
warm-up + cosine schedule. Every ``eval_every`` steps: validation metrics (never the training
split), ``best.pt`` when ``best_metric`` improves; every ``checkpoint_every`` steps: ``last.pt``.
At the end the best checkpoint is evaluated on the test split (``metrics.json``).

Ctrl-C (SIGINT) or SIGTERM (preemption) finishes the current step, saves ``last.pt`` and raises
:class:`TrainingInterrupted`; ``train(..., resume=True)`` (``lotsim train --resume RUN_DIR``)
continues exactly: a resumed run's losses equal an uninterrupted run's.

The library never prints: progress goes to ``callback(event: dict)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lotsim.model import LOTModel, ModelConfig, count_parameters
from lotsim.tasks import Task, build_task
from lotsim.train.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lotsim.train.evaluate import evaluate
from lotsim.train.recipe import TrainingRecipe, recipe_to_toml
from lotsim.train.telemetry import PhaseTelemetry

Callback = Callable[[dict[str, Any]], None]


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C after saving ``last.pt``; ``resume=True`` continues it."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.run_dir, self.step = run_dir, step

    def __reduce__(self):  # picklable, so it crosses from a worker process (lotsim compare --jobs)
        return type(self), (self.run_dir, self.step)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        step: optimiser steps done.
        finished: False when the run stopped early (``train.stop_at``).
        train_losses: {step: mean training loss} of the steps this call ran.
        validation: the last validation metrics.
        best: {"metric", "value", "step"} of the best validation.
        test: test-split metrics of the best checkpoint (None if not evaluated).
        parameters: {"total", "non_embedding"}.
        tokens_per_s: training throughput (all processes, evaluation time excluded).
        wall_time_s: wall time of this call.
        model: the trained model (bare, on its device) as it is at the end of this call.
    """

    run_dir: Path
    step: int
    finished: bool
    train_losses: dict[int, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    parameters: dict[str, int] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    wall_time_s: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------------
# Pieces, in the order train() uses them


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owner: bool = False  # this call created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owner = not dist.is_initialized()
    if owner:
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Dist(rank, world, local, owner)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use auto or cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def autocast_for(precision: str, device: torch.device):
    """A factory of the autocast context: bf16 on GPUs only (``auto``/``bf16``), else none."""
    if device.type != "cuda":
        if precision == "bf16":
            raise ValueError("train.precision='bf16' needs a CUDA device; use auto or fp32 on the CPU")
        return None
    if precision == "fp32" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return None
    return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def build_model(config: ModelConfig, seed: int, freeze: list[str] = ()) -> LOTModel:
    """The model initialised from ``seed`` (identical on every process), with ``freeze`` patterns
    (fnmatch over parameter names) excluded from training.

    Raises:
        ValueError: a freeze pattern that matches no parameter (naming some that exist).
    """
    torch.manual_seed(seed)
    model = LOTModel(config)
    names = [n for n, _ in model.named_parameters()]
    for pattern in freeze:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"train.freeze pattern {pattern!r} matches no parameter; parameters are e.g. "
                             f"{', '.join(names[:6])}")
        for name, p in model.named_parameters():
            if name in hits:
                p.requires_grad_(False)
    return model


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only.

    Decayed: every trainable parameter with >= 2 dimensions except embeddings (qkv, out, MLP and
    phase projections). Not decayed: norms' gains, the (tied) token embedding and every 1-D
    parameter, i.e. the oscillators' per-head scalars (omega, kappa, lattice constants, gains).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float, schedule: str) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based): linear warm-up to 1, then
    cosine to ``min_ratio`` at the last step (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_run_dir(recipe: TrainingRecipe) -> Path:
    """``<output.dir>/<name>/<output.run or a timestamp>``."""
    run = recipe.output.run or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(recipe.output.dir) / recipe.name / run


def _git_commit() -> str:
    from lotsim.simulation import git_commit

    return git_commit()


class _StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM (preemption, torchrun shutting down) set a flag the loop checks
    between steps; a second signal aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handler, Ctrl-C raises as usual
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _JsonLines:
    """metrics.jsonl: one JSON object per logged step; a resumed run first drops lines after its step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")  # a fresh run starts a fresh log
        elif path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        self._handle = open(path, "a")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, allow_nan=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _tensorboard(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


# ---------------------------------------------------------------------------------------------------
# The loop


def train(recipe: TrainingRecipe | None = None, run_dir: str | Path | None = None, *, resume: bool = False,
          callback: Callback | None = None, evaluate_test: bool = True) -> TrainResult:
    """Train a model from a recipe into a run folder.

    Args:
        recipe: the resolved recipe; with ``resume`` and None, the checkpoint's recipe.
        run_dir: the run folder (default :func:`default_run_dir`); with ``resume``, the folder
            holding ``checkpoints/last.pt``.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        callback: receives event dicts: ``start``, ``step`` (every step), ``eval``, ``checkpoint``,
            ``test``, ``end``. Called on rank 0 only.
        evaluate_test: evaluate the best checkpoint on the test split at the end (``metrics.json``).

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainingInterrupted: on Ctrl-C, after saving ``last.pt``.
        ValueError: bad settings found at start-up (device, precision, freeze patterns, unknown
            regulariser names...), before anything is written.
    """
    wall_start = time.perf_counter()
    state = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder to continue")
        last = Path(run_dir) / "checkpoints" / LAST
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint {str(last)!r}")
        state = load_checkpoint(last)
        if recipe is None:
            recipe = resumed_recipe(state["recipe"])
    elif recipe is None:
        recipe = TrainingRecipe()
    cfg = recipe.train
    ddp = _setup_distributed(cfg.device)
    device = pick_device(cfg.device, ddp.local_rank)
    autocast = autocast_for(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    emit = callback if (callback is not None and ddp.main) else (lambda event: None)

    # -- task and model (identical init on every process) ------------------------------------------
    task = build_task(recipe.task)
    model = build_model(recipe.model, recipe.seed, cfg.freeze).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, device)

    def schedule(s: int) -> float:
        return lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.schedule)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    reg_weights = {k: v for k, v in cfg.regularization.items() if v > 0}
    if reg_weights:  # unknown names are a start-up error, before the run folder exists
        with torch.no_grad():
            probe = model(task.batch("train", 1, 0)[0].to(device), return_intermediates=True)
        _regularizers(model, probe.intermediates, reg_weights)
    step, best = 0, {"metric": cfg.best_metric, "value": None, "step": None}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = int(state["step"]), dict(state["best"])
        if state.get("world_size", 1) != ddp.world_size:
            raise ValueError(f"the checkpoint was written by {state.get('world_size', 1)} processes; resume "
                             f"with the same number (now {ddp.world_size}) to continue its data order")
        rngs = state["rng"]
        if ddp.rank < len(rngs) and rngs[ddp.rank] is not None:
            set_rng_state(rngs[ddp.rank])
        else:  # saved on an interrupt without the other ranks' states: reseed deterministically
            _seed_everything(recipe.seed + 1 + ddp.rank + 7919 * step)
    else:
        _seed_everything(recipe.seed + 1 + ddp.rank)  # dropout & co.; the model was seeded above
    raw_model = model
    if ddp.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)  # the training steps only; evaluation and telemetry use raw_model

    # -- run folder (rank 0 writes; every rank learns its name) ------------------------------------
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    if ddp.world_size > 1:
        box = [str(run_dir)]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    recipe_toml = recipe_to_toml(recipe)
    commit = _git_commit()
    log = tb = telemetry = None
    if ddp.main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.resolved.toml").write_text(recipe_toml)
        log = _JsonLines(run_dir / "metrics.jsonl", step if resume else None)
        if recipe.output.tensorboard:
            tb = _tensorboard(run_dir / "tb", step + 1 if resume else None)
        if cfg.telemetry_every:
            probe, _ = task.batch("validation", cfg.telemetry_sequences, 0)
            telemetry = PhaseTelemetry(run_dir / "telemetry.h5", probe, recipe_toml=recipe_toml, seed=recipe.seed,
                                       git_commit=commit, resume_step=step if resume else None)

    params = count_parameters(raw_model)
    tokens_per_step = cfg.batch_size * task.seq_len * cfg.grad_accum * ddp.world_size
    emit({"event": "start", "run_dir": str(run_dir), "start_step": step, "steps": cfg.steps,
          "parameters": params, "tokens_per_step": tokens_per_step, "device": str(device),
          "world_size": ddp.world_size})
    result = TrainResult(run_dir=run_dir, step=step, finished=False, best=best, parameters=params, model=raw_model)

    def checkpoint(path_name: str, gather: bool = True) -> None:
        rngs = _gather_rng(ddp) if gather else [rng_state() if ddp.main else None]
        if not ddp.main:
            return
        save_checkpoint(run_dir / "checkpoints" / path_name, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "data_index": step * cfg.grad_accum,
            "rng": rngs, "best": best, "recipe": recipe_toml, "world_size": ddp.world_size,
            "lotsim_version": _version(), "git_commit": commit, "parameters": params,
            "wall_time_s": time.perf_counter() - wall_start,
        })
        if telemetry is not None:
            telemetry.flush()
        emit({"event": "checkpoint", "step": step, "path": str(run_dir / "checkpoints" / path_name)})

    def validate() -> None:
        metrics = evaluate(raw_model, task, "validation", batch_size=cfg.held_out_batch_size,
                           max_batches=cfg.eval_batches, autocast=autocast)
        result.validation = metrics
        value = metrics.get(cfg.best_metric)
        if value is None:
            raise ValueError(f"train.best_metric={cfg.best_metric!r} is not a validation metric; have "
                             f"{', '.join(k for k, v in metrics.items() if isinstance(v, float))}")
        better = best["value"] is None or (value < best["value"] if cfg.lower_is_better else value > best["value"])
        if better:
            best.update(value=value, step=step)
        _log(log, tb, step, "validation", _scalars(metrics))
        emit({"event": "eval", "step": step, "metrics": metrics, "best": dict(best)})
        if better:
            checkpoint(BEST, gather=False)

    train_time, train_tokens = 0.0, 0
    model.train()
    try:
        with _StopFlag() as stop:
            if telemetry is not None and step == 0 and state is None:
                _log(log, tb, 0, "telemetry", telemetry.record(raw_model, 0))
            while step < cfg.steps:
                if cfg.stop_at is not None and step >= cfg.stop_at:
                    checkpoint(LAST)
                    break
                t0 = time.perf_counter()
                loss_sum, reg_sums = 0.0, {}
                for micro in range(cfg.grad_accum):
                    index = (step * cfg.grad_accum + micro) * ddp.world_size + ddp.rank
                    idx, targets = task.batch("train", cfg.batch_size, index)
                    idx, targets = idx.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                    last_micro = micro == cfg.grad_accum - 1
                    sync_ctx = contextlib.nullcontext() if (last_micro or ddp.world_size == 1) else model.no_sync()
                    with sync_ctx:
                        with autocast() if autocast is not None else contextlib.nullcontext():
                            out = model(idx, targets, return_intermediates=bool(reg_weights))
                            objective = out.loss
                            if reg_weights:
                                regs = _regularizers(raw_model, out.intermediates, reg_weights)
                                for name, value in regs.items():
                                    objective = objective + reg_weights[name] * value
                                    reg_sums[name] = reg_sums.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
                        (objective / cfg.grad_accum).backward()
                    loss_sum += float(out.loss.detach()) / cfg.grad_accum
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                loss = _mean_over_ranks(loss_sum, ddp)
                dt = time.perf_counter() - t0
                train_time += dt
                train_tokens += tokens_per_step
                result.train_losses[step] = loss
                record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_step / dt,
                          **{f"reg_{k}": v for k, v in reg_sums.items()}}
                emit({"event": "step", "step": step, "steps": cfg.steps, **record})
                if step % cfg.log_every == 0 or step == cfg.steps:
                    _log(log, tb, step, "train", record)
                if telemetry is not None and (step % cfg.telemetry_every == 0 or step == cfg.steps):
                    _log(log, tb, step, "telemetry", telemetry.record(raw_model, step))
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    if ddp.main:
                        validate()
                    _barrier(ddp)
                if step % (cfg.checkpoint_every or cfg.eval_every) == 0 or step == cfg.steps:
                    checkpoint(LAST)
                if _stop_requested(stop.requested, ddp):
                    checkpoint(LAST)
                    raise TrainingInterrupted(run_dir, step)
        result.step = step
        result.finished = step >= cfg.steps
        result.tokens_per_s = train_tokens / train_time if train_time > 0 else 0.0
        if result.finished and evaluate_test and ddp.main:
            result.test = _final_test(recipe, task, run_dir, autocast, device)
            result.wall_time_s = time.perf_counter() - wall_start
            (run_dir / "metrics.json").write_text(json.dumps(_final_report(recipe, task, result, commit), indent=2,
                                                             default=str) + "\n")
            emit({"event": "test", "metrics": result.test})
    finally:
        result.wall_time_s = time.perf_counter() - wall_start
        for closer in (log, tb, telemetry):
            if closer is not None:
                closer.close()
        if ddp.owner:
            dist.destroy_process_group()
    emit({"event": "end", "result": result})
    return result


def resumed_recipe(recipe_toml: str, overrides: list[str] = ()) -> TrainingRecipe:
    """A checkpoint's recipe for resuming: ``train.stop_at`` cleared (a stopped run continues to the
    end) unless an override sets it again; other overrides change the run (its losses then differ
    from an uninterrupted run's)."""
    import tomllib

    from lotsim.config import apply_overrides, validate_recipe

    data = tomllib.loads(recipe_toml)
    data.get("train", {}).pop("stop_at", None)
    return validate_recipe(TrainingRecipe, apply_overrides(data, list(overrides)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _version() -> str:
    from lotsim import __version__

    return __version__


def _gather_rng(ddp: _Dist) -> list:
    """Every process's RNG state, on rank 0 (a collective: all ranks call it at the same step)."""
    mine = rng_state()
    if ddp.world_size == 1:
        return [mine]
    states: list = [None] * ddp.world_size
    dist.all_gather_object(states, mine)
    return states


def _mean_over_ranks(value: float, ddp: _Dist) -> float:
    if ddp.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / ddp.world_size


def _stop_requested(flag: bool, ddp: _Dist) -> bool:
    if ddp.world_size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def _barrier(ddp: _Dist) -> None:
    if ddp.world_size > 1:
        dist.barrier()


def _regularizers(model: LOTModel, intermediates, weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """The weighted regularisers the model reports; a weighted name it does not report is an error,
    unless it reports none at all (e.g. a vanilla arm of a comparison)."""
    losses = model.regularization_losses(intermediates)
    if losses:
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ValueError(f"train.regularization names {', '.join(unknown)}; this model reports "
                             f"{', '.join(sorted(losses))}")
    return {name: value for name, value in losses.items() if name in weights}


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if isinstance(v, int | float)})
    return out


def _log(log: _JsonLines | None, tb, step: int, split: str, record: dict) -> None:
    if not record:
        return
    if log is not None:
        log.write({"step": step, "split": split, "time": time.time(), **record})
    if tb is not None:
        for key, value in record.items():
            if isinstance(value, float) and math.isfinite(value):
                tb.add_scalar(f"{split}/{key}", value, step)


def _final_test(recipe: TrainingRecipe, task: Task, run_dir: Path, autocast, device) -> dict[str, Any]:
    """Test-split metrics of the best checkpoint (selected on validation)."""
    state = load_checkpoint(run_dir / "checkpoints" / BEST)
    model = LOTModel(recipe.model).to(device)
    model.load_state_dict(state["model"])
    metrics = evaluate(model, task, "test", batch_size=recipe.train.held_out_batch_size,
                       max_batches=recipe.train.test_batches, autocast=autocast)
    metrics.update(checkpoint=str(run_dir / "checkpoints" / BEST), step=int(state["step"]))
    return metrics


def _final_report(recipe: TrainingRecipe, task: Task, result: TrainResult, commit: str) -> dict[str, Any]:
    """metrics.json: the test metrics at the top level (the layout ``lotsim eval`` writes) plus the
    run's context (``corpus``: what a text task read, see ``TextTask.corpus``)."""
    return {
        **result.test, "recipe_name": recipe.name, "seed": recipe.seed, "attention": recipe.model.attention,
        "task": recipe.task.kind, "steps": result.step, "parameters": result.parameters,
        "tokens_per_s": result.tokens_per_s, "wall_time_s": result.wall_time_s,
        "validation": result.validation, "best": result.best, "lotsim_version": _version(), "git_commit": commit,
        "recipe": recipe_to_toml(recipe), "corpus": getattr(task, "corpus", None),
    }
