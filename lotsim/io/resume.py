"""The resume checkpoint of a trajectory file: full-precision integrator state at ``/lotsim/state``.

Protocol: the writer flushes its pending frames and then calls :func:`store_state` (which overwrites
``/lotsim/state``), then flushes the file, so the checkpoint always matches the frames on disk.
``--resume`` reads it back with :func:`read_state`, reopens the file with
``TrajectoryWriter(path, mode="a")``, drops the frames written after the checkpoint
(``truncate_after(state.step)``) and continues appending; the result equals an uninterrupted run.

Layout::

    /lotsim/state/                     theta, (velocity), extra/<name>;
                                       attrs step, time, groups, frames_written
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lotsim.io.layout import H5MDFormatError, check_name, open_h5md

STATE = "lotsim/state"


@dataclass
class ResumeState:
    """Full-precision integrator state stored at ``/lotsim/state`` by :meth:`TrajectoryWriter.write_state`.

    Attributes:
        theta: Phases, as written (typically [replica, node], float64 or the simulation dtype).
        velocity: Phase velocities for second-order (inertial) dynamics, or None.
        step: Integrator step of the checkpoint.
        time: Simulation time of the checkpoint.
        extra: Small named arrays (e.g. RNG state); values stored from ``bytes`` come back as ``bytes``.
        frames_written: Frames on disk per particles group when the checkpoint was taken.
    """

    theta: np.ndarray
    velocity: np.ndarray | None
    step: int
    time: float
    extra: dict[str, Any] = field(default_factory=dict)
    frames_written: dict[str, int] = field(default_factory=dict)


def store_state(
    file: h5py.File,
    theta: np.ndarray,
    *,
    step: int,
    time: float,
    velocity: np.ndarray | None,
    extra: dict[str, np.ndarray | bytes] | None,
    frames_written: dict[str, int],
) -> None:
    """Overwrite ``/lotsim/state`` in an open file (the caller flushes frames before and the file after).

    Args:
        file: The trajectory file, open for writing.
        theta: Full-precision phases (e.g. [R, N] float64); stored with their own dtype.
        step: Integrator step of ``theta``.
        time: Simulation time of ``theta``.
        velocity: Optional phase velocities (inertial dynamics).
        extra: Small named arrays (e.g. RNG state); ``bytes`` values round-trip as ``bytes``.
        frames_written: Frames on disk per particles group.
    """
    state = file.require_group(STATE)
    _put(state, "theta", np.asarray(theta))
    if velocity is not None:
        _put(state, "velocity", np.asarray(velocity))
    elif "velocity" in state:
        del state["velocity"]
    extra_group = state.require_group("extra")
    extra = dict(extra or {})
    for name in set(extra_group) - set(extra):
        del extra_group[name]
    for name, value in extra.items():
        check_name(name, "extra")
        is_bytes = isinstance(value, bytes | bytearray)
        arr = np.frombuffer(bytes(value), dtype=np.uint8) if is_bytes else np.asarray(value)
        _put(extra_group, name, arr).attrs["bytes"] = is_bytes
    groups = list(frames_written)
    state.attrs["step"] = np.int64(step)
    state.attrs["time"] = np.float64(time)
    state.attrs["groups"] = np.array([g.encode() for g in groups] or [b""], dtype="S")
    state.attrs["frames_written"] = np.array([frames_written[g] for g in groups] or [0], dtype=np.int64)


def _put(group: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
    # Overwrite in place when the layout matches: deleting datasets leaks file space on every checkpoint.
    if name in group:
        ds = group[name]
        if ds.shape == arr.shape and ds.dtype == arr.dtype:
            ds[...] = arr
            return ds
        del group[name]
    return group.create_dataset(name, data=arr)


def read_state(path: str | Path) -> ResumeState:
    """Read the resume checkpoint written by :meth:`TrajectoryWriter.write_state`.

    Args:
        path: H5MD file.

    Returns:
        The :class:`ResumeState`.

    Raises:
        H5MDFormatError: Not an H5MD 1.1 file, or no ``/lotsim/state`` in it.
    """
    with open_h5md(path) as f:
        if f"{STATE}/theta" not in f:
            raise H5MDFormatError(f"{path}: no /lotsim/state checkpoint (never written with write_state)")
        state = f[STATE]
        extra: dict[str, Any] = {}
        for name, ds in state.get("extra", {}).items():
            extra[name] = ds[()].tobytes() if bool(ds.attrs.get("bytes", False)) else ds[()]
        groups = [g.decode() for g in state.attrs["groups"] if g]
        counts = [int(n) for n in state.attrs["frames_written"]]
        return ResumeState(
            theta=state["theta"][()],
            velocity=state["velocity"][()] if "velocity" in state else None,
            step=int(state.attrs["step"]),
            time=float(state.attrs["time"]),
            extra=extra,
            frames_written=dict(zip(groups, counts)),
        )
