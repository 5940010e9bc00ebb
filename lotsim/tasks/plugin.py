"""Your own dataset, plugged in from a recipe with no code change in lotsim::

    [task]
    target = "my_package.my_module:MyTask"   # kind = "custom" is implied
    length = 12                               # every other key is a keyword argument of MyTask

``MyTask(**kwargs)`` must follow :class:`lotsim.tasks.Task`: ``vocab_size``, ``seq_len``,
``batch(split, batch_size, index) -> (idx, targets)``; ``metrics`` and ``name`` are optional
(defaults: :func:`lotsim.tasks.masked_metrics` and the class name). Subclassing
:class:`lotsim.tasks.BaseTask` gives you those defaults. The module must be importable (installed,
or on ``PYTHONPATH``).

Only recipes the user hands over import code: a recipe read back from a checkpoint or a run folder
is validated with :data:`UNTRUSTED` as pydantic context, and its ``target`` is then refused unless
the user passes ``--allow-code`` (a file from someone else must never run code).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import ConfigDict, ValidationInfo, field_validator

from lotsim.config import Section
from lotsim.tasks.base import masked_metrics

UNTRUSTED = {"untrusted": True}  # validation context of a recipe read from a checkpoint or run folder


class CustomTaskOptions(Section):
    """``[task]`` of a user task: ``target`` plus the class's keyword arguments (extra keys)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["custom"] = "custom"
    target: str

    @field_validator("target")
    @classmethod
    def _importable(cls, value: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("untrusted"):
            raise ValueError(f"{value!r} is code named by a checkpoint or run folder, not by you; lotsim "
                             f"imports it only if you trust the file: rerun with --allow-code")
        import_target(value)
        return value

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the target class."""
        return dict(self.model_extra or {})


def import_target(target: str):
    """``"package.module:Name"`` -> the object (dots after the colon walk attributes).

    Raises:
        ValueError: one line naming the target and what went wrong.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:ClassName'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"target {target!r}: cannot import module {module_name!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"target {target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_custom_task(options: CustomTaskOptions):
    """Instantiate a user task and check it follows the Task protocol.

    Raises:
        ValueError: unknown keyword arguments (naming the allowed ones), a failing constructor, or
            missing protocol members.
    """
    cls = import_target(options.target)
    kwargs = options.kwargs
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            allowed = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise ValueError(f"task {options.target!r}: {err}; allowed keys: {', '.join(allowed) or 'none'}") from None
    try:
        task = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task {options.target!r} refused its arguments: {err}") from None
    missing = [m for m in ("vocab_size", "seq_len", "batch") if not hasattr(task, m)]
    if missing:
        raise ValueError(f"task {options.target!r} lacks {', '.join(missing)} (see lotsim.tasks.Task)")
    if not hasattr(task, "metrics"):
        task.metrics = masked_metrics
    if not hasattr(task, "name"):
        task.name = type(task).__name__
    return task
