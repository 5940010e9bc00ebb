"""Figures of the analyses: each takes a report (or reads a run through :mod:`lotsim.analysis._field_data`),
draws it and saves it (:mod:`lotsim.analysis._drawing` holds the canvas, saving, colours and the
phase-field drawer; matplotlib is imported lazily).

Every figure names its run in the title, labels axes with units (time t in units of 1/omega, the
unit of the natural frequencies, when the frequencies have a scale; plain "time t" when every
omega is 0; phases in rad) and draws phases with the cyclic 'twilight' colormap and a colorbar in
radians. Writers return the paths they wrote. Rings and chains get a space-time diagram in the frame
co-rotating with the largest locked cluster (so a fast common rotation does not alias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lotsim.analysis._drawing import (
    PHASE_CMAP,
    _coupling_colors,
    _Field,
    _figure,
    _movie_writer,
    _out,
    _phase_colorbar,
    _replica_label,
    _save,
    _stem,
    default_plot_dir,
    provenance,
    time_label,
)
from lotsim.analysis._field_data import corotating_frequency, movie_frames, read_snapshot, read_spacetime
from lotsim.analysis._run import RunInfo
from lotsim.observables import order_parameter

__all__ = [
    "corotating_frequency",
    "default_plot_dir",
    "plot_defects",
    "plot_frequency_profile",
    "plot_order",
    "plot_potential",
    "plot_snapshot",
    "plot_spacetime",
    "plot_transition",
    "provenance",
    "time_label",
    "write_movie",
]


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
    stem = f"{_stem(info.path, report.group)}_potential"
    return _finish_replicas(fig, ax, mappable if many else None, info, out_dir, stem, formats)



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


def plot_snapshot(path: str | Path, *, frame: int = -1, replica: int = 0, out: str | Path | None = None,
                  formats: Sequence[str] = ("png",), group: str | None = None) -> dict:
    """The wrapped phase field of one frame and replica.

    Returns:
        ``{"frame", "replica", "time", "r", "kind", "plots"}``.

    Raises:
        ValueError: Bad file, frame or replica.
    """
    field, index, theta = read_snapshot(path, frame, replica, group)
    info = field.info
    fig, axes = _figure(6.6, 5.6)
    drawer = _Field(fig, axes[0, 0], info, field.positions, field.omega, field.edges)
    drawer.update(theta, float(info.times[index]), f"{info.label}, {_replica_label(info, replica)}")
    out_dir, stem = _out(path, out, f"{_stem(info.path, group)}_snapshot_r{replica}_f{index}")
    return {"frame": index, "replica": replica, "time": float(info.times[index]),
            "r": float(order_parameter(theta)[0]), "kind": drawer.kind,
            "plots": [str(p) for p in _save(fig, out_dir, stem, formats, [info.path])], "warnings": info.warnings}


def plot_spacetime(path: str | Path, *, replica: int = 0, out: str | Path | None = None, max_rows: int = 1000,
                   corotating: bool = True, formats: Sequence[str] = ("png",), group: str | None = None) -> dict:
    """Space-time diagram: wrapped phase against node (x) and time (y), streamed and decimated to at most
    ``max_rows`` frames; by default in the frame rotating at :func:`corotating_frequency` (theta_j - Omega t),
    where a common fast rotation would otherwise alias between the drawn frames.

    Returns:
        ``{"replica", "frames", "frame_frequency", "plots"}``.
    """
    info, keep, rows = read_spacetime(path, replica, max_rows, group)
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
    if fps < 1:
        raise ValueError(f"--fps must be >= 1, got {fps}")
    if max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    out = Path(out) if out is not None else default_plot_dir(path) / f"{_stem(path, group)}_movie_r{replica}.gif"
    writer = _movie_writer(out, fps)
    with movie_frames(path, replica, max_frames, group) as (field, keep, frames):
        info = field.info
        fig, axes = _figure(6.6, 5.6)
        drawer = _Field(fig, axes[0, 0], info, field.positions, field.omega, field.edges)
        title = f"{info.label}, {_replica_label(info, replica)}"
        out.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        with writer.saving(fig, str(out), dpi):
            for i, theta in frames:
                drawer.update(theta, float(info.times[i]), title)
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
    stem = f"{_stem(info.path, report.group)}_defects"
    return _finish_replicas(fig, ax, mappable if many else None, info, out_dir, stem, formats)


def _finish_replicas(fig, ax, mappable, info, out_dir, stem: str, formats: Sequence[str]) -> list[Path]:
    """A per-replica figure's key (a coupling colour bar for many replicas, else the legend), its title
    (the run's label) and its files."""
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label="coupling K")
    else:
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(info.label)
    return _save(fig, out_dir, stem, formats, [info.path])

