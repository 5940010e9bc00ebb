"""Observables of oscillator phases: pure numpy functions over explicit arrays.

Contract: every function takes phases ``theta`` with the node axis LAST (``[..., n]``: a frame, a
block of frames ``[f, r, n]``, anything) and reduces over it, or takes a time axis FIRST where it
says so. Nothing here reads files, imports torch, typer, rich or matplotlib; :mod:`lotsim.analysis`
streams H5MD files through these functions chunk by chunk.

Conventions (docs/physics.md): ``A[i, j]`` is the influence of node ``j`` on node ``i``; edges are given as
``(senders j, receivers i, weights A_ij)``; phases of the simulator are stored UNWRAPPED, so
effective frequencies are exact; charges and winding numbers count counter-clockwise turns of the
phase as +1.

Legend: ``n`` nodes, ``e`` directed edges, ``f`` frames/faces, ``m`` harmonics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

TWO_PI = 2.0 * math.pi

__all__ = [
    "LockedClusters",
    "adjacency_matrix",
    "detect_transient",
    "effective_frequencies",
    "face_charges",
    "frequency_clusters",
    "local_order_parameter",
    "local_order_parameter_complete",
    "lyapunov_potential",
    "lyapunov_potential_complete",
    "order_parameter",
    "order_parameters",
    "planar_faces",
    "square_plaquettes",
    "susceptibility",
    "winding_number",
    "wrap",
]


# ------------------------------------------------------------------------------------ basics


def wrap(phase: np.ndarray | float) -> np.ndarray:
    """Phase differences mapped to [-pi, pi) (the shortest signed angle)."""
    return (np.asarray(phase) + math.pi) % TWO_PI - math.pi


def order_parameter(theta: np.ndarray, harmonic: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Kuramoto-Daido order parameter ``r_m e^{i psi_m} = (1/n) sum_j exp(i m theta_j)``.

    Args:
        theta: Phases [..., n].
        harmonic: m >= 1 (m = 2 detects two anti-phase clusters: r_1 = 0, r_2 = 1).

    Returns:
        ``(r [...], psi [...])`` with the node axis reduced; psi in (-pi, pi].
    """
    if harmonic < 1:
        raise ValueError(f"harmonic must be >= 1, got {harmonic}")
    mt = np.asarray(theta, dtype=np.float64) * harmonic
    x, y = np.cos(mt).mean(axis=-1), np.sin(mt).mean(axis=-1)
    return np.hypot(x, y), np.arctan2(y, x)


def order_parameters(theta: np.ndarray, max_harmonic: int) -> np.ndarray:
    """Moduli ``r_m`` of the first ``max_harmonic`` order parameters.

    Args:
        theta: Phases [..., n].
        max_harmonic: M >= 1.

    Returns:
        ``r`` [..., M] with ``r[..., m-1] = r_m``.
    """
    return np.stack([order_parameter(theta, m)[0] for m in range(1, max_harmonic + 1)], axis=-1)


def susceptibility(r: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Fluctuation susceptibility ``chi = N (<r^2> - <r>^2)`` over the time axis.

    Args:
        r: Order-parameter time series, time along ``axis`` (e.g. [frame, replica]).
        n: Number of oscillators N.
        axis: The time axis.

    Returns:
        chi with ``axis`` reduced (0 for a single sample).
    """
    r = np.asarray(r, dtype=np.float64)
    return n * np.maximum(np.mean(r * r, axis=axis) - np.mean(r, axis=axis) ** 2, 0.0)


# ----------------------------------------------------------------------------- local order


def adjacency_matrix(senders: np.ndarray, receivers: np.ndarray, weights: np.ndarray | None, n: int) -> sp.csr_array:
    """Sparse ``A`` [n, n] with ``A[i, j]`` = weight of the edge j -> i (1 when ``weights`` is None)."""
    w = np.ones(len(senders)) if weights is None else np.asarray(weights, dtype=np.float64)
    return sp.csr_array((w, (np.asarray(receivers), np.asarray(senders))), shape=(n, n))


def local_order_parameter(theta: np.ndarray, adjacency: sp.csr_array) -> np.ndarray:
    """Local order parameter ``r_i = |sum_j A_ij e^{i theta_j}| / sum_j A_ij`` (neighbours only).

    Nodes without in-neighbours get ``r_i = nan``.

    Args:
        theta: Phases [..., n].
        adjacency: ``A`` [n, n] from :func:`adjacency_matrix`.

    Returns:
        ``r_i`` [..., n].
    """
    theta = np.asarray(theta, dtype=np.float64)
    lead, n = theta.shape[:-1], theta.shape[-1]
    z = np.exp(1j * theta.reshape(-1, n)).T  # [n, batch]
    degree = np.asarray(adjacency.sum(axis=1)).reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        local = np.abs(adjacency @ z) / degree[:, None]
    return local.T.reshape(*lead, n)


def local_order_parameter_complete(theta: np.ndarray) -> np.ndarray:
    """Local order parameter on the complete graph in O(n): ``r_i = |n Z - e^{i theta_i}| / (n - 1)``."""
    theta = np.asarray(theta, dtype=np.float64)
    n = theta.shape[-1]
    if n < 2:
        raise ValueError("the local order parameter needs at least two nodes")
    z = np.exp(1j * theta)
    return np.abs(z.sum(axis=-1, keepdims=True) - z) / (n - 1)


# ----------------------------------------------------------------------- effective frequencies


def effective_frequencies(theta: np.ndarray, times: np.ndarray, method: str = "fit") -> np.ndarray:
    """Time-averaged frequencies ``<dtheta_i/dt>`` from UNWRAPPED phases, time along axis 0.

    Args:
        theta: Unwrapped phases [frame, ...].
        times: [frame] times (at least two distinct).
        method: ``"fit"``: least-squares slope of theta(t) (robust to the bounded wobble of locked
            phases); ``"endpoints"``: ``(theta_last - theta_first) / (t_last - t_first)``.
            Both are exact for uniform rotation.

    Returns:
        omega_eff [...].
    """
    theta, times = np.asarray(theta, dtype=np.float64), np.asarray(times, dtype=np.float64)
    if theta.shape[0] != times.shape[0] or times.shape[0] < 2 or times[-1] == times[0]:
        raise ValueError("effective frequencies need at least two frames at distinct times")
    if method == "endpoints":
        return (theta[-1] - theta[0]) / (times[-1] - times[0])
    if method != "fit":
        raise ValueError(f"method {method!r} is not allowed; use fit or endpoints")
    dt = times - times.mean()
    # shifting theta by its first frame keeps the sums small (unwrapped phases grow like omega t)
    return np.tensordot(dt, theta - theta[0], axes=(0, 0)) / np.sum(dt * dt)


@dataclass
class LockedClusters:
    """Oscillators grouped by effective frequency (see :func:`frequency_clusters`).

    Attributes:
        labels: [n] cluster index of each oscillator (clusters ordered by size, largest first;
            singletons included).
        sizes: [c] sizes of the clusters with at least two members (the locked clusters).
        frequencies: [c] mean effective frequency of each locked cluster.
        widths: [c] max - min effective frequency within each locked cluster.
        locked_fraction: Fraction of oscillators in the largest locked cluster (0 if none).
        tol: The frequency tolerance used.
        coincident: Groups of at least two oscillators whose natural frequencies were already as close
            (within ``tol``) as their effective ones: drifting side by side, not pulled together by the
            coupling, so not counted as locked (0 when no natural frequencies were given, or all are identical).
    """

    labels: np.ndarray
    sizes: np.ndarray
    frequencies: np.ndarray
    widths: np.ndarray
    locked_fraction: float
    tol: float
    coincident: int = 0


def frequency_clusters(omega_eff: np.ndarray, tol: float = 1e-2, omega: np.ndarray | None = None) -> LockedClusters:
    """Frequency-locked clusters: oscillators whose effective frequencies agree within ``tol``.

    Rule: every cluster spans at most ``tol`` (max - min). Sort the frequencies and cut wherever two
    neighbours differ by more than ``tol`` (single linkage). A piece that still spans more than ``tol``
    is a chain of drifting oscillators (the continuum of drifting frequencies of a chimera or of partial
    synchrony), not one locked group: it is cut again at every gap of at least ``g``, with ``g`` the
    largest of its gaps for which no resulting cluster spans more than ``tol`` (single linkage at a
    threshold lowered just enough). A cluster with at least two members is a locked cluster; the
    locked fraction is the share of oscillators in the largest one. ``tol`` should exceed the
    finite-time error of locked oscillators (about wobble amplitude / averaging time) and stay below the
    frequency gaps between distinct clusters. NaN frequencies are singletons.

    With heterogeneous natural frequencies ``omega``, a dense population has many neighbours within
    ``tol`` by chance (below K_c, 1000 Lorentzian oscillators form hundreds of such groups): a group
    whose natural frequencies already agree within ``tol`` drifts at those frequencies side by side and
    is the uncoupled system's grouping, not locking; it is counted in ``coincident``, not as a locked
    cluster. Locking means the coupling pulled frequencies together: the members' natural frequencies
    span more than their effective frequencies do, by over ``tol``. With identical natural frequencies
    every group counts.

    Args:
        omega_eff: Effective frequencies [n].
        tol: Absolute tolerance (rad per unit time), > 0.
        omega: Natural frequencies [n] (optional; see above).

    Returns:
        A :class:`LockedClusters`.
    """
    omega_eff = np.asarray(omega_eff, dtype=np.float64).reshape(-1)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    n = omega_eff.shape[0]
    order = np.argsort(omega_eff, kind="stable")
    sorted_values = omega_eff[order]
    gaps = np.diff(sorted_values)
    cut = ~(gaps <= tol)  # NaN gaps cut too
    starts = np.concatenate([[0], np.nonzero(cut)[0] + 1]).astype(np.int64)
    ends = np.append(starts[1:], n)
    chained = np.nonzero(sorted_values[ends - 1] - sorted_values[starts] > tol)[0] if n else []
    for piece in chained:  # one pass per chained piece, O(m log m) each
        lo, hi = int(starts[piece]), int(ends[piece])
        inner = gaps[lo:hi - 1]
        thresholds = np.unique(inner)[::-1]  # candidate g, widest first

        def spans_ok(g: float, lo: int = lo, hi: int = hi, inner: np.ndarray = inner) -> bool:
            bounds = lo + 1 + np.nonzero(inner >= g)[0]
            first_of, last_of = np.concatenate([[lo], bounds]), np.append(bounds, hi) - 1
            return bool(np.all(sorted_values[last_of] - sorted_values[first_of] <= tol))

        left, right = 0, thresholds.shape[0] - 1  # spans_ok(thresholds[-1]) holds: every gap cut
        while left < right:  # smallest index (largest g) that works; spans_ok is monotone in the index
            mid = (left + right) // 2
            if spans_ok(thresholds[mid]):
                right = mid
            else:
                left = mid + 1
        cut[lo:hi - 1] |= inner >= thresholds[left]
    first = np.concatenate([[0], np.nonzero(cut)[0] + 1]).astype(np.int64) if n else np.zeros(0, np.int64)
    raw = np.zeros(n, dtype=np.int64)
    raw[first[1:]] = 1
    raw = np.cumsum(raw)  # cluster id in sorted order
    counts = np.bincount(raw)
    means = np.bincount(raw, weights=sorted_values) / counts
    spans = np.append(sorted_values[first[1:] - 1], sorted_values[-1]) - sorted_values[first] if n else np.zeros(0)
    rank = np.lexsort((means, -counts))  # by size (desc), then frequency
    relabel = np.empty_like(rank)
    relabel[rank] = np.arange(rank.shape[0])
    labels = np.empty(n, dtype=np.int64)
    labels[order] = relabel[raw]
    locked = rank[counts[rank] >= 2]
    coincident = 0
    if omega is not None and locked.size:
        natural = np.asarray(omega, dtype=np.float64).reshape(-1)[order]
        if np.ptp(natural) > 0:  # heterogeneous: drop the groups the uncoupled system would show
            natural_span = np.maximum.reduceat(natural, first) - np.minimum.reduceat(natural, first)
            pulled = natural_span[locked] > spans[locked] + tol
            coincident = int((~pulled).sum())
            locked = locked[pulled]
    sizes, freqs = counts[locked], means[locked]
    fraction = float(sizes[0] / n) if sizes.size else 0.0
    return LockedClusters(labels=labels, sizes=sizes, frequencies=freqs, widths=spans[locked],
                          locked_fraction=fraction, tol=float(tol), coincident=coincident)


# ----------------------------------------------------------------------------- transients


def detect_transient(r: np.ndarray, times: np.ndarray, final_fraction: float = 0.25,
                     smooth_fraction: float = 0.05, min_band: float = 0.01) -> int:
    """First frame after which the running mean of r(t) stays inside its final-window band.

    Rule: let m and s be the mean and standard deviation of r over the last ``final_fraction`` of
    the frames, and ``delta = max(3 s, min_band)``. Smooth r with a trailing running mean over
    ``w = max(1, round(smooth_fraction * frames))`` frames. The transient ends at the first frame
    t* such that the running mean lies in ``[m - delta, m + delta]`` at every frame from t* on;
    t* is capped at the start of the final window, so the stationary window is never shorter than
    it.

    Args:
        r: Order parameter [frame].
        times: [frame] (only its length is used; kept for symmetry with the callers).
        final_fraction: Share of frames that defines the band, in (0, 1].
        smooth_fraction: Share of frames of the running-mean window.
        min_band: Smallest half-width of the band.

    Returns:
        The frame index t* (0 when r is stationary from the start).
    """
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    n = r.shape[0]
    if n != len(times):
        raise ValueError("r and times must have the same length")
    if n < 2:
        return 0
    start = min(n - 1, int(math.floor(n * (1.0 - final_fraction))))
    tail = r[start:]
    delta = max(3.0 * float(tail.std()), min_band)
    w = max(1, round(smooth_fraction * n))
    csum = np.concatenate([[0.0], np.cumsum(r)])
    lo = np.maximum(np.arange(1, n + 1) - w, 0)
    running = (csum[1:] - csum[lo]) / (np.arange(1, n + 1) - lo)
    outside = np.nonzero(np.abs(running - tail.mean()) > delta)[0]
    first = int(outside[-1] + 1) if outside.size else 0
    return min(first, start)


# ---------------------------------------------------------------------------- topology


def winding_number(theta: np.ndarray) -> np.ndarray:
    """Winding number ``q = (1/2pi) sum_j wrap(theta_{j+1} - theta_j)`` around a ring.

    Args:
        theta: Phases [..., n] in ring order (node j is joined to j+1 and n-1 to 0, as
            ``build_lattice("ring")`` numbers them).

    Returns:
        Integer winding numbers [...] (int64). A q-twisted state has q.
    """
    theta = np.asarray(theta, dtype=np.float64)
    steps = wrap(np.diff(theta, axis=-1, append=theta[..., :1]))
    return np.rint(steps.sum(axis=-1) / TWO_PI).astype(np.int64)


def square_plaquettes(shape: tuple[int, int], periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Elementary plaquettes of a square grid, counter-clockwise in (x = axis 0, y = axis 1).

    Node ``(i, j)`` has index ``i * cols + j`` and position ``(i, j)`` (``build_lattice("square")``).

    Args:
        shape: (rows, cols).
        periodic: Torus (rows*cols plaquettes, wrapping) or open ((rows-1)*(cols-1)).

    Returns:
        ``(faces [f, 4] int64, centres [f, 2] float64)``.
    """
    rows, cols = shape
    ni, nj = (rows, cols) if periodic else (rows - 1, cols - 1)
    if ni < 1 or nj < 1:
        raise ValueError(f"a {rows}x{cols} grid has no plaquettes")
    i, j = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    i1, j1 = (i + 1) % rows, (j + 1) % cols

    def node(a, b):
        return a * cols + b

    faces = np.stack([node(i, j), node(i1, j), node(i1, j1), node(i, j1)], axis=1).astype(np.int64)
    return faces, np.stack([i + 0.5, j + 0.5], axis=1).astype(np.float64)


def planar_faces(positions: np.ndarray, senders: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounded faces of a planar graph drawn at ``positions`` (triangular, hexagonal, open square grids).

    Every undirected edge is walked in both directions keeping the face on its left; faces with a
    positive signed area are the bounded ones (counter-clockwise), the single negative one is the
    outer face. Shorter faces are padded by repeating their last node (a zero phase step).

    Args:
        positions: [n, 2] node positions of a planar embedding (no crossing edges).
        senders, receivers: Edges [e] (either or both directions).

    Returns:
        ``(faces [f, L] int64 counter-clockwise, centres [f, 2])``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError("planar faces need 2-D node positions")
    n = positions.shape[0]
    pairs = {(int(a), int(b)) for a, b in zip(senders, receivers) if a != b}
    pairs |= {(b, a) for a, b in pairs}
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        neighbours[a].append(b)
    for v in range(n):  # counter-clockwise by angle around v
        d = positions[neighbours[v]] - positions[v]
        neighbours[v] = [neighbours[v][k] for k in np.argsort(np.arctan2(d[:, 1], d[:, 0]))]
    position_in = [{u: k for k, u in enumerate(nb)} for nb in neighbours]
    seen: set[tuple[int, int]] = set()
    faces = []
    for start in sorted(pairs):
        if start in seen:
            continue
        face, (u, v) = [], start
        while (u, v) not in seen:
            seen.add((u, v))
            face.append(u)
            nb = neighbours[v]
            w = nb[(position_in[v][u] - 1) % len(nb)]  # next clockwise from u: keeps the face on the left
            u, v = v, w
        xy = positions[face]
        area = 0.5 * np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1])
        if area > 1e-9:
            faces.append(face)
    if not faces:
        raise ValueError("the graph has no bounded faces")
    length = max(len(f) for f in faces)
    padded = np.array([f + [f[-1]] * (length - len(f)) for f in faces], dtype=np.int64)
    centres = np.array([positions[f].mean(axis=0) for f in faces])
    return padded, centres


def face_charges(theta: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Topological charge of each face: ``(1/2pi) sum wrap(theta_{k+1} - theta_k)`` around it.

    Args:
        theta: Phases [..., n].
        faces: [f, L] node indices, counter-clockwise (from :func:`square_plaquettes` or
            :func:`planar_faces`).

    Returns:
        Integer charges [..., f] (int8): +1 vortex, -1 antivortex, 0 none.
    """
    around = np.asarray(theta, dtype=np.float64)[..., faces]  # [..., f, L]
    steps = wrap(np.roll(around, -1, axis=-1) - around)
    return np.rint(steps.sum(axis=-1) / TWO_PI).astype(np.int8)


# ----------------------------------------------------------------------------- potential


def lyapunov_potential(theta: np.ndarray, senders: np.ndarray, receivers: np.ndarray,
                       coupling_weights: np.ndarray, harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Interaction potential ``V = -(1/2) sum_ij W_ij sum_m (h_m/m) cos(m (theta_j - theta_i))``.

    For symmetric ``W`` and no frustration, the coupling term is ``-dV/dtheta_i``, so for identical
    frequencies (in the co-rotating frame) and no noise V never increases along trajectories. The
    caller is responsible for refusing non-symmetric or frustrated systems (see
    :func:`lotsim.analysis.order.potential_reason`).

    Args:
        theta: Phases [..., n].
        senders, receivers: Directed edges [e] (j -> i); an undirected edge appears twice.
        coupling_weights: ``W_ij`` [e] or [..., e] INCLUDING the coupling K and the normalisation.
        harmonics: Amplitudes h_m.

    Returns:
        V [...].
    """
    theta = np.asarray(theta, dtype=np.float64)
    diff = theta[..., senders] - theta[..., receivers]
    total = np.zeros(diff.shape)
    for m, h in enumerate(harmonics, start=1):
        if h:
            total += (h / m) * np.cos(m * diff)
    return -0.5 * np.sum(np.asarray(coupling_weights) * total, axis=-1)


def lyapunov_potential_complete(theta: np.ndarray, coupling: np.ndarray | float,
                                harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """The potential on the complete graph with ``W_ij = K/N`` in O(n):
    ``V = -(K N / 2) sum_m (h_m/m) (r_m^2 - 1/N)`` (the i = j terms are excluded).

    Args:
        theta: Phases [..., n].
        coupling: K, broadcastable to [...].
        harmonics: Amplitudes h_m.

    Returns:
        V [...].
    """
    n = np.asarray(theta).shape[-1]
    total = 0.0
    for m, h in enumerate(harmonics, start=1):
        if h:
            total = total + (h / m) * (order_parameter(theta, m)[0] ** 2 - 1.0 / n)
    return -0.5 * np.asarray(coupling) * n * total
