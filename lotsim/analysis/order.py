"""``lotsim analyze order``: order parameters, locking and the Lyapunov potential of a run.

One streaming pass over the phases (``Trajectory.iter_frames``; memory flat in frames) computes, per
frame and replica, the harmonics r_m and psi_m, the mean local order parameter and the potential V;
the same pass accumulates least-squares effective frequencies over each replica's stationary
window. The window starts after the transient: given (``transient`` time) or detected from r(t)
with :func:`lotsim.observables.detect_transient` (read from the stored ``order_parameter``
observable, or from one extra streaming pass when the file has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lotsim import observables as obs
from lotsim.analysis._group import open_group
from lotsim.analysis._run import (
    Progress,
    RunInfo,
    check_replica,
    complete_scale,
    coupling_weights,
    decimate,
    edge_arrays,
    frame_index,
    read_run_info,
    stream_blocks,
)
from lotsim.analysis.theory import Theory, theory_for_run
from lotsim.io import Trajectory
from lotsim.lattice import NORMALIZATIONS

TRANSIENT_RULE = ("first frame after which the trailing running mean of r (5% of the frames) stays within "
                  "max(3 sd, 0.01) of the mean of r over the last 25% of the frames")


@dataclass
class OrderReport:
    """Result of :func:`analyze_order`. Arrays are over the selected ``replicas`` (axis ``s``).

    Attributes:
        info: The run.
        replicas: Selected replica indices [s].
        r, psi: r_1(t), psi_1(t) [frame, s].
        r_harmonics: r_m(t) [frame, s, M].
        local: Node-mean local order parameter [frame, s], or None without edges.
        potential: V(t) [frame, s], or None (see ``potential_reason``).
        potential_reason: Why V is not defined (None when it is).
        potential_monotone_expected: V must not increase (identical omega, no noise, no inertia).
        start: First frame of each replica's stationary window [s].
        transient_detected: True if the windows were detected, False if given.
        omega_eff: Effective frequencies [s, N] (None if a window has fewer than two frames).
        omega: Natural frequencies [s, N] (None if not stored).
        clusters: Locked clusters per replica.
        theory: Mean-field theory (complete graph) or None; ``theory_reason`` says why not.
        group: The particles group analysed when one was asked for (e.g. ``layer_00``), else None.
    """

    info: RunInfo
    replicas: list[int]
    r: np.ndarray
    psi: np.ndarray
    r_harmonics: np.ndarray
    local: np.ndarray | None
    potential: np.ndarray | None
    potential_reason: str | None
    potential_monotone_expected: bool
    start: np.ndarray
    transient_detected: bool
    omega_eff: np.ndarray | None
    omega: np.ndarray | None
    clusters: list[obs.LockedClusters]
    tol: float
    frequency_method: str
    theory: Theory | None
    theory_reason: str | None
    warnings: list[str] = field(default_factory=list)
    group: str | None = None

    @property
    def times(self) -> np.ndarray:
        return self.info.times

    def stationary(self, series: np.ndarray, k: int) -> np.ndarray:
        """Column k of a [frame, s, ...] series over replica k's stationary window."""
        return series[self.start[k]:, k]

    def to_dict(self, max_points: int = 1000) -> dict:
        """The ``--json`` object (time series decimated to at most ``max_points`` samples)."""
        info, n = self.info, self.info.n_nodes
        keep = decimate(info.n_frames, max_points)
        rows = []
        for k, rep in enumerate(self.replicas):
            r_st = self.stationary(self.r, k)
            row = {
                "replica": rep, "coupling": _num(info.couplings[rep]), "seed": int(info.seeds[rep]),
                "transient": {"time": float(info.times[self.start[k]]), "frame": int(self.start[k]),
                              "detected": self.transient_detected},
                "window": {"t_start": float(info.times[self.start[k]]), "t_end": float(info.times[-1]),
                           "frames": int(info.n_frames - self.start[k])},
                "r_final": float(self.r[-1, k]), "psi_final": float(self.psi[-1, k]),
                "r_mean": float(r_st.mean()), "r_sd": float(r_st.std()),
                "r_harmonics_mean": [float(v) for v in self.stationary(self.r_harmonics, k).mean(axis=0)],
                "local_order_mean": None if self.local is None else _num(np.nanmean(self.stationary(self.local, k))),
                "chi": float(obs.susceptibility(r_st, n)),
            }
            if self.omega_eff is not None:
                cl = self.clusters[k]
                row.update({
                    "omega_eff_mean": float(self.omega_eff[k].mean()), "omega_eff_sd": float(self.omega_eff[k].std()),
                    "locked_fraction": cl.locked_fraction, "n_locked_clusters": int(cl.sizes.size),
                    "n_coincident_groups": cl.coincident,
                    "clusters": [{"size": int(s), "frequency": float(f), "width": float(w)}
                                 for s, f, w in zip(cl.sizes[:20], cl.frequencies, cl.widths)],
                })
            else:
                row.update({"omega_eff_mean": None, "omega_eff_sd": None, "locked_fraction": None,
                            "n_locked_clusters": None, "n_coincident_groups": None, "clusters": []})
            pot = {"defined": self.potential is not None, "reason": self.potential_reason,
                   "monotone_expected": self.potential_monotone_expected}
            if self.potential is not None:
                v = self.potential[:, k]
                pot.update({"initial": float(v[0]), "final": float(v[-1]),
                            "mean": float(self.stationary(self.potential, k).mean()),
                            "max_increase": float(max(0.0, np.max(np.diff(v), initial=0.0)))})
            row["potential"] = pot
            if self.theory is not None:
                row["r_theory"] = float(self.theory.r(info.couplings[rep]))
            row["series"] = {
                "r": self.r[keep, k].tolist(), "psi": self.psi[keep, k].tolist(),
                "r_harmonics": self.r_harmonics[keep, k].tolist(),
                "local_order": None if self.local is None else _nums(self.local[keep, k]),
                "potential": None if self.potential is None else self.potential[keep, k].tolist(),
            }
            rows.append(row)
        return {
            "file": str(info.path), "lattice": info.label, "n": n, "n_frames": info.n_frames,
            "t_final": float(info.times[-1]), "time": info.times[keep].tolist(),
            "transient_rule": TRANSIENT_RULE if self.transient_detected else "given",
            "frequency_method": self.frequency_method, "lock_tol": self.tol,
            "max_harmonic": int(self.r_harmonics.shape[-1]),
            "theory": None if self.theory is None else {"description": self.theory.describe(), "kc": self.theory.kc},
            "theory_reason": self.theory_reason,
            "replicas": rows, "warnings": list(self.warnings), "group": self.group,
        }


def _num(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _nums(values: np.ndarray) -> list:
    return [_num(v) for v in values]


def order_parameter_series(traj: Trajectory, info: RunInfo, chunk_frames: int | None = None,
                           progress: Progress | None = None) -> np.ndarray:
    """r_1(t) [frame, R]: the stored ``order_parameter`` observable, or computed by streaming."""
    try:
        stored = traj.observable("order_parameter")
        if stored.shape[0] >= info.n_frames and stored.ndim == 2:
            return np.asarray(stored[: info.n_frames], dtype=np.float64)
    except KeyError:
        pass
    r = np.empty((info.n_frames, info.n_replicas))
    for frames, block in stream_blocks(traj, info.n_frames, chunk_frames, progress):
        r[frames] = obs.order_parameter(block)[0]
    return r


def window_starts(info: RunInfo, r: np.ndarray, transient: float | None) -> tuple[np.ndarray, bool]:
    """First stationary frame per column of r [frame, s]: from ``transient`` or detected."""
    if transient is not None:
        return np.full(r.shape[1], frame_index(info, transient), dtype=np.int64), False
    return np.array([obs.detect_transient(r[:, k], info.times) for k in range(r.shape[1])], dtype=np.int64), True


def potential_reason(info: RunInfo, traj: Trajectory) -> str | None:
    """Why the Lyapunov potential is not defined for a run (None when it is): it needs a gradient
    system, i.e. a symmetric coupling matrix W and no frustration."""
    if not info.recipe:
        return "the file stores no recipe (normalisation unknown)"
    if any(a != 0 for a, h in zip(info.frustration * len(info.harmonics), info.harmonics) if h):
        return "frustration (phase lag) makes the dynamics non-gradient: no potential"
    if info.normalization not in NORMALIZATIONS:
        return "the file does not say how the coupling is normalised (not a lotsim simulate run)"
    if info.complete:
        return None
    senders, receivers, weights = edge_arrays(traj)
    w = coupling_weights(info, receivers, weights)
    matrix = sp.csr_array((w, (receivers, senders)), shape=(info.n_nodes, info.n_nodes))
    asym = abs(matrix - matrix.T).max() if matrix.nnz else 0.0
    if asym > 1e-12 * max(1.0, abs(matrix).max()):
        return "the coupling matrix W is not symmetric (directed graph or degree normalisation on an irregular graph)"
    return None


def _natural_frequencies(traj: Trajectory, info: RunInfo, replicas: list[int]) -> np.ndarray | None:
    try:
        omega = np.asarray(traj.node_data("natural_frequency"), dtype=np.float64)
    except KeyError:
        return None
    if omega.shape == (info.n_nodes,):
        omega = np.broadcast_to(omega, (info.n_replicas, info.n_nodes))
    return omega[replicas] if omega.shape == (info.n_replicas, info.n_nodes) else None


def analyze_order(path, *, replica: int | None = None, transient: float | None = None, max_harmonic: int = 4,
                  tol: float = 1e-2, frequency_method: str = "fit", chunk_frames: int | None = None,
                  progress: Progress | None = None, group: str | None = None) -> OrderReport:
    """Order parameters, effective frequencies, locking and the potential of an H5MD run.

    Args:
        path: The trajectory file.
        replica: Analyse one replica (default: all).
        transient: Discard frames before this time (default: detect it per replica).
        max_harmonic: M, harmonics r_1..r_M to report.
        tol: Frequency tolerance of locked clusters (rad per unit time).
        frequency_method: ``fit`` or ``endpoints`` (see :func:`lotsim.observables.effective_frequencies`).
        chunk_frames: Frames per streamed block (default about 4 MiB).
        progress: Called as ``progress(frames_done, n_frames)``.
        group: The particles group (default: the file's oscillators); e.g. ``layer_00`` of training
            telemetry, where frames are training steps, replicas probe tokens and nodes heads.

    Raises:
        ValueError: Bad file, no such group, replica out of range, transient beyond the run, bad options.
    """
    if max_harmonic < 1:
        raise ValueError(f"--max-harmonic must be >= 1, got {max_harmonic}")
    if frequency_method not in ("fit", "endpoints"):
        raise ValueError(f"--frequency-method {frequency_method!r} is not allowed; use fit or endpoints")
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        reps = check_replica(info, replica)
        r_all = order_parameter_series(traj, info, chunk_frames)
        start, detected = window_starts(info, r_all[:, reps], transient)
        reason = potential_reason(info, traj)
        omega = _natural_frequencies(traj, info, reps)
        dyn = info.section("dynamics")
        identical = omega is not None and bool(np.all(np.ptp(omega, axis=1) == 0))
        monotone = reason is None and identical and not dyn.get("noise") and not dyn.get("inertia")
        series = _stream(traj, info, reps, start, max_harmonic, reason, frequency_method, chunk_frames, progress)
    omega_eff = series.pop("omega_eff")
    clusters = ([obs.frequency_clusters(w, tol, None if omega is None else omega[i]) for i, w in enumerate(omega_eff)]
                if omega_eff is not None else [])
    theory, theory_reason = theory_for_run(info)
    return OrderReport(
        info=info, replicas=reps, start=start, transient_detected=detected, potential_reason=reason,
        potential_monotone_expected=monotone, omega_eff=omega_eff, omega=omega, clusters=clusters, tol=tol,
        frequency_method=frequency_method, theory=theory, theory_reason=theory_reason,
        warnings=list(info.warnings), group=group, **series,
    )


def _stream(traj, info: RunInfo, reps, start, max_harmonic, reason, method, chunk_frames, progress) -> dict:
    """The single streaming pass over the phases (see module docstring)."""
    n_frames, s = info.n_frames, len(reps)
    r_h = np.empty((n_frames, s, max_harmonic))
    psi = np.empty((n_frames, s))
    couplings = info.couplings[reps]
    local_fn, potential_fn = _local_and_potential(traj, info, couplings, reason)
    local = np.empty((n_frames, s)) if local_fn else None
    potential = np.empty((n_frames, s)) if potential_fn else None

    # effective-frequency accumulators over each replica's window [start, n_frames)
    times = info.times
    tbar = np.array([times[a:].mean() for a in start])
    denom = np.array([np.sum((times[a:] - tb) ** 2) for a, tb in zip(start, tbar)])
    numer = np.zeros((s, info.n_nodes))
    ref = np.zeros((s, info.n_nodes))
    first = np.zeros((s, info.n_nodes))
    prev_raw = prev_unw = None

    for frames, block in stream_blocks(traj, n_frames, chunk_frames, progress):
        theta = block[:, reps]  # [f, s, n]
        for m in range(1, max_harmonic + 1):
            r_m, psi_m = obs.order_parameter(theta, m)
            r_h[frames, :, m - 1] = r_m
            if m == 1:
                psi[frames] = psi_m
        if local is not None:
            local[frames] = local_fn(theta)
        if potential is not None:
            potential[frames] = potential_fn(theta)
        if not info.unwrapped:  # unwrap across blocks: at most half a turn between stored frames
            full = theta if prev_raw is None else np.concatenate([prev_raw[None], theta])
            steps = obs.wrap(np.diff(full, axis=0))
            base = full[:1] if prev_unw is None else prev_unw[None]
            unw = np.concatenate([full[:1], base + np.cumsum(steps, axis=0)]) if prev_raw is None \
                else base + np.cumsum(steps, axis=0)
            prev_raw, prev_unw = theta[-1], unw[-1]
            theta = unw
        idx = np.arange(frames.start, frames.stop)
        for k in range(s):
            sel = idx >= start[k]
            if not sel.any():
                continue
            if idx[sel][0] == start[k]:
                ref[k] = theta[sel][0, k]
                first[k] = theta[sel][0, k]
            dt = times[idx[sel]] - tbar[k]
            numer[k] += np.tensordot(dt, theta[sel][:, k] - ref[k], axes=(0, 0))
        last = theta[-1]

    if np.any(n_frames - start < 2):
        omega_eff = None
    elif method == "fit":
        omega_eff = numer / denom[:, None]
    else:
        omega_eff = (last - first) / (times[-1] - times[start])[:, None]
    return {"r": r_h[..., 0], "psi": psi, "r_harmonics": r_h, "local": local, "potential": potential,
            "omega_eff": omega_eff}


def _local_and_potential(traj, info: RunInfo, couplings: np.ndarray, reason: str | None):
    """Per-block functions theta [f, s, n] -> [f, s] for the mean local order and V (or None)."""
    harmonics = info.harmonics
    if info.complete:
        local_fn = lambda theta: obs.local_order_parameter_complete(theta).mean(axis=-1)  # noqa: E731
        if reason is not None:
            return local_fn, None
        scale = complete_scale(info)  # W_ij = K scale / N
        return local_fn, lambda theta: obs.lyapunov_potential_complete(theta, couplings * scale, harmonics)
    try:
        senders, receivers, weights = edge_arrays(traj)
    except ValueError:
        return None, None
    adjacency = obs.adjacency_matrix(senders, receivers, weights, info.n_nodes)

    def local_fn(theta):
        return np.nanmean(obs.local_order_parameter(theta, adjacency), axis=-1)

    if reason is not None:
        return local_fn, None
    w = coupling_weights(info, receivers, weights)  # [e]
    kw = couplings[:, None] * w[None, :]  # [s, e]
    return local_fn, lambda theta: obs.lyapunov_potential(theta, senders, receivers, kw, harmonics)
