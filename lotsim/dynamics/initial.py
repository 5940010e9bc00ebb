"""Natural frequencies and initial phases, sampled reproducibly from a seed (numpy).

Each seed owns independent streams (``default_rng([seed, stream])``) so frequencies do not change
when the initial condition does, and replica ``s`` of a sweep is the same system at every coupling.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from lotsim.lattice import Lattice

FREQUENCY_STREAM, INITIAL_STREAM = 1, 2


def natural_frequencies(n: int, dist: str, *, mean: float = 0.0, width: float = 1.0,
                        sampling: str = "random", seed: int = 0, file: str | Path | None = None) -> np.ndarray:
    """(n,) natural frequencies.

    Args:
        dist: constant | gaussian (std ``width``) | lorentzian (half-width ``width``) |
            uniform (on [mean - width, mean + width]) | file (.npy or whitespace text).
        sampling: ``random`` draws i.i.d.; ``quantile`` takes omega_j = F^-1((j - 1/2) / n) (no sample
            noise, what analytic comparisons use) and places them on nodes in a seeded random order.
    """
    rng = np.random.default_rng([seed, FREQUENCY_STREAM])
    if dist == "constant":
        return np.full(n, float(mean))
    if dist == "file":
        if file is None:
            raise ValueError("frequencies.dist = 'file' needs frequencies.file")
        values = _load_array(file, "frequency file").reshape(-1)
        if values.shape[0] != n:
            raise ValueError(f"frequency file {str(file)!r} has {values.shape[0]} values, the lattice has {n} nodes")
        return values.astype(np.float64)
    dists = {"gaussian": stats.norm(mean, width), "lorentzian": stats.cauchy(mean, width),
             "uniform": stats.uniform(mean - width, 2 * width)}
    if dist not in dists:
        raise ValueError(f"unknown frequency distribution {dist!r}; allowed: constant, gaussian, "
                         "lorentzian, uniform, file")
    if width == 0:
        return np.full(n, float(mean))
    if sampling == "quantile":
        values = dists[dist].ppf((np.arange(n) + 0.5) / n)
        return values[rng.permutation(n)]
    if sampling != "random":
        raise ValueError(f"unknown sampling {sampling!r}; allowed: random, quantile")
    return dists[dist].rvs(size=n, random_state=rng)


def initial_phases(lattice: Lattice, kind: str, *, seed: int = 0, twist: int = 1) -> np.ndarray:
    """(n,) initial phases for ``kind`` random | sync | twisted | vortex (files: see load_phases)."""
    n = lattice.n
    if kind == "random":
        return np.random.default_rng([seed, INITIAL_STREAM]).uniform(0.0, 2 * math.pi, n)
    if kind == "sync":
        return np.zeros(n)
    if kind == "twisted":
        if lattice.positions.shape[1] == 0:
            raise ValueError(f"a twisted state needs node positions; {lattice.name} has none")
        x = lattice.positions[:, 0]
        length = lattice.box[0] if lattice.box is not None else x.max() + 1
        return 2 * math.pi * twist * x / length
    if kind == "vortex":
        if lattice.positions.shape[1] != 2:
            raise ValueError(f"a vortex needs a 2-D lattice with positions; {lattice.name} is not one")
        centre = lattice.positions.mean(axis=0) + 0.25  # off-lattice centre: no node sits on the core
        d = lattice.positions - centre
        return np.arctan2(d[:, 1], d[:, 0])
    raise ValueError(f"unknown initial state {kind!r}; allowed: random, sync, twisted, vortex, file")


def load_phases(file: str | Path, n: int, replicas: int) -> np.ndarray:
    """(replicas, n) phases from a .npy/.txt file holding (n,) or (replicas, n) values."""
    values = _load_array(file, "initial-phase file")
    if values.ndim == 1 and values.shape[0] == n:
        return np.broadcast_to(values, (replicas, n)).copy()
    if values.shape == (replicas, n):
        return values.astype(np.float64)
    raise ValueError(f"initial-phase file {str(file)!r} has shape {values.shape}; expected ({n},) or "
                     f"({replicas}, {n})")


def _load_array(file: str | Path, what: str) -> np.ndarray:
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)  # a .npy of strings fails here
    except Exception as err:  # numpy raises several kinds for malformed files
        raise ValueError(f"cannot read {what} {str(path)!r}: {err}") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} {str(path)!r} contains NaN or inf")
    return values
