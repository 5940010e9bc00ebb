"""Held-out evaluation: metrics of a model on a split, and of a saved checkpoint (``lotsim eval``).

Never the training split by default. Aggregation: ``loss`` is the token-weighted mean
cross-entropy over every scored position of every batch (``bpc`` = loss / ln 2 where the task
reports BPC); the task's other metrics are averaged over batches weighted by their sequence count.
For oscillator arms, ``sync_order`` is the mean order parameter r (across the head lattice, per
token) over all evaluated tokens and layers, ``sync_order_per_layer`` per layer.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lotsim.tasks import IGNORE_INDEX, Task, check_split
from lotsim.train.telemetry import phase_layers

DEFAULT_SYNTHETIC_BATCHES = 32


def held_out_batches(task: Task, split: str, batch_size: int, max_batches: int | None) -> int:
    """How many batches to evaluate: ``max_batches`` capped by what the split holds (None: all of a
    finite split, else :data:`DEFAULT_SYNTHETIC_BATCHES`)."""
    finite = task.num_batches(split, batch_size) if hasattr(task, "num_batches") else None
    if max_batches is None:
        return finite if finite is not None else DEFAULT_SYNTHETIC_BATCHES
    return min(max_batches, finite) if finite is not None else max_batches


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, split: str = "validation", *, batch_size: int = 64,
             max_batches: int | None = None, autocast: Any = None, sync: bool = True,
             interventions: dict | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` (eval mode, no gradients; the mode is restored after).

    Args:
        model: a bare :class:`~lotsim.model.LOTModel` (not a DDP wrapper).
        task: the task.
        split: ``validation`` or ``test`` (``train`` is allowed for diagnostics only).
        batch_size: sequences per batch.
        max_batches: batches to evaluate (see :func:`held_out_batches`).
        autocast: a context manager factory for mixed precision, or None.
        sync: collect the order parameter of layers that report phases.
        interventions: ``{layer: {name: value}}`` forced at inference (see lotsim.model.interventions).

    Returns:
        ``loss``, the task's metrics, ``sync_order`` and ``sync_order_per_layer`` (oscillator arms),
        ``split``, ``sequences``, ``scored_tokens``, ``batches``.
    """
    check_split(split)
    n_batches = held_out_batches(task, split, batch_size, max_batches)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, scored, rows = 0.0, 0, 0
    weighted: dict[str, float] = {}
    r_sum: dict[int, float] = {}
    r_count = 0
    try:
        for index in range(n_batches):
            idx, targets = task.batch(split, batch_size, index)
            idx, targets = idx.to(device), targets.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(idx, return_intermediates=sync, interventions=interventions)
            logits = out.logits.float()
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                              reduction="sum"))
            scored += int((targets != IGNORE_INDEX).sum())
            b = idx.shape[0]
            rows += b
            for name, value in task.metrics(logits, targets).items():
                weighted[name] = weighted.get(name, 0.0) + float(value) * b
            for layer, inter in phase_layers(out.intermediates if sync else None):
                r_sum[layer] = r_sum.get(layer, 0.0) + float(inter.order_parameter.float().sum())
            if r_sum:
                r_count += idx.numel()
    finally:
        model.train(was_training)
    if scored == 0:
        raise ValueError(f"the {split} split produced no scored position in {n_batches} batches")
    result: dict[str, Any] = {name: value / rows for name, value in weighted.items()}
    result["loss"] = loss_sum / scored
    if "bpc" in result:
        result["bpc"] = result["loss"] / math.log(2)
    if r_sum:
        per_layer = {f"layer_{layer:02d}": total / r_count for layer, total in sorted(r_sum.items())}
        result["sync_order_per_layer"] = per_layer
        result["sync_order"] = sum(per_layer.values()) / len(per_layer)
    result.update(split=split, sequences=rows, scored_tokens=scored, batches=n_batches)
    return result


def evaluate_checkpoint(checkpoint: str | Path, split: str = "test", *, max_batches: int | None = None,
                        batch_size: int | None = None, device: str = "cpu", intervene: list[str] | None = None,
                        overrides: list[str] = (), allow_code: bool = False) -> dict[str, Any]:
    """Evaluate a saved checkpoint (a file or a run folder: ``best.pt``, else ``last.pt``).

    The task and model are rebuilt from the recipe stored in the checkpoint, with ``overrides``
    (``a.b=value``, e.g. ``task.path=...`` when the corpus moved). That recipe comes from a file:
    a custom task's code is imported only with ``allow_code``. ``intervene`` holds
    ``[LAYERS.]NAME=VALUE`` specs (e.g. ``coupling=0``) forced at inference, recorded in the result.

    Returns:
        :func:`evaluate`'s metrics plus ``checkpoint``, ``step``, ``attention``, ``parameters``
        (total, non_embedding), ``recipe_name``, ``seed``, ``wall_time_s``, ``lotsim_version``,
        ``git_commit``, ``interventions`` and ``recipe`` (the checkpoint's resolved recipe, TOML text).

    Raises:
        FileNotFoundError, ValueError: one line (no checkpoint, an unreadable or untrusted one, a
            recipe that does not validate, weights or a vocabulary that do not fit the task).
    """
    from lotsim import __version__
    from lotsim.model import count_parameters
    from lotsim.model.interventions import parse_intervention_specs
    from lotsim.simulation import git_commit
    from lotsim.tasks import build_task
    from lotsim.train.checkpoint import model_from_checkpoint, read_checkpoint
    from lotsim.train.components import pick_device
    from lotsim.train.recipe import check_device, recipe_from_toml

    check_split(split)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be >= 1")
    torch_device = pick_device(check_device(device, "cpu, cuda or cuda:<i>"))
    contents = read_checkpoint(checkpoint, allow_code=allow_code)
    recipe = recipe_from_toml(contents.recipe, overrides, allow_code=allow_code)
    task = build_task(recipe.task)
    _check_vocabulary(contents, task)
    model = model_from_checkpoint(contents, recipe.model, torch_device)
    bs = batch_size or recipe.train.held_out_batch_size
    batches = max_batches if max_batches is not None else recipe.train.test_batches
    start = time.perf_counter()
    interventions = parse_intervention_specs(intervene, recipe.model.n_layers) if intervene else None
    metrics = evaluate(model, task, split, batch_size=bs, max_batches=batches, interventions=interventions)
    metrics.update(checkpoint=str(contents.path), step=contents.step, attention=recipe.model.attention,
                   parameters=count_parameters(model), recipe_name=recipe.name, seed=recipe.seed,
                   wall_time_s=time.perf_counter() - start, lotsim_version=__version__, git_commit=git_commit(),
                   recipe=contents.recipe, interventions=list(intervene or []))
    return metrics


def _check_vocabulary(contents, task: Task) -> None:
    """The task rebuilt from the recipe must speak the checkpoint's vocabulary (one line if not)."""
    stored = contents.vocabulary
    current = task.vocabulary() if hasattr(task, "vocabulary") else None
    if stored is not None and current is not None and stored != current:
        size = len(current.get("itos") or ()) or task.vocab_size
        raise ValueError(f"{str(contents.path)!r} was trained on another vocabulary ({len(stored.get('itos') or ())} "
                         f"{stored['kind']} tokens) than the task now gives ({size} {current['kind']} tokens); "
                         f"point --set task.path at the corpus it was trained on")
    if task.vocab_size > contents.config.vocab_size:
        raise ValueError(f"the task has {task.vocab_size} tokens but {str(contents.path)!r} models "
                         f"{contents.config.vocab_size}; it was trained on another task or corpus")
