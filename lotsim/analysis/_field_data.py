"""Reading what a phase-field figure shows from a trajectory: one frame (snapshot), a decimated
space-time block (streamed), or the frames of a movie (streamed while the file stays open), with
the node positions, natural frequencies and bonds the drawer uses; and the co-rotating frame of a
space-time diagram.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lotsim.analysis._group import open_group
from lotsim.analysis._run import (
    RunInfo,
    check_frame,
    check_replica,
    decimate,
    node_positions,
    read_run_info,
    stream_blocks,
)


@dataclass
class FieldData:
    """What the phase-field drawer needs besides the phases.

    Attributes:
        info: The run.
        positions: [N, d] node positions, or None (no geometry).
        omega: [N] natural frequencies of the replica, or None (not stored).
        edges: [E, 2] lattice bonds, or None (none stored).
    """

    info: RunInfo
    positions: np.ndarray | None
    omega: np.ndarray | None
    edges: np.ndarray | None


def _edges(traj) -> np.ndarray | None:
    edges, _ = traj.edges
    return edges if edges.shape[0] else None



def _omega(traj, info: RunInfo, replica: int) -> np.ndarray | None:
    try:
        omega = np.asarray(traj.node_data("natural_frequency"), dtype=np.float64)
    except KeyError:
        return None
    return omega[replica] if omega.ndim == 2 else omega



def _field_data(traj, info: RunInfo, replica: int) -> FieldData:
    return FieldData(info, node_positions(traj, info), _omega(traj, info, replica), _edges(traj))


def read_snapshot(path: str | Path, frame: int, replica: int, group: str | None) -> tuple[FieldData, int, np.ndarray]:
    """``(field, frame index, theta [N] float64)`` of one frame and replica.

    Raises:
        ValueError: Bad file, frame or replica.
    """
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        index = check_frame(info, frame)
        theta = np.asarray(traj.phase[index, replica], dtype=np.float64)
        return _field_data(traj, info, replica), index, theta


def read_spacetime(path: str | Path, replica: int, max_rows: int, group: str | None
                   ) -> tuple[RunInfo, np.ndarray, np.ndarray]:
    """``(info, frames kept [F], phases [F, N])`` of one replica: at most ``max_rows`` evenly spaced
    frames, streamed."""
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        keep = decimate(info.n_frames, max_rows)
        rows = np.empty((keep.size, info.n_nodes))
        for frames, block in stream_blocks(traj, info.n_frames):
            sel = (keep >= frames.start) & (keep < frames.stop)
            rows[sel] = block[keep[sel] - frames.start, replica]
    return info, keep, rows


@contextlib.contextmanager
def movie_frames(path: str | Path, replica: int, max_frames: int, group: str | None
                 ) -> Iterator[tuple[FieldData, np.ndarray, Iterator[tuple[int, np.ndarray]]]]:
    """Open the trajectory for a movie of one replica: yields ``(field, frames kept, frames)`` where
    ``frames`` streams ``(frame index, theta [N])`` for at most ``max_frames`` evenly spaced frames
    (read while the file is open)."""
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        field = _field_data(traj, info, replica)
        keep = decimate(info.n_frames, max_frames)

        def frames() -> Iterator[tuple[int, np.ndarray]]:
            for block_frames, block in stream_blocks(traj, info.n_frames):
                for i in keep[(keep >= block_frames.start) & (keep < block_frames.stop)]:
                    yield int(i), block[i - block_frames.start, replica]

        yield field, keep, frames()


def corotating_frequency(theta: np.ndarray, times: np.ndarray, tol: float = 1e-2) -> float:
    """Frequency Omega of the co-rotating frame of a space-time diagram: the mean effective frequency
    of the largest locked cluster (a chimera's coherent domain), else of all oscillators.

    Args:
        theta: Unwrapped phases [frame, n] of one replica (the frames drawn).
        times: [frame].
    """
    from lotsim import observables as obs

    if theta.shape[0] < 2 or times[-1] == times[0]:
        return 0.0
    omega_eff = obs.effective_frequencies(theta, times, method="endpoints")
    clusters = obs.frequency_clusters(omega_eff, tol)
    return float(clusters.frequencies[0]) if clusters.sizes.size else float(np.mean(omega_eff))

