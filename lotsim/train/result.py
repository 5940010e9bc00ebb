"""What a training run ends with: :class:`TrainResult`, or one of the two ways it stops early
(:class:`TrainingInterrupted` on Ctrl-C or SIGTERM, :class:`TrainingDiverged` on a non-finite loss or
gradient). Both exceptions pickle, so they cross from a worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lotsim.train.checkpoint import LAST


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C after saving ``last.pt``; ``resume=True`` continues it."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.run_dir, self.step = run_dir, step

    def __reduce__(self):  # picklable, so it crosses from a worker process (lotsim compare --jobs)
        return type(self), (self.run_dir, self.step)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped at that step, before the optimiser applied it;
    ``last.pt`` (if any) is the last good checkpoint."""

    def __init__(self, run_dir: Path, step: int, what: str, value: float, lr: float, last_good: int | None):
        where = (f"the last good checkpoint is {Path(run_dir) / 'checkpoints' / LAST} (step {last_good})"
                 if last_good is not None else "no checkpoint was written before it")
        super().__init__(f"training diverged at step {step}: {what} {value} (lr {lr:.3g}); {where}; lower "
                         f"train.lr, raise train.warmup_steps or train.grad_clip, then start again")
        self.run_dir, self.step, self.what, self.value, self.lr, self.last_good = (
            run_dir, step, what, value, lr, last_good)

    def __reduce__(self):
        return type(self), (self.run_dir, self.step, self.what, self.value, self.lr, self.last_good)


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
        recipe_name: the recipe's ``name``.
        already_finished: True when a resumed run had already finished: nothing was run or written
            (``test`` then holds the run's metrics.json).
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
    recipe_name: str = ""
    already_finished: bool = False
