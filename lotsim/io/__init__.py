"""Trajectory I/O: H5MD 1.1 files (numpy + h5py only; never imports torch).

See :mod:`lotsim.io.h5md` for the file layout and the resume protocol.
"""

from __future__ import annotations

from lotsim.io.h5md import (
    DEFAULT_GROUP,
    H5MDFormatError,
    ResumeState,
    Trajectory,
    TrajectoryWriter,
    chunk_frames_for,
    observable_path,
    open_trajectory,
    read_state,
)

__all__ = [
    "DEFAULT_GROUP",
    "H5MDFormatError",
    "ResumeState",
    "Trajectory",
    "TrajectoryWriter",
    "chunk_frames_for",
    "observable_path",
    "open_trajectory",
    "read_state",
]
