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

from lotsim.io import Trajectory

Progress = Callable[[int, int], None]


@dataclass
class RunInfo:
    """Static facts about a trajectory (see :func:`read_run_info`).

    Attributes:
        path: The file.
        n_frames: Frames readable in every time-dependent dataset of the group.
        n_replicas, n_nodes: R and N.
        times, steps: [frame] arrays (length ``n_frames``).
        recipe: The resolved recipe as a nested dict ({} if the file has none).
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
    recipe: dict[str, Any]
    couplings: np.ndarray
    seeds: np.ndarray
    unwrapped: bool
    warnings: list[str] = field(default_factory=list)

    def section(self, name: str) -> dict[str, Any]:
        value = self.recipe.get(name, {})
        return value if isinstance(value, dict) else {}

    @property
    def topology(self) -> str:
        """Lattice topology from the recipe, ``"unknown"`` without one."""
        return str(self.section("lattice").get("topology", "unknown"))

    @property
    def periodic(self) -> bool:
        return bool(self.section("lattice").get("periodic", True))

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape (rows, cols) for grids, (n,) for rings/chains, () when unknown."""
        lat = self.section("lattice")
        if lat.get("shape"):
            return tuple(int(s) for s in lat["shape"])
        if self.topology in ("square", "triangular", "hypercubic") and lat.get("n"):
            side = math.isqrt(int(lat["n"]))
            return (side, side)
        if self.topology in ("ring", "chain", "complete"):
            return (self.n_nodes,)
        return ()

    @property
    def normalization(self) -> str:
        return str(self.section("dynamics").get("normalization", "unknown"))

    @property
    def harmonics(self) -> tuple[float, ...]:
        return tuple(float(h) for h in self.section("dynamics").get("harmonics", [1.0]))

    @property
    def frustration(self) -> tuple[float, ...]:
        value = self.section("dynamics").get("frustration", 0.0)
        return tuple(float(a) for a in (value if isinstance(value, list) else [value]))

    @property
    def complete(self) -> bool:
        return self.topology == "complete"

    @property
    def label(self) -> str:
        """A short run name for titles: file name and lattice."""
        lat = self.section("lattice")
        shape = "x".join(map(str, self.shape)) if self.shape and self.topology not in ("ring", "chain", "complete") \
            else f"N={self.n_nodes}"
        topo = self.topology if self.topology != "unknown" else "graph"
        # boundary conditions mean something on grids only (a ring is periodic, a chain open by name)
        grid = self.topology in ("square", "triangular", "hexagonal", "hypercubic")
        bc = "" if not grid else (" periodic" if lat.get("periodic", True) else " open")
        return f"{self.path.name} ({topo} {shape}{bc})"


def _recipe(traj: Trajectory) -> dict[str, Any]:
    text = traj.recipe_toml
    if text.strip():
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            pass
    return {k: v for k, v in traj.parameters.items() if isinstance(v, dict)}


def _expected_frames(recipe: dict[str, Any]) -> int | None:
    dyn, out = recipe.get("dynamics", {}), recipe.get("output", {})
    save_every = int(out.get("save_every", 0) or 0)
    if save_every < 1 or not isinstance(dyn, dict):
        return None
    if dyn.get("steps") is not None:
        total = int(dyn["steps"])
    elif dyn.get("t_max") is not None and dyn.get("dt"):
        total = max(1, round(float(dyn["t_max"]) / float(dyn["dt"])))
    else:
        return None
    return total // save_every + 1 + (1 if total % save_every else 0)


def read_run_info(traj: Trajectory) -> RunInfo:
    """Read the static facts of an open trajectory; warns (in ``warnings``) about a partial file.

    Raises:
        ValueError: The file has no phases or no frames.
    """
    if not traj.groups:
        raise ValueError(f"{traj.path}: no particles group with phases; not a lotsim trajectory")
    try:
        phase = traj.phase()
    except KeyError as err:
        raise ValueError(str(err).strip("'\"")) from None
    steps, times = traj.steps(), traj.times()
    n = min(phase.shape[0], steps.shape[0], times.shape[0])
    if n == 0:
        raise ValueError(f"{traj.path}: the trajectory has no frames")
    _, n_rep, n_nodes = phase.shape
    recipe = _recipe(traj)
    info = RunInfo(
        path=traj.path, n_frames=n, n_replicas=n_rep, n_nodes=n_nodes, times=times[:n], steps=steps[:n],
        recipe=recipe, couplings=_replica(traj, "coupling", n_rep, np.nan, np.float64),
        seeds=_replica(traj, "seed", n_rep, -1, np.int64), unwrapped=traj.unwrapped,
    )
    expected = _expected_frames(recipe)
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
        pos = np.asarray(traj.node_data("position"), dtype=np.float64)
    except KeyError:
        pos = np.zeros((info.n_nodes, 0))
    if pos.ndim == 2 and pos.shape == (info.n_nodes, pos.shape[1]) and pos.shape[1] > 0:
        return pos
    if info.topology in ("triangular", "hexagonal") and len(info.shape) == 2:
        import networkx as nx

        from lotsim.lattice import sorted_graph

        builder = nx.triangular_lattice_graph if info.topology == "triangular" else nx.hexagonal_lattice_graph
        g = nx.Graph(sorted_graph(builder(*info.shape, periodic=info.periodic, with_positions=True)))
        if g.number_of_nodes() == info.n_nodes:
            return np.array([g.nodes[v]["pos"] for v in g.nodes], dtype=np.float64)
    return None


def edge_arrays(traj: Trajectory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(senders [e], receivers [e], A_ij weights [e]) from ``/connectivity`` (ones if unweighted)."""
    edges, weights = traj.edges()
    if edges.shape[0] == 0:
        raise ValueError(f"{traj.path}: no lattice edges stored (/connectivity)")
    w = np.ones(edges.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return edges[:, 0], edges[:, 1], w


def row_scale(info: RunInfo, receivers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N] factor of each row of W = row_scale[:, None] * A for the run's normalisation."""
    norm = info.normalization
    if norm == "mean-field":
        return np.full(info.n_nodes, 1.0 / info.n_nodes)
    if norm == "degree":
        degree = np.bincount(receivers, weights=weights, minlength=info.n_nodes)
        return np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    if norm == "none":
        return np.ones(info.n_nodes)
    raise ValueError(f"{info.path}: unknown coupling normalisation {norm!r} (no recipe stored?)")


def complete_scale(info: RunInfo) -> float:
    """Factor c such that a complete-graph run with coupling K has W_ij = c K / N (mean-field: 1,
    degree: N/(N-1), none: N)."""
    n = info.n_nodes
    scale = {"mean-field": 1.0, "degree": n / (n - 1) if n > 1 else 1.0, "none": float(n)}.get(info.normalization)
    if scale is None:
        raise ValueError(f"{info.path}: unknown coupling normalisation {info.normalization!r} (no recipe stored?)")
    return scale
