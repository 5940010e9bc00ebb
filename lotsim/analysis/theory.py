"""Analytic results for the Kuramoto model on the complete graph (mean-field normalisation, N -> inf).

- Critical coupling ``K_c = 2 / (pi g(0))`` for a unimodal symmetric frequency density g
  (Kuramoto 1975): Lorentzian half-width gamma -> ``2 gamma``; Gaussian std sigma ->
  ``sqrt(8/pi) sigma ~ 1.596 sigma``; uniform on [-w, w] -> ``4 w / pi`` (a first-order jump to r = pi/4).
- Stationary partially locked state: the self-consistency equation
  ``1 = K int_{-pi/2}^{pi/2} cos^2(theta) g(K r sin theta) d theta`` (its largest root r; r = 0 below
  K_c). Lorentzian in closed form: ``r = sqrt(1 - 2 gamma / K)``; uniform in closed form for the
  integral ``(K / 2w) (theta_m + sin theta_m cos theta_m)``, ``theta_m = arcsin(min(1, w / (K r)))``;
  Gaussian by Gauss-Legendre quadrature.
- Ott-Antonsen (2008) reduction for Lorentzian frequencies: ``dr/dt = -gamma r + (K/2) r (1 - r^2)``,
  solved in closed form; exact for initial states on the OA manifold (e.g. all phases equal), a
  good description of the growth from incoherence otherwise.

:func:`theory_for_run` decides whether these apply to a recorded run and converts its couplings
to the mean-field convention (``degree`` normalisation: ``K N/(N-1)``, ``none``: ``K N``; a single
harmonic of amplitude h multiplies K by h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from lotsim.analysis._run import RunInfo, complete_scale

DISTRIBUTIONS = ("lorentzian", "gaussian", "uniform")
_GL_X, _GL_W = np.polynomial.legendre.leggauss(256)


def critical_coupling(dist: str, width: float) -> float:
    """``K_c = 2 / (pi g(0))`` (mean-field normalisation).

    Args:
        dist: lorentzian (half-width gamma), gaussian (std sigma) or uniform (half-range w).
        width: gamma, sigma or w (> 0).
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if dist == "lorentzian":
        return 2.0 * width
    if dist == "gaussian":
        return math.sqrt(8.0 / math.pi) * width
    if dist == "uniform":
        return 4.0 * width / math.pi
    raise ValueError(f"no theory for frequency distribution {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}")


def _self_consistency(r: float, coupling: float, dist: str, width: float) -> float:
    """``K int cos^2(theta) g(K r sin theta) d theta`` (equals K / K_c at r -> 0)."""
    kr = coupling * r
    if dist == "uniform":
        theta_m = math.asin(min(1.0, width / kr)) if kr > 0 else math.pi / 2
        return coupling / (2 * width) * (theta_m + math.sin(theta_m) * math.cos(theta_m))
    theta = 0.5 * math.pi * _GL_X
    x = kr * np.sin(theta)
    if dist == "gaussian":
        g = np.exp(-0.5 * (x / width) ** 2) / (width * math.sqrt(2 * math.pi))
    else:
        g = width / (math.pi * (x * x + width * width))
    return float(coupling * 0.5 * math.pi * np.sum(_GL_W * np.cos(theta) ** 2 * g))


def stationary_r(couplings: np.ndarray | float, dist: str, width: float) -> np.ndarray:
    """Stationary order parameter r(K) of the partially locked state (0 below K_c).

    Args:
        couplings: K values (mean-field normalisation).
        dist, width: See :func:`critical_coupling`.

    Returns:
        r with the shape of ``couplings``.
    """
    k = np.asarray(couplings, dtype=np.float64)
    kc = critical_coupling(dist, width)
    if dist == "lorentzian":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(k > kc, np.sqrt(np.clip(1.0 - kc / k, 0.0, 1.0)), 0.0)
    out = np.zeros(k.shape)
    for idx, value in np.ndenumerate(k):
        if value <= kc:
            continue
        f = lambda r, value=value: _self_consistency(r, value, dist, width) - 1.0  # noqa: E731
        out[idx] = optimize.brentq(f, 1e-9, 1.0, xtol=1e-12) if f(1.0) < 0 else 1.0
    return out


def ott_antonsen_r(times: np.ndarray, coupling: float, gamma: float, r0: float) -> np.ndarray:
    """r(t) on the Ott-Antonsen manifold for Lorentzian frequencies (half-width gamma).

    Solves ``dr/dt = a r - (K/2) r^3`` with ``a = K/2 - gamma``:
    ``r^2 = 1 / (e^{-2 a t} / r0^2 + K (1 - e^{-2 a t}) / (2 a))`` (``K t`` at a = 0).

    Args:
        times: Times since the start [t].
        coupling: K (mean-field normalisation).
        gamma: Half-width of the Lorentzian.
        r0: r at t = 0 (> 0).

    Returns:
        r [t].
    """
    t = np.asarray(times, dtype=np.float64)
    if r0 <= 0:
        return np.zeros_like(t)
    a = 0.5 * coupling - gamma
    with np.errstate(over="ignore", divide="ignore"):
        decay = np.exp(-2.0 * a * t)
        growth = -np.expm1(-2.0 * a * t) / (2.0 * a) if abs(a) > 1e-12 else t
        return 1.0 / np.sqrt(decay / r0**2 + coupling * growth)


@dataclass(frozen=True)
class Theory:
    """Mean-field theory that applies to a run.

    Attributes:
        dist, width: Frequency distribution and its width (gamma / sigma / half-range).
        scale: Multiply a run's K by ``scale`` to get the mean-field K.
        kc: Critical coupling in the RUN's units (``critical_coupling / scale``).
    """

    dist: str
    width: float
    scale: float

    @property
    def kc(self) -> float:
        return critical_coupling(self.dist, self.width) / self.scale

    def r(self, couplings: np.ndarray | float) -> np.ndarray:
        """Stationary r at the run's couplings."""
        return stationary_r(np.asarray(couplings, dtype=np.float64) * self.scale, self.dist, self.width)

    def transient(self, times: np.ndarray, coupling: float, r0: float) -> np.ndarray | None:
        """Ott-Antonsen r(t) from ``r0`` at ``times[0]`` (Lorentzian only, else None)."""
        if self.dist != "lorentzian":
            return None
        t = np.asarray(times, dtype=np.float64)
        return ott_antonsen_r(t - t[0], coupling * self.scale, self.width, r0)

    def describe(self) -> str:
        symbol = {"lorentzian": "γ", "gaussian": "σ", "uniform": "w"}[self.dist]
        return f"complete graph, {self.dist} {symbol}={self.width:g}, N → ∞"


def theory_for_run(info: RunInfo) -> tuple[Theory | None, str | None]:
    """The mean-field theory of a run, or None and the reason it does not apply."""
    if not info.recipe:
        return None, "the file stores no recipe"
    if info.topology != "complete":
        return None, f"theory curves need the complete graph (this run: {info.topology})"
    dyn, freq = info.section("dynamics"), info.section("frequencies")
    harmonics = info.harmonics
    if not harmonics or harmonics[0] == 0 or any(h != 0 for h in harmonics[1:]):
        return None, "theory needs plain first-harmonic coupling (harmonics = [h])"
    if any(a != 0 for a in info.frustration[:1]):
        return None, "theory here needs zero frustration"
    if float(dyn.get("noise", 0.0)) > 0 or float(dyn.get("inertia", 0.0)) > 0:
        return None, "theory here needs no noise and no inertia"
    dist, width = str(freq.get("dist", "")), float(freq.get("width", 0.0))
    if dist not in DISTRIBUTIONS or width <= 0:
        return None, f"no theory for frequencies {dist!r} with width {width:g}"
    try:
        scale = complete_scale(info)
    except ValueError as err:
        return None, str(err)
    return Theory(dist=dist, width=width, scale=scale * harmonics[0]), None
