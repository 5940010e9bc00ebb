"""Training tasks: deterministic, disjoint train/validation/test splits, scored only where the
next token is predictable.

Built-in kinds (``[task] kind = ...`` in a recipe): ``copy_reverse``, ``associative_recall``,
``char_lm``; ``custom`` plugs in your own class (``[task] target = "pkg.module:Class"``, see
:mod:`lotsim.tasks.plugin`). Every task follows :class:`Task`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lotsim.tasks.associative_recall import AssociativeRecall, AssociativeRecallOptions
from lotsim.tasks.base import (
    IGNORE_INDEX,
    SPLITS,
    BaseTask,
    Task,
    check_split,
    in_split,
    masked_metrics,
    sample_split,
    sequence_bucket,
    split_rng,
    to_batch,
)
from lotsim.tasks.copy_reverse import CopyReverse, CopyReverseOptions
from lotsim.tasks.plugin import CustomTaskOptions, build_custom_task, import_target
from lotsim.tasks.text import TextOptions, TextTask, load_text, vocabulary_of

TASKS = {"copy_reverse": CopyReverse, "associative_recall": AssociativeRecall, "char_lm": TextTask}
TASK_OPTIONS = {**{kind: cls.Options for kind, cls in TASKS.items()}, "custom": CustomTaskOptions}
TaskOptions = CopyReverseOptions | AssociativeRecallOptions | TextOptions | CustomTaskOptions


def build_task(options: TaskOptions) -> Task:
    """The task described by a validated ``[task]`` section."""
    if isinstance(options, CustomTaskOptions):
        return build_custom_task(options)
    return TASKS[options.kind].from_options(options)


def task_shape(options: TaskOptions) -> tuple[int, int]:
    """(vocab_size, seq_len) the model needs for a task, as cheaply as possible."""
    if isinstance(options, TextOptions):
        return TextTask.shape_of(options)
    task = build_task(options)
    return int(task.vocab_size), int(task.seq_len)


def vocabulary_from_recipe(recipe: Mapping[str, Any], read_files: bool = True) -> dict[str, Any] | None:
    """The vocabulary (:meth:`Task.vocabulary`) of a recipe's built-in ``[task]``, or None.

    For recipes whose checkpoint stores no vocabulary. Never imports a custom task's code;
    ``read_files=False`` never reads the corpus a char-level recipe names (then None).
    """
    task = recipe.get("task") if isinstance(recipe, Mapping) else None
    kind = task.get("kind") if isinstance(task, Mapping) else None
    if kind not in TASKS:
        return None
    if kind == "char_lm":
        level = task.get("level", "char")
        if level == "byte":
            return vocabulary_of(None, "byte")
        if not read_files:
            return None
        try:
            return vocabulary_of(load_text(task.get("path", ""), "char", task.get("glob", "*.py"))[1], "char")
        except (ValueError, OSError):
            return None
    try:  # defaults filled in, not validated: the vocabulary depends on a few sizes only
        return TASKS[kind].vocabulary_of(TASK_OPTIONS[kind].model_construct(**task))
    except (ValueError, TypeError):
        return None


__all__ = [
    "IGNORE_INDEX",
    "SPLITS",
    "TASKS",
    "TASK_OPTIONS",
    "AssociativeRecall",
    "AssociativeRecallOptions",
    "BaseTask",
    "CopyReverse",
    "CopyReverseOptions",
    "CustomTaskOptions",
    "Task",
    "TaskOptions",
    "TextOptions",
    "TextTask",
    "build_custom_task",
    "build_task",
    "check_split",
    "import_target",
    "in_split",
    "masked_metrics",
    "sample_split",
    "sequence_bucket",
    "split_rng",
    "task_shape",
    "to_batch",
    "vocabulary_from_recipe",
]
