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
continues exactly: a resumed run's losses equal an uninterrupted run's. Every state a stop can
leave has a way forward: a run stopped after its last step (e.g. during the final validation)
resumes into its validation and test; a finished run resumed changes nothing; a folder stopped
before its first checkpoint is started again with ``overwrite=True``. A non-finite loss or gradient
stops training at that step (:class:`TrainingDiverged`), before the optimiser applies it, keeping
the last good checkpoint.

The library never prints: progress goes to ``callback(event: dict)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lotsim.interrupts import StopFlag
from lotsim.model import LOTModel, count_parameters
from lotsim.tasks import Task, build_task
from lotsim.train.checkpoint import (
    BEST,
    LAST,
    model_from_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lotsim.train.components import (
    autocast_for,
    build_model,
    lr_factor,
    make_optimizer,
    pick_device,
    seed_everything,
)
from lotsim.train.distributed import barrier, gather_rng, mean_over_ranks, setup_distributed, stop_requested
from lotsim.train.evaluate import evaluate
from lotsim.train.recipe import TrainingRecipe, recipe_from_toml, recipe_to_toml
from lotsim.train.result import TrainingDiverged, TrainingInterrupted, TrainResult
from lotsim.train.run_folder import (
    METRICS_LOG,
    RECIPE_FILE,
    REPORT,
    TENSORBOARD_MISSING,
    MetricsLog,
    check_run_folder,
    clear_run_folder,
    default_run_dir,
    open_tensorboard,
    resume_checkpoint,
)
from lotsim.train.telemetry import PhaseTelemetry

Callback = Callable[[dict[str, Any]], None]


def _git_commit() -> str:
    from lotsim.simulation import git_commit

    return git_commit()


def train(recipe: TrainingRecipe | None = None, run_dir: str | Path | None = None, *, resume: bool = False,
          callback: Callback | None = None, evaluate_test: bool = True, overrides: list[str] = (),
          allow_code: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a model from a recipe into a run folder.

    Args:
        recipe: the resolved recipe; with ``resume`` and None, the checkpoint's recipe.
        run_dir: the run folder (default :func:`default_run_dir`); with ``resume``, the folder
            holding ``checkpoints/last.pt``.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        callback: receives event dicts: ``start``, ``warning`` (one line), ``step`` (every step),
            ``eval``, ``checkpoint``, ``test``, ``end``. Called on rank 0 only.
        evaluate_test: evaluate the best checkpoint on the test split at the end (``metrics.json``).
        overrides: with ``resume`` and no recipe, ``a.b=value`` overrides of the checkpoint's recipe.
        allow_code: with ``resume`` and no recipe, trust the checkpoint: read it even if it needs
            full unpickling and import the custom task its recipe names.
        overwrite: a fresh run replaces what an earlier run left in ``run_dir`` (otherwise refused).

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainingInterrupted: on Ctrl-C, after saving ``last.pt``.
        TrainingDiverged: a non-finite loss or gradient (``last.pt`` is the last good checkpoint).
        ValueError: bad settings found at start-up (device, precision, freeze patterns, unknown
            regulariser names, a run folder in use...), before anything is written.
    """
    wall_start = time.perf_counter()
    state = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder to continue")
        state = resume_checkpoint(Path(run_dir), allow_code)
        if recipe is None:
            recipe = recipe_from_toml(state["recipe"], overrides, allow_code=allow_code, resume=True)
        if int(state["step"]) >= recipe.train.steps and (Path(run_dir) / REPORT).is_file():
            return _finished(recipe, Path(run_dir), state, callback)
    elif recipe is None:
        recipe = TrainingRecipe()
    cfg = recipe.train
    ddp = setup_distributed(cfg.device)
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
    train_time, train_tokens = 0.0, 0  # the run's, over every call that trained it
    last_validation: dict[str, Any] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = int(state["step"]), dict(state["best"])
        train_time, train_tokens = float(state.get("train_time_s", 0.0)), int(state.get("train_tokens", 0))
        last_validation = dict(state.get("validation") or {})
        if state.get("world_size", 1) != ddp.world_size:
            raise ValueError(f"the checkpoint was written by {state.get('world_size', 1)} processes; resume "
                             f"with the same number (now {ddp.world_size}) to continue its data order")
        rngs = state["rng"]
        if ddp.rank < len(rngs) and rngs[ddp.rank] is not None:
            set_rng_state(rngs[ddp.rank])
        else:  # saved on an interrupt without the other ranks' states: reseed deterministically
            seed_everything(recipe.seed + 1 + ddp.rank + 7919 * step)
    else:
        seed_everything(recipe.seed + 1 + ddp.rank)  # dropout & co.; the model was seeded above
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
    vocabulary = task.vocabulary() if hasattr(task, "vocabulary") else None
    log = tb = telemetry = None
    if ddp.main:
        if not resume:
            check_run_folder(run_dir, overwrite)
            clear_run_folder(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(recipe_toml)  # a resume with --set records its new recipe
        log = MetricsLog(run_dir / METRICS_LOG, step if resume else None)
        if cfg.warmup_note:
            emit({"event": "warning", "message": cfg.warmup_note})
        if recipe.output.tensorboard:
            tb = open_tensorboard(run_dir / "tb", step + 1 if resume else None)
            if tb is None:
                emit({"event": "warning", "message": TENSORBOARD_MISSING})
        if cfg.telemetry_every:
            probe, _ = task.batch("validation", cfg.telemetry_sequences, 0)
            telemetry = PhaseTelemetry(run_dir / "telemetry.h5", probe, recipe_toml=recipe_toml, seed=recipe.seed,
                                       git_commit=commit, resume_step=step if resume else None)

    params = count_parameters(raw_model)
    tokens_per_step = cfg.batch_size * task.seq_len * cfg.grad_accum * ddp.world_size
    emit({"event": "start", "run_dir": str(run_dir), "start_step": step, "steps": cfg.steps,
          "parameters": params, "tokens_per_step": tokens_per_step, "device": str(device),
          "world_size": ddp.world_size})
    result = TrainResult(run_dir=run_dir, step=step, finished=False, best=best, parameters=params, model=raw_model,
                         validation=last_validation, recipe_name=recipe.name)
    last_saved = step if state is not None else None

    def checkpoint(path_name: str, gather: bool = True) -> None:
        nonlocal last_saved
        rngs = gather_rng(ddp) if gather else [rng_state() if ddp.main else None]
        if path_name == LAST:
            last_saved = step
        if not ddp.main:
            return
        save_checkpoint(run_dir / "checkpoints" / path_name, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "data_index": step * cfg.grad_accum,
            "rng": rngs, "best": best, "validation": result.validation, "recipe": recipe_toml, "vocabulary": vocabulary,
            "world_size": ddp.world_size, "lotsim_version": _version(), "git_commit": commit,
            "parameters": params, "wall_time_s": time.perf_counter() - wall_start,
            "train_time_s": train_time, "train_tokens": train_tokens,
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

    model.train()
    try:
        with StopFlag() as stop:
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
                loss = mean_over_ranks(loss_sum, ddp)
                for what, value in (("loss", loss), ("gradient norm", grad_norm)):
                    if not math.isfinite(value):  # before the optimiser applies it; last.pt stays good
                        raise TrainingDiverged(run_dir, step + 1, what, value, lr, last_saved)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
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
                    barrier(ddp)
                if step % (cfg.checkpoint_every or cfg.eval_every) == 0 or step == cfg.steps:
                    checkpoint(LAST)
                if stop_requested(stop.requested, ddp):
                    checkpoint(LAST)
                    raise TrainingInterrupted(run_dir, step)
            if state is not None and step >= cfg.steps and ddp.main and not result.validation:
                validate()  # a checkpoint of an older lotsim stores no validation: redo the last one
        result.step = step
        result.finished = step >= cfg.steps
        result.tokens_per_s = train_tokens / train_time if train_time > 0 else 0.0
        if result.finished and evaluate_test and ddp.main:
            result.test = _final_test(recipe, task, run_dir, autocast, device)
            result.wall_time_s = time.perf_counter() - wall_start
            (run_dir / REPORT).write_text(json.dumps(_final_report(recipe, task, result, commit), indent=2,
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


def _finished(recipe: TrainingRecipe, run_dir: Path, state: dict, callback: Callback | None) -> TrainResult:
    """A resumed run that had already finished: nothing runs, nothing is written."""
    report = json.loads((run_dir / REPORT).read_text())
    result = TrainResult(run_dir=run_dir, step=int(state["step"]), finished=True, already_finished=True,
                         recipe_name=recipe.name,
                         validation=report.get("validation") or {}, best=dict(state.get("best") or {}),
                         test=report, parameters=dict(state.get("parameters") or {}),
                         tokens_per_s=float(report.get("tokens_per_s") or 0.0))
    if callback is not None and int(os.environ.get("RANK", "0")) == 0:
        callback({"event": "end", "result": result})
    return result


def _version() -> str:
    from lotsim import __version__

    return __version__


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


def _log(log: MetricsLog | None, tb, step: int, split: str, record: dict) -> None:
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
    contents = read_checkpoint(run_dir / "checkpoints" / BEST)
    model = model_from_checkpoint(contents, recipe.model, device)
    metrics = evaluate(model, task, "test", batch_size=recipe.train.held_out_batch_size,
                       max_batches=recipe.train.test_batches, autocast=autocast)
    metrics.update(checkpoint=str(contents.path), step=contents.step)
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
