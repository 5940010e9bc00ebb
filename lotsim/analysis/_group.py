"""Open a trajectory with one particles group as the default of every group argument.

``lotsim simulate`` files have one group (``oscillators``); training telemetry (``telemetry.h5`` of a
``lotsim train`` run) has one per layer (``layer_00``, ``layer_01``, ...: frame = training step,
replica = probe token, node = head). The analyses read "the" group; :func:`open_group` makes that the
one asked for, so every analysis works on any group without a group argument of its own.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

from lotsim.io import Trajectory, open_trajectory


class GroupView:
    """A :class:`~lotsim.io.Trajectory` whose methods read ``group`` unless told otherwise.

    Telemetry stores head positions as ``lattice_position``; ``node_data("position")`` falls back
    to it, so snapshots draw the head lattice.
    """

    def __init__(self, traj: Trajectory, group: str):
        if group not in traj.groups:
            traj.close()
            raise ValueError(f"{traj.path}: no particles group {group!r}; the file has {', '.join(traj.groups)}")
        self._traj, self._default = traj, group

    def __getattr__(self, name: str):
        attr = getattr(self._traj, name)
        if callable(attr) and "group" in inspect.signature(attr).parameters:
            @functools.wraps(attr)
            def bound(*args, group: str | None = None, **kwargs):
                return attr(*args, group=group or self._default, **kwargs)

            return bound
        return attr

    def node_data(self, name: str, group: str | None = None):
        try:
            return self._traj.node_data(name, group or self._default)
        except KeyError:
            if name != "position":
                raise
            return self._traj.node_data("lattice_position", group or self._default)

    def __enter__(self) -> GroupView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._traj.close()


def open_group(path: str | Path, group: str | None = None) -> Trajectory | GroupView:
    """:func:`~lotsim.io.open_trajectory`, with ``group`` (if given) as every method's default group.

    Raises:
        ValueError: the file has no such particles group (one line listing the groups it has).
    """
    traj = open_trajectory(path)
    return traj if group is None else GroupView(traj, group)
