"""What an analysis needs to know about a trajectory file, read once: frames, replicas, the resolved
recipe (topology, shape, normalisation, frequencies, ...), couplings and seeds, and whether the file
looks complete. Phases are never loaded here; :func:`stream_blocks` yields them chunk by chunk.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lotsim.config import RecipeError, SimulationRecipe, recipe_to_dict, validate_recipe
from lotsim.io import Trajectory
from lotsim.lattice import GRID_TOPOLOGIES, grid_shape, row_scale, sheet_positions

Progress = Callable[[int, int], None]


@dataclass
class RunInfo:
    """Static facts about a trajectory (see :func:`read_run_info`).

    Attributes:
        path: The file.
        n_frames: Frames readable in every time-dependent dataset of the group.
        n_replicas, n_nodes: R and N.
        times, steps: [frame] arrays (length ``n_frames``).
        spec: The stored recipe validated into the typed :class:`~lotsim.config.SimulationRecipe`
            (None if the file has none or it does not validate; ``warnings`` says which).
        couplings, seeds: [R] (nan / -1 when not stored).
        unwrapped: Phases stored unwrapped.
        warnings: One-line warnings for the user (partial file, wrapped phases, ...).
    """

    path: Path
    n_frames: int
    n_replicas: int
    n_nodes: int
    times: np.ndarray
    steps: np.ndarray
    spec: SimulationRecipe | None
    couplings: np.ndarray
    seeds: np.ndarray
    unwrapped: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe as a nested dict ({} without one)."""
        return {} if self.spec is None else recipe_to_dict(self.spec)

    def section(self, name: str) -> dict[str, Any]:
        value = self.recipe.get(name, {})
        return value if isinstance(value, dict) else {}

    @property
    def topology(self) -> str:
        """Lattice topology from the recipe, ``"unknown"`` without one."""
        return "unknown" if self.spec is None else self.spec.lattice.topology

    @property
    def periodic(self) -> bool:
        return True if self.spec is None else self.spec.lattice.periodic

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape (rows, cols) for grids, (n,) for rings/chains, () when unknown."""
        if self.spec is None:
            return ()
        lat = self.spec.lattice
        if lat.shape:
            return tuple(lat.shape)
        if lat.topology in GRID_TOPOLOGIES:
            try:
                return grid_shape(lat.topology, lat.n, None)[0]
            except ValueError:
                return ()
        if lat.topology in ("ring", "chain", "complete"):
            return (self.n_nodes,)
        return ()

    @property
    def normalization(self) -> str:
        return "unknown" if self.spec is None else self.spec.dynamics.normalization

    @property
    def harmonics(self) -> tuple[float, ...]:
        return (1.0,) if self.spec is None else tuple(self.spec.dynamics.harmonics)

    @property
    def frustration(self) -> tuple[float, ...]:
        value = 0.0 if self.spec is None else self.spec.dynamics.frustration
        return tuple(float(a) for a in (value if isinstance(value, list) else [value]))

    @property
    def complete(self) -> bool:
        return self.topology == "complete"

    @property
    def label(self) -> str:
        """A short run name for titles: file name and lattice."""
        shape = "x".join(map(str, self.shape)) if self.shape and self.topology not in ("ring", "chain", "complete") \
            else f"N={self.n_nodes}"
        topo = self.topology if self.topology != "unknown" else "graph"
        # boundary conditions mean something on grids only (a ring is periodic, a chain open by name)
        grid = self.topology in ("square", "triangular", "hexagonal", "hypercubic")
        bc = "" if not grid else (" periodic" if self.periodic else " open")
        return f"{self.path.name} ({topo} {shape}{bc})"


def _recipe(traj: Trajectory) -> tuple[SimulationRecipe | None, str | None]:
    """The stored recipe, validated; or None and why (a warning) when it is missing or invalid."""
    text = traj.recipe_toml
    data: dict[str, Any] = {}
    if text.strip():
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            data = {}
    if not data:
        data = {k: v for k, v in traj.parameters.items() if isinstance(v, dict)}
    if not data:
        return None, None
    try:
        return validate_recipe(SimulationRecipe, data), None
    except RecipeError as err:
        return None, f"{traj.path.name}: the stored recipe does not validate ({err}); analysing without it"


def read_run_info(traj: Trajectory) -> RunInfo:
    """Read the static facts of an open trajectory; warns (in ``warnings``) about a partial file.

    Raises:
        ValueError: The file has no phases or no frames.
    """
    if not traj.groups:
        raise ValueError(f"{traj.path}: no particles group with phases; not a lotsim trajectory")
    try:
        phase = traj.phase
    except KeyError as err:
        raise ValueError(str(err).strip("'\"")) from None
    steps, times = traj.steps, traj.times
    n = min(phase.shape[0], steps.shape[0], times.shape[0])
    if n == 0:
        raise ValueError(f"{traj.path}: the trajectory has no frames")
    _, n_rep, n_nodes = phase.shape
    spec, problem = _recipe(traj)
    info = RunInfo(
        path=traj.path, n_frames=n, n_replicas=n_rep, n_nodes=n_nodes, times=times[:n], steps=steps[:n],
        spec=spec, couplings=_replica(traj, "coupling", n_rep, np.nan, np.float64),
        seeds=_replica(traj, "seed", n_rep, -1, np.int64), unwrapped=traj.unwrapped,
    )
    if problem is not None:
        info.warnings.append(problem)
    expected = None if spec is None else spec.n_frames
    if expected is not None and n < expected:
        info.warnings.append(f"{traj.path.name} holds {n} of {expected} frames (killed or partial run?); "
                             f"analysing up to t={times[n - 1]:g}")
    if not info.unwrapped:
        info.warnings.append(f"{traj.path.name} stores wrapped phases; effective frequencies assume less than "
                             "half a turn per oscillator between stored frames")
    return info


def _replica(traj: Trajectory, name: str, n_rep: int, fill, dtype) -> np.ndarray:
    try:
        values = np.asarray(traj.replica_data(name), dtype=dtype).reshape(n_rep, -1)[:, 0]
    except KeyError:
        values = np.full(n_rep, fill, dtype=dtype)
    return values


def stream_blocks(traj: Trajectory, n_frames: int, chunk_frames: int | None = None,
                  progress: Progress | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Phase blocks ``(frames, [f, R, N] float64)`` from :meth:`Trajectory.iter_frames`, stopping at
    ``n_frames`` (a crashed writer may leave the phase dataset longer than its time column)."""
    for frames, block in traj.iter_frames(chunk_frames=chunk_frames):
        if frames.start >= n_frames:
            break
        stop = min(frames.stop, n_frames)
        yield slice(frames.start, stop), np.asarray(block[: stop - frames.start], dtype=np.float64)
        if progress is not None:
            progress(stop, n_frames)


def frame_index(info: RunInfo, time: float) -> int:
    """First frame at or after ``time``.

    Raises:
        ValueError: ``time`` lies beyond the last frame.
    """
    if not math.isfinite(time) or time < info.times[0] - 1e-12:
        raise ValueError(f"time {time:g} is outside the run (t = {info.times[0]:g} .. {info.times[-1]:g})")
    if time > info.times[-1] + 1e-12:
        raise ValueError(f"--transient {time:g} is beyond the last frame (t = {info.times[-1]:g})")
    return int(np.searchsorted(info.times, time - 1e-12 * max(1.0, abs(time))))


def check_replica(info: RunInfo, replica: int | None) -> list[int]:
    """The replicas to analyse: all, or the one asked for (ValueError if out of range)."""
    if replica is None:
        return list(range(info.n_replicas))
    if not 0 <= replica < info.n_replicas:
        raise ValueError(f"--replica {replica} is out of range; the file has replicas 0..{info.n_replicas - 1}")
    return [replica]


def check_frame(info: RunInfo, frame: int) -> int:
    """A frame index (negative counts from the end); ValueError if out of range."""
    index = frame + info.n_frames if frame < 0 else frame
    if not 0 <= index < info.n_frames:
        raise ValueError(f"--frame {frame} is out of range; the file has frames 0..{info.n_frames - 1} "
                         f"(or -1 for the last)")
    return index


def decimate(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spaced samples of ``range(n)``, always keeping the last."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


# ------------------------------------------------------------------------------------- geometry


def node_positions(traj: Trajectory, info: RunInfo) -> np.ndarray | None:
    """Node positions [N, d] for drawing: stored ones, or for periodic triangular/hexagonal lattices
    (stored without geometry) the unwrapped-sheet positions rebuilt with networkx; None if the graph
    has no geometry (complete, random graphs)."""
    try:
        pos = np.asarray(traj.node_data("lattice_position"), dtype=np.float64)
    except KeyError:
        pos = np.zeros((info.n_nodes, 0))
    if pos.ndim == 2 and pos.shape == (info.n_nodes, pos.shape[1]) and pos.shape[1] > 0:
        return pos
    if info.topology in ("triangular", "hexagonal") and len(info.shape) == 2:
        positions = sheet_positions(info.topology, info.shape, info.periodic)
        if positions.shape[0] == info.n_nodes:
            return positions
    return None


def edge_arrays(traj: Trajectory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(senders [e], receivers [e], A_ij weights [e]) from ``/connectivity`` (ones if unweighted)."""
    edges, weights = traj.edges
    if edges.shape[0] == 0:
        raise ValueError(f"{traj.path}: no lattice edges stored (/connectivity)")
    w = np.ones(edges.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return edges[:, 0], edges[:, 1], w


def coupling_weights(info: RunInfo, receivers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[e] coupling-matrix entries ``W_ij = row_scale[i] * A_ij`` of the stored edges, with the
    simulator's own normalisation rule (:func:`lotsim.lattice.row_scale`) on their in-degrees."""
    if info.normalization == "unknown":
        raise ValueError(f"{info.path}: unknown coupling normalisation (no recipe stored?)")
    in_degree = np.bincount(receivers, weights=weights, minlength=info.n_nodes)
    return row_scale(info.normalization, in_degree)[receivers] * weights


def complete_scale(info: RunInfo) -> float:
    """Factor c such that a complete-graph run with coupling K has W_ij = c K / N (mean-field: 1,
    degree: N/(N-1), none: N)."""
    n = info.n_nodes
    if info.normalization == "unknown":
        raise ValueError(f"{info.path}: unknown coupling normalisation (no recipe stored?)")
    if n < 2:
        return 1.0
    return n * float(row_scale(info.normalization, np.full(n, n - 1.0))[0])
