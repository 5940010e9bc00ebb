"""Trajectory I/O: H5MD 1.1 files (numpy + h5py only; never imports torch).

``layout`` names the file's groups, attributes and versions; ``writer`` streams frames with flat memory
through one chunk-sized buffer per group (``frames``); ``resume`` stores and reads the resume
checkpoint; ``reader`` gives lazy read access.
"""

from __future__ import annotations

from lotsim.io.layout import DEFAULT_GROUP, H5MDFormatError, OutputExistsError, chunk_frames_for, observable_path
from lotsim.io.reader import Trajectory, open_trajectory
from lotsim.io.resume import ResumeState, read_state
from lotsim.io.writer import TrajectoryWriter

__all__ = [
    "DEFAULT_GROUP",
    "H5MDFormatError",
    "OutputExistsError",
    "ResumeState",
    "Trajectory",
    "TrajectoryWriter",
    "chunk_frames_for",
    "observable_path",
    "open_trajectory",
    "read_state",
]
