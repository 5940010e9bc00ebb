"""Figures of the analyses (matplotlib, imported lazily; Agg canvas, no pyplot global state).

Every figure names its run in the title, labels axes with units (time t in units of 1/omega, the
unit of the natural frequencies, when the frequencies have a scale; plain "time t" when every
omega is 0; phases in rad) and draws phases with the cyclic 'twilight' colormap and a colorbar in
radians. Writers return the paths they wrote. Phase fields:

- square grids: an image with x = lattice axis 0 (horizontal) and y = axis 1, so a +1 vortex
  turns counter-clockwise on screen (3-D+ grids: the slice at index 0 of the other axes);
- other lattices with 2-D positions (triangular, hexagonal, ...): a scatter at the node positions
  with the lattice bonds drawn (bonds that wrap around a periodic boundary are left out);
- rings and chains: phase against node index (snapshot, movie) or a space-time diagram in the
  frame co-rotating with the largest locked cluster (so a fast common rotation does not alias);
- graphs without geometry (complete, random): the oscillators on the unit circle, coloured by
  natural frequency, with the order parameter r e^{i psi} as an arrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lotsim.analysis._group import open_group
from lotsim.analysis._run import RunInfo, check_frame, check_replica, decimate, node_positions, read_run_info
from lotsim.observables import order_parameter

PHASE_CMAP = "twilight"
TIME_LABEL = "time t (units of 1/ω)"
PHASE_TICKS = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi, 2 * math.pi]
PHASE_TICKLABELS = ["0", "π/2", "π", "3π/2", "2π"]
FORMATS = ("png", "svg")


def time_label(info: RunInfo) -> str:
    """"time t (units of 1/ω)" when the natural frequencies set a time scale, else "time t".

    They set one when their distribution has a width or a nonzero centre (or comes from a file);
    identical oscillators at ω = 0 have none (their time scale is set by the coupling).
    """
    freq = info.section("frequencies")
    if not freq:
        return "time t"
    dist = freq.get("dist", "constant")
    if dist == "file" or float(freq.get("mean", 0.0) or 0.0) != 0.0 or (
            dist != "constant" and float(freq.get("width", 0.0) or 0.0) > 0.0):
        return TIME_LABEL
    return "time t"


def _stem(path: str | Path, group: str | None) -> str:
    """File-name stem of a run's figures: the file's stem, plus the group when one was asked for."""
    return Path(path).stem + (f"_{group}" if group else "")


def default_plot_dir(path: str | Path) -> Path:
    """``plots/`` next to the trajectory file."""
    return Path(path).resolve().parent / "plots"


def _figure(width: float = 6.4, height: float = 4.4, nrows: int = 1, ncols: int = 1, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def provenance(sources: Sequence[str | Path], what: str, fmt: str = "png") -> dict[str, str]:
    """``savefig(metadata=...)`` naming the lotsim version, the analysis and the files it read.

    PNG keeps these as text chunks (plus ``Software``), SVG as Dublin Core: a figure found later says
    what made it.
    """
    from lotsim import __version__

    meta = {"Creator": f"lotsim {__version__}", "Source": ", ".join(str(Path(p).resolve()) for p in sources),
            "Description": f"lotsim analyze: {what}"}
    return {"Software": meta["Creator"], **meta} if fmt == "png" else meta


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str], sources: Sequence[str | Path]) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"plot format {fmt!r} is not allowed; use png or svg")
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, metadata=provenance(sources, stem, fmt))
        paths.append(path)
    return paths


def _phase_colorbar(fig, mappable, ax, label: str = "phase θ mod 2π (rad)"):
    bar = fig.colorbar(mappable, ax=ax, ticks=PHASE_TICKS)
    bar.ax.set_yticklabels(PHASE_TICKLABELS)
    bar.set_label(label)
    return bar


def _replica_label(info: RunInfo, rep: int) -> str:
    k, s = info.couplings[rep], info.seeds[rep]
    parts = [f"replica {rep}"] if not np.isfinite(k) else [f"K={k:.3g}"]
    if s >= 0:
        parts.append(f"seed {s}")
    return ", ".join(parts)


def _coupling_colors(info: RunInfo, reps: Sequence[int]):
    import matplotlib as mpl

    ks = info.couplings[list(reps)]
    finite = np.isfinite(ks)
    lo, hi = (ks[finite].min(), ks[finite].max()) if finite.any() else (0.0, 1.0)
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = mpl.colormaps["viridis"]
    return [cmap(norm(k)) if np.isfinite(k) else "grey" for k in ks], mpl.cm.ScalarMappable(norm=norm, cmap=cmap)


# ------------------------------------------------------------------------------------------- order


def _one_per_coupling(info: RunInfo, reps: Sequence[int], at_most: int) -> list[int]:
    """Positions in ``reps`` of the first replica of each distinct coupling, thinned evenly to ``at_most``."""
    seen: dict[float, int] = {}
    for k, rep in enumerate(reps):
        seen.setdefault(round(float(info.couplings[rep]), 12) if np.isfinite(info.couplings[rep]) else k, k)
    picks = list(seen.values())
    if len(picks) > at_most:
        picks = [picks[i] for i in np.unique(np.linspace(0, len(picks) - 1, at_most).round().astype(int))]
    return picks


def plot_order(report, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """r(t) with transients and theory, effective vs natural frequencies, and V(t) when defined."""
    info, reps = report.info, report.replicas
    stem = _stem(info.path, report.group)
    many = len(reps) > 6
    colors, mappable = _coupling_colors(info, reps) if many else ([f"C{i}" for i in range(len(reps))], None)
    fig, axes = _figure(11.5, 4.4, 1, 2)
    ax, ax_w = axes[0]
    t = info.times
    shown = _one_per_coupling(info, reps, 4)  # replicas of the frequency panel (and OA curves if many)
    for k, rep in enumerate(reps):
        ax.plot(t, report.r[:, k], color=colors[k], lw=1.2, label=None if many else _replica_label(info, rep))
    if report.theory is not None and report.theory.dist == "lorentzian":
        first = True
        for k, rep in enumerate(reps):
            if not np.isfinite(info.couplings[rep]) or (many and k not in _one_per_coupling(info, reps, 1000)):
                continue
            oa = report.theory.transient(t, float(info.couplings[rep]), float(report.r[0, k]))
            ax.plot(t, oa, color="k" if many else colors[k], lw=0.8 if many else 1.0, ls="--", alpha=0.8,
                    label="Ott–Antonsen theory, N→∞ (dashed)" if first else None)
            first = False
    what = "transient end (detected)" if report.transient_detected else "transient end (given)"
    if many or len(np.unique(report.start)) == 1:
        ax.axvline(t[report.start[0]], color="0.4", ls=":", lw=1.0, label=what if np.unique(report.start).size == 1
                   else f"{what}, replica {reps[0]}")
    else:
        for k in range(len(reps)):
            ax.axvline(t[report.start[k]], color=colors[k], ls=":", lw=1.2, label=what if k == 0 else None)
    ax.set(xlabel=time_label(info), ylabel="order parameter r(t)", ylim=(0, 1.05), xlim=(t[0], t[-1]),
           title="global order parameter")
    if many:
        fig.colorbar(mappable, ax=ax, label="coupling K")
    ax.legend(loc="best", fontsize=8)

    identical = report.omega is not None and float(np.ptp(report.omega)) == 0.0
    if report.omega_eff is not None and report.omega is not None and not identical:
        for k in shown:
            ax_w.plot(report.omega[k], report.omega_eff[k], ".", ms=3, color=colors[k], alpha=0.8,
                      label=_replica_label(info, reps[k]))
        # heavy-tailed (Lorentzian) frequencies: show the central 90% of the oscillators
        omega = report.omega[shown]
        centre = float(np.median(omega))
        half = 1.15 * float(np.percentile(np.abs(omega - centre), 90)) or 1.0
        span = np.linspace(centre - half, centre + half, 3)
        ax_w.plot(span, span, color="0.6", lw=0.8, ls="--", label="ω_eff = ω (uncoupled)")
        ax_w.set(xlabel="natural frequency ω_i (rad per unit time)",
                 ylabel="effective frequency ⟨dθ_i/dt⟩ (rad per unit time)",
                 title="frequency locking (plateau = locked cluster)", xlim=(span[0], span[-1]),
                 ylim=_frequency_range(report, shown, span))
        ax_w.legend(loc="best", fontsize=8)
    elif report.omega_eff is not None:
        ax_w.hist(report.omega_eff.reshape(-1), bins=60, color="C0")
        if identical:
            ax_w.axvline(float(report.omega.reshape(-1)[0]), color="k", ls="--", lw=1.0,
                         label="natural frequency ω (identical)")
            ax_w.legend(loc="best", fontsize=8)
        ax_w.set(xlabel="effective frequency ⟨dθ_i/dt⟩ (rad per unit time)", ylabel="oscillators",
                 title="effective frequencies over the stationary window")
    else:
        ax_w.set_axis_off()
        ax_w.text(0.5, 0.5, "no stationary window\nfor effective frequencies", ha="center", va="center")
    fig.suptitle(info.label)
    paths = _save(fig, out_dir, f"{stem}_order", formats, [info.path])
    if report.potential is not None:
        paths += plot_potential(report, out_dir, formats)
    if report.omega_eff is not None and info.topology in ("ring", "chain"):
        paths += plot_frequency_profile(report, out_dir, formats)
    return paths


def _frequency_range(report, shown: Sequence[int], span: np.ndarray) -> tuple[float, float]:
    """y range of the frequency panel: the natural-frequency window, widened to every locked cluster
    and to the central 90% of the effective frequencies of the drawn oscillators (with frustration
    the clusters rotate at frequencies outside the natural ones)."""
    in_view = report.omega_eff[shown][(report.omega[shown] >= span[0]) & (report.omega[shown] <= span[-1])]
    values = [span[0], span[-1], *np.percentile(in_view, [5, 95])] if in_view.size else [span[0], span[-1]]
    values += [f for k in shown for f in report.clusters[k].frequencies]
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def plot_frequency_profile(report, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Effective frequency against node index (the profile of a chimera state: a flat locked domain
    and a curved drifting one), one line per drawn replica; for rings and chains."""
    info, reps = report.info, report.replicas
    shown = _one_per_coupling(info, reps, 4)
    fig, axes = _figure(7.0, 4.4)
    ax = axes[0, 0]
    nodes = np.arange(info.n_nodes)
    for i, k in enumerate(shown):
        ax.plot(nodes, report.omega_eff[k], ".-", ms=3, lw=0.6, color=f"C{i}", label=_replica_label(info, reps[k]))
        cluster = report.clusters[k]
        if cluster.sizes.size:
            ax.axhline(cluster.frequencies[0], color=f"C{i}", ls=":", lw=1.0,
                       label=f"largest locked cluster ({cluster.sizes[0]} of {info.n_nodes})")
    ax.set(xlabel="node j", ylabel="effective frequency ⟨dθ_j/dt⟩ (rad per unit time)", xlim=(-0.5, info.n_nodes - 0.5),
           title="effective frequency profile (flat = locked domain)")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(info.label)
    return _save(fig, out_dir, f"{_stem(info.path, report.group)}_frequency_profile", formats, [info.path])


def plot_potential(report, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """The Lyapunov potential V(t) per replica."""
    info, reps = report.info, report.replicas
    many = len(reps) > 6
    colors, mappable = _coupling_colors(info, reps) if many else ([f"C{i}" for i in range(len(reps))], None)
    fig, axes = _figure(6.8, 4.4)
    ax = axes[0, 0]
    for k, rep in enumerate(reps):
        ax.plot(info.times, report.potential[:, k], color=colors[k], lw=1.2,
                label=None if many else _replica_label(info, rep))
    note = "identical ω, no noise: V must not increase" if report.potential_monotone_expected \
        else "non-identical ω / noise / inertia: V need not be monotone"
    ax.set(xlabel=time_label(info), ylabel="V(θ) = −½ Σ_ij W_ij cos(θ_j − θ_i)", title=f"Lyapunov potential ({note})")
    ax.title.set_fontsize(9)
    if many:
        fig.colorbar(mappable, ax=ax, label="coupling K")
    else:
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(info.label)
    return _save(fig, out_dir, f"{_stem(info.path, report.group)}_potential", formats, [info.path])


# -------------------------------------------------------------------------------------- transition


def plot_transition(report, out_dir: Path, formats: Sequence[str] = ("png",), stem: str | None = None) -> list[Path]:
    """r(K) with its 95% band, theory, K_c markers and hysteresis branches; chi(K) below."""
    fig, axes = _figure(7.0, 6.4, 2, 1, sharex=True, height_ratios=[2.2, 1])
    ax, ax_chi = axes[0, 0], axes[1, 0]
    k = report.couplings
    ax.fill_between(k, report.r_low, report.r_high, color="C0", alpha=0.25, lw=0,
                    label="95% bootstrap band" + (" (seeds)" if report.n_seeds.min() > 1 else " (time blocks)"))
    ax.plot(k, report.r_mean, "o-", color="C0", ms=4, lw=1.3,
            label=f"simulation (mean of {report.n_seeds.max()} seed{'s' if report.n_seeds.max() > 1 else ''})")
    curve = report.theory_curve()
    if curve is not None:
        ax.plot(*curve, color="k", ls="--", lw=1.2, label=f"theory: {report.theory.describe()}")
    if report.adiabatic is not None:
        ad = report.adiabatic
        ks = np.asarray(ad["couplings"])
        if ad.get("forward") is not None:
            ax.plot(ks, ad["forward"], ">-", color="C3", ms=5, lw=1.0, label="adiabatic, K increasing")
        if ad.get("backward") is not None:
            ax.plot(ks, ad["backward"], "<-", color="C2", ms=5, lw=1.0, label="adiabatic, K decreasing")
    fit = report.kc_fit
    sd = fit["sd"] or 0.0
    if report.first_order is None:
        ax.plot(*report.fit_curve(), color="C1", lw=1.0, ls="-.", label="onset fit r² = c + A·max(0, 1 − K_c/K)")
        ax.axvspan(fit["kc"] - sd, fit["kc"] + sd, color="C1", alpha=0.2, lw=0)
        ax.axvline(fit["kc"], color="C1", lw=1.5, label=f"K_c fit = {fit['kc']:.3f} ± {sd:.3f}")
    else:  # a continuous-onset fit would draw a K_c that a first-order, hysteretic transition does not have
        ax.text(0.98, 0.03, f"first-order transition: no continuous-onset fit\n({report.first_order})",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, wrap=True)
    if report.theory is not None:
        ax.axvline(report.theory.kc, color="k", ls=":", lw=1.2, label=f"K_c theory = {report.theory.kc:.3f}")
    ax.set(ylabel="order parameter r (stationary mean)", ylim=(0, 1.05),
           title="synchronisation transition" + (" (first order, hysteretic)" if report.first_order else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax_chi.plot(k, report.chi_mean, "s-", color="C4", ms=4, lw=1.2, label="χ = N(⟨r²⟩ − ⟨r⟩²)")
    chi = report.kc_chi
    ax_chi.axvline(chi["kc"], color="C4", ls="--", lw=1.2, label=f"χ peak K = {chi['kc']:.3f} ± {chi['sd']:.3f}")
    if report.theory is not None:
        ax_chi.axvline(report.theory.kc, color="k", ls=":", lw=1.2)
    ax_chi.set(xlabel="coupling K", ylabel="susceptibility χ")
    ax_chi.legend(loc="upper right", fontsize=8)
    fig.suptitle(report.label)
    return _save(fig, out_dir, stem or f"{report.files[0].stem}_transition", formats, report.files)


# ----------------------------------------------------------------------------------- phase fields


class _Field:
    """Draws one replica's phase field on an axis and updates it frame by frame (snapshot, movie)."""

    def __init__(self, fig, ax, info: RunInfo, positions: np.ndarray | None, omega: np.ndarray | None,
                 edges: np.ndarray | None = None):
        self.info, self.ax = info, ax
        shape = info.shape
        n = info.n_nodes
        grid = info.topology in ("square", "hypercubic") and len(shape) >= 2 and int(np.prod(shape)) == n
        if grid:
            self.kind, self.shape = "image", shape
            self.artist = ax.imshow(np.zeros(shape[:2]).T, origin="lower", cmap=PHASE_CMAP, vmin=0, vmax=2 * math.pi,
                                    interpolation="nearest", extent=(-0.5, shape[0] - 0.5, -0.5, shape[1] - 0.5))
            extra = " (slice at index 0 of the other axes)" if len(shape) > 2 else ""
            ax.set(xlabel="x (lattice axis 0)", ylabel="y (lattice axis 1)" + extra, aspect="equal")
            _phase_colorbar(fig, self.artist, ax)
        elif positions is not None and positions.shape[1] >= 2:
            self.kind = "scatter"
            if edges is not None and edges.shape[0]:
                _draw_bonds(ax, positions[:, :2], edges)
            size = float(np.clip(9000.0 / n, 4, 120))
            self.artist = ax.scatter(positions[:, 0], positions[:, 1], c=np.zeros(n), s=size, cmap=PHASE_CMAP,
                                     vmin=0, vmax=2 * math.pi, edgecolors="none")
            ax.set(xlabel="x (lattice units)", ylabel="y (lattice units)", aspect="equal")
            _phase_colorbar(fig, self.artist, ax)
        elif info.topology in ("ring", "chain") or (positions is not None and positions.shape[1] == 1):
            self.kind = "line"
            nodes = np.arange(n)
            self.artist = ax.scatter(nodes, np.zeros(n), c=np.zeros(n), s=float(np.clip(3000.0 / n, 3, 30)),
                                     cmap=PHASE_CMAP, vmin=0, vmax=2 * math.pi)
            ax.set(xlabel="node j", ylabel="phase θ_j mod 2π (rad)", ylim=(-0.1, 2 * math.pi + 0.1),
                   xlim=(-0.5, n - 0.5), yticks=PHASE_TICKS, yticklabels=PHASE_TICKLABELS)
        else:
            self.kind = "circle"
            c = omega if omega is not None else np.zeros(n)
            centre = float(np.median(c))
            lim = float(np.percentile(np.abs(c - centre), 80)) or 1.0  # robust to Lorentzian tails
            self.artist = ax.scatter(np.ones(n), np.zeros(n), c=c, cmap="coolwarm", vmin=centre - lim,
                                     vmax=centre + lim, s=float(np.clip(6000.0 / n, 4, 40)), alpha=0.7)
            circle = np.linspace(0, 2 * math.pi, 200)
            ax.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.8)
            self.arrow = ax.annotate("", xy=(0, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "lw": 2.0})
            ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xlabel="cos θ_j", ylabel="sin θ_j")
            fig.colorbar(self.artist, ax=ax, extend="both", label="natural frequency ω_j (rad per unit time)")
            ax.text(0.02, 0.02, r"arrow: $r\,e^{i\psi}$", transform=ax.transAxes, fontsize=8)

    def update(self, theta: np.ndarray, time: float, title: str) -> None:
        r, psi = order_parameter(theta)
        wrapped = np.mod(theta, 2 * math.pi)
        if self.kind == "image":
            field = wrapped.reshape(self.shape)
            while field.ndim > 2:
                field = field[..., 0]
            self.artist.set_data(field.T)
        elif self.kind == "scatter":
            self.artist.set_array(wrapped)
        elif self.kind == "line":
            self.artist.set_offsets(np.stack([np.arange(wrapped.size), wrapped], axis=1))
            self.artist.set_array(wrapped)
        else:
            self.artist.set_offsets(np.stack([np.cos(theta), np.sin(theta)], axis=1))
            self.arrow.xy = (r * math.cos(psi), r * math.sin(psi))
        self.ax.set_title(f"{title}\nt = {time:.4g}, r = {r:.3f}", fontsize=10)


def _draw_bonds(ax, positions: np.ndarray, edges: np.ndarray) -> None:
    """The lattice bonds as thin grey lines under the nodes; a bond much longer than the typical one
    wraps around a periodic boundary and is left out."""
    from matplotlib.collections import LineCollection

    segments = positions[edges[:, :2]]  # (e, 2 ends, 2 coordinates)
    length = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    local = length <= 1.5 * np.median(length)
    ax.add_collection(LineCollection(segments[local], colors="0.65", linewidths=0.6, zorder=0, label="bonds"))


def _edges(traj) -> np.ndarray | None:
    edges, _ = traj.edges
    return edges if edges.shape[0] else None


def _omega(traj, info: RunInfo, replica: int) -> np.ndarray | None:
    try:
        omega = np.asarray(traj.node_data("natural_frequency"), dtype=np.float64)
    except KeyError:
        return None
    return omega[replica] if omega.ndim == 2 else omega


def plot_snapshot(path: str | Path, *, frame: int = -1, replica: int = 0, out: str | Path | None = None,
                  formats: Sequence[str] = ("png",), group: str | None = None) -> dict:
    """The wrapped phase field of one frame and replica.

    Returns:
        ``{"frame", "replica", "time", "r", "kind", "plots"}``.

    Raises:
        ValueError: Bad file, frame or replica.
    """
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        index = check_frame(info, frame)
        theta = np.asarray(traj.phase[index, replica], dtype=np.float64)
        positions, omega, edges = node_positions(traj, info), _omega(traj, info, replica), _edges(traj)
    fig, axes = _figure(6.6, 5.6)
    drawer = _Field(fig, axes[0, 0], info, positions, omega, edges)
    drawer.update(theta, float(info.times[index]), f"{info.label}, {_replica_label(info, replica)}")
    out_dir, stem = _out(path, out, f"{_stem(info.path, group)}_snapshot_r{replica}_f{index}")
    return {"frame": index, "replica": replica, "time": float(info.times[index]),
            "r": float(order_parameter(theta)[0]), "kind": drawer.kind,
            "plots": [str(p) for p in _save(fig, out_dir, stem, formats, [info.path])], "warnings": info.warnings}


def _out(path, out, stem: str) -> tuple[Path, str]:
    if out is None:
        return default_plot_dir(path), stem
    out = Path(out)
    return (out.parent, out.stem) if out.suffix else (out, stem)


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


def plot_spacetime(path: str | Path, *, replica: int = 0, out: str | Path | None = None, max_rows: int = 1000,
                   corotating: bool = True, formats: Sequence[str] = ("png",), group: str | None = None) -> dict:
    """Space-time diagram: wrapped phase against node (x) and time (y), streamed and decimated to at most
    ``max_rows`` frames; by default in the frame rotating at :func:`corotating_frequency` (theta_j - Omega t),
    where a common fast rotation would otherwise alias between the drawn frames.

    Returns:
        ``{"replica", "frames", "frame_frequency", "plots"}``.
    """
    from lotsim.analysis._run import stream_blocks

    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        keep = decimate(info.n_frames, max_rows)
        rows = np.empty((keep.size, info.n_nodes))
        for frames, block in stream_blocks(traj, info.n_frames):
            sel = (keep >= frames.start) & (keep < frames.stop)
            rows[sel] = block[keep[sel] - frames.start, replica]
    t = info.times[keep]
    frequency = corotating_frequency(rows, t) if corotating and info.unwrapped else 0.0
    fig, axes = _figure(7.0, 5.4)
    ax = axes[0, 0]
    image = ax.imshow(np.mod(rows - frequency * t[:, None], 2 * math.pi), origin="lower", aspect="auto",
                      cmap=PHASE_CMAP, vmin=0, vmax=2 * math.pi, interpolation="nearest",
                      extent=(-0.5, info.n_nodes - 0.5, t[0], t[-1] if t[-1] > t[0] else t[0] + 1))
    frame = f"co-rotating frame Ω = {frequency:.4g}" if frequency else "lab frame"
    _phase_colorbar(fig, image, ax, "phase θ_j − Ω t mod 2π (rad)" if frequency else "phase θ mod 2π (rad)")
    ax.set(xlabel="node j", ylabel=time_label(info),
           title=f"space-time diagram, {_replica_label(info, replica)}, {frame}")
    fig.suptitle(info.label)
    out_dir, stem = _out(path, out, f"{_stem(info.path, group)}_spacetime_r{replica}")
    paths = _save(fig, out_dir, stem, formats, [info.path])
    return {"replica": replica, "frames": int(keep.size), "frame_frequency": frequency,
            "plots": [str(p) for p in paths], "warnings": info.warnings}


def _movie_writer(out: Path, fps: int):
    from matplotlib import animation

    suffix = out.suffix.lower()
    if suffix == ".gif":
        return animation.PillowWriter(fps=fps)
    if suffix != ".mp4":
        raise ValueError(f"movie file {str(out)!r} must end in .gif or .mp4")
    if not animation.writers.is_available("ffmpeg"):
        try:
            import imageio_ffmpeg
            import matplotlib as mpl

            mpl.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
        except ImportError:
            raise ValueError("MP4 needs ffmpeg, which is not installed; write a GIF instead (--out movie.gif) "
                             "or pip install imageio-ffmpeg") from None
    return animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])


def write_movie(path: str | Path, *, out: str | Path | None = None, replica: int = 0, fps: int = 10,
                max_frames: int = 200, dpi: int = 100, progress: Callable[[int, int], None] | None = None,
                group: str | None = None) -> dict:
    """Animate the phase field of one replica (GIF with Pillow, MP4 with ffmpeg), streaming the frames.

    Args:
        path: The trajectory.
        out: ``.gif`` or ``.mp4`` file (default ``plots/<run>_movie_r<replica>.gif``).
        replica: Which replica.
        fps: Frames per second (> 0).
        max_frames: At most this many evenly spaced frames (the last one included).
        dpi: Resolution.
        progress: Called as ``progress(frames_written, total)``.
        group: The particles group (default: the file's oscillators; e.g. ``layer_00`` of telemetry).

    Returns:
        ``{"output", "frames", "fps", "replica"}``.
    """
    from lotsim.analysis._run import stream_blocks

    if fps < 1:
        raise ValueError(f"--fps must be >= 1, got {fps}")
    if max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    out = Path(out) if out is not None else default_plot_dir(path) / f"{_stem(path, group)}_movie_r{replica}.gif"
    writer = _movie_writer(out, fps)
    with open_group(path, group) as traj:
        info = read_run_info(traj)
        check_replica(info, replica)
        positions, omega, edges = node_positions(traj, info), _omega(traj, info, replica), _edges(traj)
        keep = decimate(info.n_frames, max_frames)
        fig, axes = _figure(6.6, 5.6)
        drawer = _Field(fig, axes[0, 0], info, positions, omega, edges)
        title = f"{info.label}, {_replica_label(info, replica)}"
        out.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        with writer.saving(fig, str(out), dpi):
            for frames, block in stream_blocks(traj, info.n_frames):
                for i in keep[(keep >= frames.start) & (keep < frames.stop)]:
                    drawer.update(block[i - frames.start, replica], float(info.times[i]), title)
                    writer.grab_frame()
                    done += 1
                    if progress is not None:
                        progress(done, keep.size)
    return {"output": str(out), "frames": done, "fps": fps, "replica": replica, "kind": drawer.kind,
            "warnings": info.warnings}


# ------------------------------------------------------------------------------------------ defects


def _integer_axis(ax, values: np.ndarray, counts: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    lo, hi = int(np.min(values)), int(np.max(values))
    pad = max(1, round(0.08 * (hi - lo)))
    ax.set_ylim(-0.05 * (hi + pad) if counts else lo - pad, hi + pad)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_defects(report, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Defects over time, and the final phase field of the first replica with its defects marked.

    2-D lattices get three panels: vortex and antivortex counts against time; the defect density
    (vortices + antivortices) / plaquettes on log-log axes, the quantity the JSON reports and the one
    whose power-law decay coarsening theories predict; the final phase field.
    """
    info, reps = report.info, report.replicas
    ring = report.kind == "ring"
    fig, axes = _figure(12.0 if ring else 17.0, 4.8, 1, 2 if ring else 3)
    ax, ax_f = axes[0][0], axes[0][-1]
    t = info.times
    tlabel = time_label(info)
    many = len(reps) > 6
    colors, mappable = _coupling_colors(info, reps) if many else ([f"C{i}" for i in range(len(reps))], None)
    if ring:
        for k, rep in enumerate(reps):
            ax.step(t, report.winding[:, k], where="post", color=colors[k], lw=1.3,
                    label=None if many else _replica_label(info, rep))
        ax.set(xlabel=tlabel, ylabel="winding number q", title="winding number around the ring")
        _integer_axis(ax, report.winding)
        field = _Field(fig, ax_f, info, None, None)
        field.update(report.final_phase[0], float(t[-1]), f"final frame, {_replica_label(info, reps[0])}, "
                                                           f"q = {report.winding[-1, 0]}")
    else:
        ax_d = axes[0][1]
        for k, rep in enumerate(reps):
            one = len(reps) == 1
            ax.plot(t, report.vortices[:, k], color="C3" if one else colors[k], lw=1.4,
                    label=None if many else f"vortices (+1), {_replica_label(info, rep)}")
            ax.plot(t, report.antivortices[:, k], color="C0" if one else colors[k], lw=1.4, ls=(0, (4, 3)),
                    label=None if many else f"antivortices (−1), {_replica_label(info, rep)}")
            positive = (t > 0) & (report.density[:, k] > 0)  # log-log: t = 0 and defect-free frames left out
            ax_d.loglog(t[positive], report.density[positive, k], color="C2" if one else colors[k], lw=1.4,
                        label=None if many else _replica_label(info, rep))
        ax.set(xlabel=tlabel, ylabel="number of defects",
               title=f"topological defects ({report.n_faces} plaquettes)")
        _integer_axis(ax, np.concatenate([report.vortices, report.antivortices]), counts=True)
        ax_d.set(xlabel=tlabel, ylabel="defect density (vortices + antivortices) / plaquettes",
                 title="defect decay (log–log)")
        if not many and ax_d.lines:
            ax_d.legend(loc="best", fontsize=8)
        field = _Field(fig, ax_f, info, report.positions, None)
        charges = report.final_charges[0]
        v, a = report.vortices[-1, 0], report.antivortices[-1, 0]
        field.update(report.final_phase[0], float(t[-1]),
                     f"final frame, {_replica_label(info, reps[0])}: vortices {v}, antivortices {a}")
        c = report.centres
        ax_f.scatter(c[charges > 0, 0], c[charges > 0, 1], marker="o", s=60, facecolors="none", edgecolors="red",
                     linewidths=1.6, label="vortex (+1)")
        ax_f.scatter(c[charges < 0, 0], c[charges < 0, 1], marker="s", s=60, facecolors="none", edgecolors="blue",
                     linewidths=1.6, label="antivortex (−1)")
        ax_f.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=8)
    if many:
        fig.colorbar(mappable, ax=ax, label="coupling K")
    else:
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(info.label)
    return _save(fig, out_dir, f"{_stem(info.path, report.group)}_defects", formats, [info.path])
