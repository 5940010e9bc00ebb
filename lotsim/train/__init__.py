"""Training and evaluation: recipes, the loop, checkpoints, held-out evaluation, comparisons.

``lotsim.train`` imports torch and the model; the CLI imports it inside its commands only.

Public API::

    TrainingRecipe, load_training_recipe                # recipes (recipe.py)
    train                                               # the loop (loop.py)
    TrainResult, TrainingInterrupted, TrainingDiverged  # how a run ends (result.py)
    evaluate, evaluate_checkpoint                       # held-out metrics (evaluate.py)
    save_checkpoint, load_checkpoint                    # checkpoints (checkpoint.py)
    read_checkpoint, model_from_checkpoint              # the one checkpoint -> model path
    run_comparison, parse_arms                          # multi-seed studies (compare.py)

The loop is built from ``components.py`` (device, precision, model, optimiser, lr schedule) and
``distributed.py`` (the torchrun process group); ``run_folder.py`` and ``telemetry.py`` hold what it
writes besides checkpoints.
"""

from __future__ import annotations

from lotsim.train.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from lotsim.train.compare import parse_arms, run_comparison
from lotsim.train.evaluate import evaluate, evaluate_checkpoint
from lotsim.train.loop import train
from lotsim.train.recipe import TrainingRecipe, load_training_recipe
from lotsim.train.result import TrainingDiverged, TrainingInterrupted, TrainResult

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingRecipe",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_training_recipe",
    "model_from_checkpoint",
    "parse_arms",
    "read_checkpoint",
    "resolve_checkpoint",
    "run_comparison",
    "save_checkpoint",
    "train",
]
