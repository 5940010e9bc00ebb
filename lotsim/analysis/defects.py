"""``lotsim analyze defects``: topological defects of the phase field, streamed frame block by block.

- Rings: the winding number ``q = (1/2pi) sum_j wrap(theta_{j+1} - theta_j)`` per frame and replica
  (a q-twisted state has q; q changes only through a phase slip).
- 2-D lattices: the charge of every elementary face (plaquette), ``(1/2pi) sum wrap(dtheta)``
  counter-clockwise around it: +1 vortex, -1 antivortex. Square grids (periodic or open) use their
  plaquettes; open triangular/hexagonal lattices (and other planar drawings with 2-D positions) use
  the bounded faces of the drawing. On a torus the net charge is always 0.
  The defect density is (vortices + antivortices) / faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lotsim import observables as obs
from lotsim.analysis._group import open_group
from lotsim.analysis._run import (
    Progress,
    RunInfo,
    check_replica,
    decimate,
    edge_arrays,
    node_positions,
    read_run_info,
    stream_blocks,
)
from lotsim.io import Trajectory


@dataclass
class DefectReport:
    """Result of :func:`analyze_defects`; series are [frame, s] over the selected replicas.

    Attributes:
        kind: ``"ring"`` (winding numbers) or ``"plaquette"`` (vortices on a 2-D lattice).
        winding: Winding number per frame (rings) or None.
        vortices, antivortices: Counts per frame (2-D) or None.
        n_faces: Number of faces (2-D).
        faces, centres: Face node indices [f, L] and centres [f, 2] (2-D).
        final_charges: Face charges of the final frame [s, f] (2-D).
        final_phase: Phases of the final frame [s, N] (for plots).
        positions: Node positions [N, d] for plots (None without geometry).
        group: The particles group analysed when one was asked for, else None.
    """

    info: RunInfo
    replicas: list[int]
    kind: str
    winding: np.ndarray | None = None
    vortices: np.ndarray | None = None
    antivortices: np.ndarray | None = None
    n_faces: int = 0
    faces: np.ndarray | None = None
    centres: np.ndarray | None = None
    final_charges: np.ndarray | None = None
    final_phase: np.ndarray | None = None
    positions: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    group: str | None = None

    @property
    def density(self) -> np.ndarray | None:
        if self.vortices is None:
            return None
        return (self.vortices + self.antivortices) / self.n_faces

    def to_dict(self, max_points: int = 1000) -> dict:
        info = self.info
        keep = decimate(info.n_frames, max_points)
        rows = []
        for k, rep in enumerate(self.replicas):
            row = {"replica": rep, "coupling": float(info.couplings[rep]) if np.isfinite(info.couplings[rep]) else None,
                   "seed": int(info.seeds[rep])}
            if self.kind == "ring":
                w = self.winding[:, k]
                row.update({"winding_initial": int(w[0]), "winding_final": int(w[-1]),
                            "winding_changes": int(np.count_nonzero(np.diff(w))),
                            "series": {"winding": w[keep].tolist()}})
            else:
                v, a, d = self.vortices[:, k], self.antivortices[:, k], self.density[:, k]
                row.update({"vortices_initial": int(v[0]), "antivortices_initial": int(a[0]),
                            "vortices_final": int(v[-1]), "antivortices_final": int(a[-1]),
                            "net_charge_final": int(v[-1] - a[-1]), "density_final": float(d[-1]),
                            "series": {"vortices": v[keep].tolist(), "antivortices": a[keep].tolist(),
                                       "density": d[keep].tolist()}})
            rows.append(row)
        return {"file": str(info.path), "lattice": info.label, "kind": self.kind, "n": info.n_nodes,
                "n_frames": info.n_frames, "n_faces": self.n_faces if self.kind != "ring" else None,
                "time": info.times[keep].tolist(), "replicas": rows, "warnings": list(self.warnings),
                "group": self.group}


def lattice_faces(traj: Trajectory, info: RunInfo) -> tuple[np.ndarray, np.ndarray]:
    """Counter-clockwise faces [f, L] and centres [f, 2] of a run's 2-D lattice.

    Raises:
        ValueError: The lattice has no 2-D faces this module can find (complete graph, 3-D, periodic
            triangular/hexagonal, graphs without positions).
    """
    topo = info.topology
    if topo == "square" or (topo == "hypercubic" and len(info.shape) == 2):
        if len(info.shape) != 2:
            raise ValueError(f"{info.path}: square lattice without a 2-D shape in its recipe")
        return obs.square_plaquettes(info.shape, info.periodic)
    if topo in ("triangular", "hexagonal") and info.periodic:
        raise ValueError(f"{info.path}: vortices on periodic {topo} lattices are not supported (their faces wrap); "
                         "simulate with --open, or use a square lattice")
    try:
        positions = np.asarray(traj.node_data("position"), dtype=np.float64)
    except KeyError:
        positions = np.zeros((info.n_nodes, 0))
    if topo == "complete":
        raise ValueError(f"{info.path}: a complete graph has no spatial structure, so no winding numbers or vortices; "
                         "defects need a ring or a 2-D lattice")
    if positions.ndim != 2 or positions.shape[1] != 2 or topo in ("ring", "chain"):
        dim = positions.shape[-1] if positions.ndim == 2 else 0
        has = f"{dim}-D node positions" if dim else "no node positions"
        raise ValueError(f"{info.path}: defects need a ring (winding number) or a 2-D lattice (vortices); "
                         f"this {topo} run has {has}")
    senders, receivers, _ = edge_arrays(traj)
    return obs.planar_faces(positions, senders, receivers)


def analyze_defects(path, *, replica: int | None = None, chunk_frames: int | None = None,
                    progress: Progress | None = None, group: str | None = None) -> DefectReport:
    """Winding numbers (rings) or vortex counts (2-D lattices) for every frame.

    Args:
        path: The trajectory.
        replica: One replica (default: all).
        chunk_frames: Frames per streamed block.
        progress: Called as ``progress(frames_done, n_frames)``.
        group: The particles group (default: the file's oscillators; e.g. ``layer_00`` of telemetry).

    Raises:
        ValueError: Bad file, group or replica, or a lattice without defects of either kind.
    """
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        reps = check_replica(info, replica)
        n_frames, s = info.n_frames, len(reps)
        if info.topology == "ring":
            winding = np.empty((n_frames, s), dtype=np.int64)
            for frames, block in stream_blocks(traj, n_frames, chunk_frames, progress):
                winding[frames] = obs.winding_number(block[:, reps])
                final_phase = block[-1, reps]
            return DefectReport(info=info, replicas=reps, kind="ring", winding=winding, final_phase=final_phase,
                                warnings=list(info.warnings), group=group)
        if info.topology == "chain":
            raise ValueError(f"{info.path}: a chain (open ends) has no winding number; "
                             "simulate a ring (--topology ring)")
        faces, centres = lattice_faces(traj, info)
        vort = np.empty((n_frames, s), dtype=np.int64)
        anti = np.empty((n_frames, s), dtype=np.int64)
        charges = final_phase = None
        for frames, block in stream_blocks(traj, n_frames, chunk_frames, progress):
            charges = obs.face_charges(block[:, reps], faces)  # [f, s, faces]
            vort[frames] = np.clip(charges, 0, None).sum(axis=-1, dtype=np.int64)  # a charge q counts |q| times
            anti[frames] = np.clip(-charges, 0, None).sum(axis=-1, dtype=np.int64)
            final_phase = block[-1, reps]
        return DefectReport(info=info, replicas=reps, kind="plaquette", vortices=vort, antivortices=anti,
                            n_faces=int(faces.shape[0]), faces=faces, centres=centres, final_charges=charges[-1],
                            final_phase=final_phase, positions=node_positions(traj, info),
                            warnings=list(info.warnings), group=group)
