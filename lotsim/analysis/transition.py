"""``lotsim analyze transition``: the synchronisation transition r(K) of a coupling sweep.

Input: one or more H5MD files of batched sweeps (couplings x seeds; sharded sweeps are combined
along the coupling axis). Per replica, r and chi = N(<r^2> - <r>^2) are time averages over the
stationary window (default: the second half of the stored frames, as ``lotsim simulate`` reports;
or every frame after ``transient``). Per coupling:

- ``r_mean``: the mean over seeds; ``r_low``/``r_high``: a 95% percentile bootstrap band over seeds
  (with a single seed, over 10 contiguous time blocks of its window instead);
- K_c from a fit of the onset: ``r^2(K) = c + A max(0, 1 - K_c/K)`` (exact for the Lorentzian
  complete graph, r^2 = 1 - K_c/K, and the generic square-root onset elsewhere; c absorbs the
  finite-size floor ~ 1/N) over the couplings up to the first one where r reaches halfway between
  its smallest and largest value (at least 3 couplings), fitted by profiling K_c over a fine grid
  with non-negative (c, A) and refining with a bounded scalar minimisation; uncertainty = the
  standard deviation of the fitted K_c over bootstrap resamples of the seeds combined in quadrature
  with the model dependence (the shift of K_c when the next coupling joins the window). Not
  included: the finite-size rounding of the onset (r ~ N^-1/2 below K_c), a systematic shift that
  only a sweep over N can remove;
- K_c from the susceptibility peak: the maximum of the seed-averaged chi(K), refined by a parabola
  through its neighbours; uncertainty = bootstrap sd, at least half the local coupling spacing.

Theory (complete graph; see :mod:`lotsim.analysis.theory`) is attached when it applies.
:func:`adiabatic_sweep` re-runs a recipe continuing the state from one coupling to the next
(forward, then backward), which shows hysteresis where the transition has it (e.g. with inertia).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize

from lotsim.analysis._run import RunInfo, frame_index, read_run_info
from lotsim.analysis.order import order_parameter_series
from lotsim.analysis.theory import Theory, theory_for_run
from lotsim.io import open_trajectory

N_BLOCKS = 10
HYSTERESIS_GAP = 0.1
"""Largest |r_forward - r_backward| of an adiabatic sweep still read as one continuous branch."""
N_BOOT_KC = 200


@dataclass
class TransitionReport:
    """Result of :func:`analyze_transition`; arrays are over the sorted distinct couplings [k]."""

    files: list[Path]
    infos: list[RunInfo]
    couplings: np.ndarray
    n_seeds: np.ndarray
    r_mean: np.ndarray
    r_low: np.ndarray
    r_high: np.ndarray
    chi_mean: np.ndarray
    kc_fit: dict
    kc_chi: dict
    theory: Theory | None
    theory_reason: str | None
    window: str
    n_boot: int
    adiabatic: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        label = self.infos[0].label
        return label if len(self.files) == 1 else f"{label} + {len(self.files) - 1} more"

    @property
    def first_order(self) -> str | None:
        """Why this transition is first order (discontinuous, hysteretic), or None.

        With inertia the Kuramoto transition is first order with hysteresis (Tanaka, Lichtenberg & Oishi
        1997); an adiabatic sweep whose forward and backward branches differ by more than
        :data:`HYSTERESIS_GAP` shows it directly. Then the continuous-onset fit
        r^2 = c + A max(0, 1 - K_c/K) describes no real feature and no fitted K_c is reported.
        """
        inertia = max(float(i.section("dynamics").get("inertia", 0.0) or 0.0) for i in self.infos)
        if inertia > 0:
            return f"inertia μ = {inertia:g} makes it first order and hysteretic"
        ad = self.adiabatic or {}
        if ad.get("forward") is not None and ad.get("backward") is not None:
            gap = float(np.max(np.abs(np.subtract(ad["forward"], ad["backward"]))))
            if gap > HYSTERESIS_GAP:
                return f"the adiabatic branches differ by up to Δr = {gap:.2f} (hysteresis)"
        return None

    def theory_curve(self, points: int = 300) -> tuple[np.ndarray, np.ndarray] | None:
        if self.theory is None:
            return None
        k = np.linspace(self.couplings.min(), self.couplings.max(), points)
        return k, self.theory.r(k)

    def fit_curve(self, points: int = 300) -> tuple[np.ndarray, np.ndarray]:
        """The fitted model r(K) = sqrt(c + A max(0, 1 - K_c/K)) over its fit window."""
        f = self.kc_fit
        k = np.linspace(f["window"][0], f["window"][1], points)
        with np.errstate(divide="ignore", invalid="ignore"):
            onset = np.where(k > 0, np.maximum(0.0, 1.0 - f["kc"] / np.where(k > 0, k, 1.0)), 0.0)
        return k, np.sqrt(f["floor"] + f["amplitude"] * onset)

    def to_dict(self) -> dict:
        curve = self.theory_curve(200)
        first_order = self.first_order
        estimate = {"kc_estimate": self.kc_fit["kc"], "kc_uncertainty": self.kc_fit["sd"],
                    "kc_ci95": self.kc_fit["ci95"],
                    "kc_method": "fit r^2 = c + A max(0, 1 - Kc/K) over the onset window, bootstrap over seeds"}
        if first_order is not None:
            estimate = {"kc_estimate": None, "kc_uncertainty": None, "kc_ci95": None,
                        "kc_method": f"none: a first-order transition ({first_order}); kc_fit is for reference only"}
        return {
            "files": [str(f) for f in self.files], "lattice": self.label, "n": self.infos[0].n_nodes,
            "couplings": self.couplings.tolist(), "n_seeds": self.n_seeds.tolist(),
            "r_mean": self.r_mean.tolist(), "r_low": self.r_low.tolist(), "r_high": self.r_high.tolist(),
            "chi_mean": self.chi_mean.tolist(),
            **estimate, "first_order": first_order, "kc_fit": self.kc_fit, "kc_susceptibility": self.kc_chi,
            "kc_theory": None if self.theory is None else self.theory.kc,
            "r_theory": None if self.theory is None else self.theory.r(self.couplings).tolist(),
            "theory": None if curve is None else {"description": self.theory.describe(), "couplings": curve[0].tolist(),
                                                  "r": curve[1].tolist()},
            "theory_reason": self.theory_reason, "window": self.window, "n_boot": self.n_boot,
            "adiabatic": self.adiabatic, "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------------------ K_c estimates


def _profile_sse(kc: float, k: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    with np.errstate(divide="ignore"):
        x = np.where(k > 0, np.maximum(0.0, 1.0 - kc / np.where(k > 0, k, 1.0)), 0.0)
    design = np.stack([np.ones_like(k), x], axis=1)
    coef, resid = optimize.nnls(design, y)
    return float(resid**2), coef


def onset_window(r: np.ndarray) -> int:
    """Number of leading couplings in the onset fit: up to and including the first coupling where r
    reaches halfway between its smallest and largest value (at least 3)."""
    r = np.asarray(r, dtype=np.float64)
    above = np.nonzero(r >= 0.5 * (r.min() + r.max()))[0]
    last = int(above[0]) if above.size else r.size - 1
    return min(r.size, max(last + 1, 3))


def fit_kc(couplings: np.ndarray, r: np.ndarray, grid: int = 200, extra: int = 0) -> dict:
    """Fit the onset ``r^2 = c + A max(0, 1 - K_c/K)`` (c, A >= 0); see the module docstring.

    Only the couplings of :func:`onset_window` enter: far above K_c the shape of r(K) depends on the
    frequency distribution (exactly this form only for the Lorentzian), near K_c it is a square root.

    Args:
        couplings: Sorted distinct K [k] (at least 3).
        r: Mean order parameter [k].
        grid: Candidate K_c values of the profile search.
        extra: Couplings added to the onset window (to measure the model dependence).

    Returns:
        ``{"kc", "floor" (c), "amplitude" (A), "rmse", "window" [K_first, K_last]}``.
    """
    m = min(len(r), onset_window(r) + extra)
    k, y = np.asarray(couplings, dtype=np.float64)[:m], np.asarray(r, dtype=np.float64)[:m] ** 2
    lo, hi = max(k.min(), 1e-12), k.max()
    candidates = np.linspace(lo, hi, grid)
    sse = np.array([_profile_sse(c, k, y)[0] for c in candidates])
    best = int(np.argmin(sse))
    a, b = candidates[max(best - 1, 0)], candidates[min(best + 1, grid - 1)]
    res = optimize.minimize_scalar(lambda c: _profile_sse(c, k, y)[0], bounds=(a, b), method="bounded",
                                   options={"xatol": 1e-6 * max(hi, 1e-9)})
    kc = float(res.x) if res.fun <= sse[best] else float(candidates[best])
    sse_best, (c, amp) = _profile_sse(kc, k, y)
    return {"kc": kc, "floor": float(c), "amplitude": float(amp), "rmse": float(np.sqrt(sse_best / k.size)),
            "window": [float(k[0]), float(k[-1])]}


def susceptibility_peak(couplings: np.ndarray, chi: np.ndarray) -> float:
    """K at the maximum of chi(K), refined by the vertex of the parabola through the peak and its
    neighbours (the grid point itself at the ends of the range)."""
    k, chi = np.asarray(couplings, dtype=np.float64), np.asarray(chi, dtype=np.float64)
    i = int(np.argmax(chi))
    if i == 0 or i == k.size - 1:
        return float(k[i])
    x, y = k[i - 1:i + 2], chi[i - 1:i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a < 0 else k[i]
    return float(np.clip(vertex, x[0], x[2]))


def _summary(values: np.ndarray, point: float) -> dict:
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [2.5, 97.5]) if values.size else (np.nan, np.nan)
    return {"kc": point, "sd": float(values.std()) if values.size > 1 else None, "ci95": [float(lo), float(hi)],
            "n_boot": int(values.size)}


# ------------------------------------------------------------------------------------- the analysis


def _replica_stats(r: np.ndarray, start: int, n: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(r mean, chi, block means [B], block chis [B]) of one replica's window."""
    window = r[start:]
    blocks = np.array_split(window, min(N_BLOCKS, window.size))
    means = np.array([b.mean() for b in blocks])
    chis = np.array([n * max(float((b * b).mean() - b.mean() ** 2), 0.0) for b in blocks])
    return float(window.mean()), float(n * max(float((window**2).mean() - window.mean() ** 2), 0.0)), means, chis


def analyze_transition(paths: Sequence[str | Path], *, transient: float | None = None, n_boot: int = 1000,
                       seed: int = 0) -> TransitionReport:
    """r(K) with a bootstrap band, K_c estimates and theory for one or more sweep files.

    Args:
        paths: H5MD files of batched sweeps (combined along the coupling axis).
        transient: Average over frames at or after this time (default: the second half of the frames).
        n_boot: Bootstrap resamples of the band (the K_c bootstrap uses min(n_boot, 200)).
        seed: Seed of the bootstrap.

    Raises:
        ValueError: Unreadable files, files with different N, fewer than 3 distinct couplings.
    """
    if not paths:
        raise ValueError("give at least one RUN.h5 file")
    if n_boot < 10:
        raise ValueError(f"--n-boot must be >= 10, got {n_boot}")
    infos, per_k, warnings = [], {}, []
    for path in paths:
        with open_trajectory(path) as traj:
            info = read_run_info(traj)
            r = order_parameter_series(traj, info)
        if infos and info.n_nodes != infos[0].n_nodes:
            raise ValueError(f"{info.path}: {info.n_nodes} oscillators, but {infos[0].path} has {infos[0].n_nodes}; "
                             "combine sweeps of one system size")
        if infos and _system(info) != _system(infos[0]):
            warnings.append(f"{info.path.name}: its recipe differs from {infos[0].path.name} beyond coupling and seed")
        if np.any(~np.isfinite(info.couplings)):
            raise ValueError(f"{info.path}: no per-replica coupling stored; not a coupling sweep")
        start = frame_index(info, transient) if transient is not None else info.n_frames // 2
        for rep in range(info.n_replicas):
            key = round(float(info.couplings[rep]), 12)
            per_k.setdefault(key, []).append(_replica_stats(r[:, rep], start, info.n_nodes))
        infos.append(info)
        warnings.extend(info.warnings)
    couplings = np.array(sorted(per_k))
    if couplings.size < 3:
        listed = ", ".join(f"{k:g}" for k in couplings)
        raise ValueError(f"a transition needs a sweep over at least 3 couplings; got {couplings.size} (K = {listed}); "
                         "run e.g. lotsim simulate --coupling 0:3:16 --replicas 4")

    rng = np.random.default_rng(seed)
    r_mean, chi_mean, n_seeds = np.empty(couplings.size), np.empty(couplings.size), np.empty(couplings.size, int)
    boot_r, boot_chi = np.empty((n_boot, couplings.size)), np.empty((n_boot, couplings.size))
    for j, key in enumerate(couplings):
        stats = per_k[float(key)]
        n_seeds[j] = len(stats)
        r_mean[j] = np.mean([s[0] for s in stats])
        chi_mean[j] = np.mean([s[1] for s in stats])
        # resampling units: seeds, or with one seed the time blocks of its window
        units_r = np.array([s[0] for s in stats]) if len(stats) > 1 else stats[0][2]
        units_chi = np.array([s[1] for s in stats]) if len(stats) > 1 else stats[0][3]
        pick = rng.integers(0, units_r.size, (n_boot, units_r.size))
        boot_r[:, j], boot_chi[:, j] = units_r[pick].mean(axis=1), units_chi[pick].mean(axis=1)
    r_low, r_high = np.percentile(boot_r, [2.5, 97.5], axis=0)

    fit = fit_kc(couplings, r_mean)
    n_kc = min(n_boot, N_BOOT_KC)
    fits = np.array([fit_kc(couplings, boot_r[b])["kc"] for b in range(n_kc)])
    kc_fit = {**_summary(fits, fit["kc"]), **{k: v for k, v in fit.items() if k != "kc"}}
    # model dependence: how far K_c moves when the next coupling joins the onset window
    kc_fit["statistical_sd"] = kc_fit["sd"]
    kc_fit["model_shift"] = abs(fit_kc(couplings, r_mean, extra=1)["kc"] - fit["kc"])
    kc_fit["sd"] = float(np.hypot(kc_fit["sd"] or 0.0, kc_fit["model_shift"]))
    peak = susceptibility_peak(couplings, chi_mean)
    peaks = np.array([susceptibility_peak(couplings, boot_chi[b]) for b in range(n_kc)])
    kc_chi = _summary(peaks, peak)
    i = int(np.argmin(np.abs(couplings - peak)))
    spacing = 0.5 * float(np.diff(couplings)[max(0, min(i, couplings.size - 2))])
    kc_chi["sd"] = max(kc_chi["sd"] or 0.0, spacing)
    kc_chi["grid_half_spacing"] = spacing

    theory, reason = theory_for_run(infos[0])
    window = f"frames at t >= {transient:g}" if transient is not None else "second half of the stored frames"
    return TransitionReport(
        files=[i.path for i in infos], infos=infos, couplings=couplings, n_seeds=n_seeds, r_mean=r_mean,
        r_low=r_low, r_high=r_high, chi_mean=chi_mean, kc_fit=kc_fit, kc_chi=kc_chi, theory=theory,
        theory_reason=reason, window=window, n_boot=n_boot, warnings=warnings,
    )


def _system(info: RunInfo) -> dict:
    """The recipe without what a sweep varies (couplings, seeds, shard, output)."""
    recipe = {k: v for k, v in info.recipe.items() if k not in ("seed", "replicas", "output", "name", "shard")}
    recipe["dynamics"] = {k: v for k, v in info.section("dynamics").items() if k != "coupling"}
    return recipe


# ------------------------------------------------------------------------------------- hysteresis


def adiabatic_sweep(recipe, couplings: Sequence[float], direction: str = "both", *,
                    steps_per_coupling: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Adiabatic continuation: integrate at each coupling starting from the previous coupling's final
    state (phases and, with inertia, velocities), forward (increasing K) and/or backward.

    Runs one replica (the recipe's first seed) through ``lotsim.simulation.build_system`` and
    ``lotsim.dynamics.make_integrator``; r is averaged over the second half of each coupling's run,
    sampled every ``output.save_every`` steps. The backward sweep of ``"both"`` starts from the forward
    sweep's final state.

    Args:
        recipe: A :class:`lotsim.config.SimulationRecipe` (its coupling is ignored).
        couplings: The K values (sorted ascending here).
        direction: ``forward``, ``backward`` or ``both``.
        steps_per_coupling: Integration steps per K (default: the recipe's step count).
        progress: Called as ``progress(couplings_done, total)``.

    Returns:
        ``{"couplings", "forward", "backward", "steps_per_coupling", "dt"}`` (r lists aligned with the
        ascending couplings; a direction not run is None).
    """
    import dataclasses

    import torch

    from lotsim.dynamics import make_integrator, order_parameter
    from lotsim.simulation import build_system

    if direction not in ("forward", "backward", "both"):
        raise ValueError(f"direction {direction!r} is not allowed; use forward, backward or both")
    ks = np.sort(np.asarray(couplings, dtype=np.float64))
    if ks.size < 2:
        raise ValueError("an adiabatic sweep needs at least two couplings")
    dyn = recipe.dynamics
    update = {"replicas": 1, "dynamics": dyn.model_copy(update={"coupling": float(ks[0])})}
    if "shard" in type(recipe).model_fields:  # a shard's recipe: the sweep runs the whole system
        update["shard"] = None
    base = recipe.model_copy(update=update)
    _, system, theta0, _, _ = build_system(base)
    dtype, device = system.omega.dtype, system.omega.device
    n_steps = int(steps_per_coupling or dyn.n_steps)
    every = max(1, min(recipe.output.save_every, n_steps // 4 or 1))
    runs = {"forward": [ks], "backward": [ks[::-1]], "both": [ks, ks[::-1]]}[direction]
    total, done = sum(len(r) for r in runs), 0
    state_theta = torch.as_tensor(theta0, dtype=dtype, device=device)
    velocity = None
    out: dict = {"couplings": ks.tolist(), "forward": None, "backward": None, "steps_per_coupling": n_steps,
                 "dt": dyn.dt}
    for sweep_index, sweep in enumerate(runs):
        name = "forward" if sweep[0] <= sweep[-1] else "backward"
        values = {}
        for kk, k in enumerate(sweep):
            sys_k = dataclasses.replace(system, coupling=torch.full((1, 1), float(k), dtype=dtype, device=device))
            integ = make_integrator(sys_k, backend=dyn.backend, method=dyn.integrator, dt=dyn.dt,
                                    seed=recipe.seed + 1000 * sweep_index + kk)
            state = integ.init_fn(state_theta, velocity)
            samples = []
            while state.step < n_steps:
                state = integ.step_fn(state, min(every, n_steps - state.step))
                if state.step >= n_steps / 2:
                    samples.append(float(order_parameter(state.theta)[0][0]))
            if not bool(torch.isfinite(state.theta).all()):
                raise RuntimeError(f"adiabatic sweep blew up at K={k:g}; use a smaller dt")
            values[float(k)] = float(np.mean(samples))
            state_theta, velocity = state.theta, state.velocity
            done += 1
            if progress is not None:
                progress(done, total)
        out[name] = [values[float(k)] for k in ks]
    return out
