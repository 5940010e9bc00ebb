"""The one Kuramoto core of lotsim (torch reference backend), shared by the simulator and the model.

Model (docs/physics.md), first order and with inertia mu > 0::

    dtheta_i/dt = omega_i + K_i sum_j W_ij sum_m h_m sin(m (theta_j - theta_i) - alpha_m) + sqrt(2D) xi_i
    mu d2theta_i/dt2 + dtheta_i/dt = (same right-hand side)

``W`` is a :class:`CouplingOperator` (dense, CSR, padded neighbour table or mean field) that already
carries the normalisation; ``K`` is the coupling strength, one value per replica and/or per node.
The coupling sum uses ``sin(m th_j - m th_i - a) = s_j cos(m th_i + a) - c_j sin(m th_i + a)`` with
``s = sin(m th), c = cos(m th)``: 2N transcendentals per harmonic instead of one per edge, and one
sparse product of W with the stacked (s, c) features.

Integrators are ``(init_fn, step_fn)`` pairs over an immutable :class:`OscillatorState`; phases are
kept unwrapped so effective frequencies are exact. Noise uses a counter-based stream: the noise of
step ``s`` depends only on ``(seed, s)``, so a resumed run is bit-identical to an uninterrupted one.

Legend: ``b`` replicas (batch), ``n`` nodes, ``c`` feature channels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lotsim.dynamics.adaptive import DEFAULT_ATOL, DEFAULT_RTOL, adaptive_integrator, check_tolerances
from lotsim.lattice import Lattice, Normalization, row_scale

Method = Literal["euler", "heun", "rk4", "dopri5", "dop853"]
METHODS = ("euler", "heun", "rk4", "dopri5", "dop853")
FIXED_METHODS = ("euler", "heun", "rk4")


# --------------------------------------------------------------------------------------------------
# Coupling operators: aggregate(x)[c, r, i] = sum_j W_ij x[c, r, j]


class CouplingOperator:
    """Linear map ``x -> W x`` over the node axis (the last), for every feature plane and replica.

    The state is (c, b, n): c feature planes (the coupling term stacks sin and cos), b replicas, n
    nodes. Features come first so that stacking the planes and taking them apart again are
    contiguous block copies and views (a trailing feature axis of size 2 costs strided passes)."""

    n: int

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(c, b, n) -> (c, b, n)."""
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> CouplingOperator:
        raise NotImplementedError


@dataclass(frozen=True)
class DenseOperator(CouplingOperator):
    """Dense ``W`` (n, n), or (b, n, n) per replica; differentiable (the model learns it)."""

    weight: torch.Tensor

    @property
    def n(self) -> int:
        return self.weight.shape[-1]

    def aggregate(self, x):
        if self.weight.dim() == 2:
            return x @ self.weight.mT  # one product for every plane and replica
        return torch.matmul(self.weight, x.unsqueeze(-1)).squeeze(-1)  # per-replica W

    def to(self, device=None, dtype=None):
        return DenseOperator(self.weight.to(device=device, dtype=dtype))


@dataclass(frozen=True)
class SparseOperator(CouplingOperator):
    """CSR ``W`` (n, n): O(E) per product, for arbitrary sparse graphs."""

    weight: torch.Tensor  # sparse CSR

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    def aggregate(self, x):
        flat = x.reshape(-1, x.shape[-1]).T  # (n, c*b): one sparse mat-mat for all planes and replicas
        return (self.weight @ flat).T.reshape(x.shape)

    def to(self, device=None, dtype=None):
        return SparseOperator(self.weight.to(device=device, dtype=dtype))


@dataclass(frozen=True)
class NeighbourOperator(CouplingOperator):
    """Padded in-neighbour table: ``index`` (n, k) int64, ``weight`` (n, k); padding has weight 0."""

    index: torch.Tensor
    weight: torch.Tensor

    @property
    def n(self) -> int:
        return self.index.shape[0]

    def aggregate(self, x):
        gathered = x[..., self.index]  # (c, b, n, k)
        return torch.einsum("...nk,nk->...n", gathered, self.weight)

    def to(self, device=None, dtype=None):
        return NeighbourOperator(self.index.to(device=device), self.weight.to(device=device, dtype=dtype))


@dataclass(frozen=True)
class MeanFieldOperator(CouplingOperator):
    """Complete graph with uniform weight ``scale``: ``W x = scale (sum_j x_j - x_i)`` in O(n)."""

    size: int
    scale: float

    @property
    def n(self) -> int:
        return self.size

    def aggregate(self, x):
        return self.scale * (x.sum(dim=-1, keepdim=True) - x)

    def to(self, device=None, dtype=None):
        return self


def normalized_adjacency(lattice: Lattice, normalization: Normalization) -> Lattice:
    """The lattice with edge weights ``W_ij = A_ij * row_scale[i]``."""
    scale = row_scale(normalization, lattice.in_degree())
    return lattice.with_edge_weights(lattice.weights * scale[lattice.receivers])


def build_operator(
    lattice: Lattice,
    normalization: Normalization = "mean-field",
    layout: Literal["auto", "dense", "sparse", "neighbours", "mean-field"] = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> CouplingOperator:
    """Pick the cheapest exact layout for ``W`` on a lattice.

    ``auto``: mean field for the complete graph (O(n), its edges are never built), a padded
    neighbour table when the in-degree is nearly uniform (lattices), CSR otherwise.
    """
    if layout in ("auto", "mean-field") and lattice.complete and lattice.edges is None:
        scale = row_scale(normalization, lattice.in_degree())[0]
        return MeanFieldOperator(lattice.n, float(lattice.complete_weight * scale))
    if layout == "mean-field":
        raise ValueError("the mean-field layout needs the complete graph (topology 'complete')")
    weighted = normalized_adjacency(lattice, normalization)
    if layout == "auto":
        counts = np.bincount(weighted.receivers, minlength=lattice.n)
        max_k = counts.max() if counts.size else 0
        layout = "neighbours" if max_k <= 32 and counts.mean() >= 0.75 * max_k else "sparse"
    if layout == "neighbours":
        index, table = weighted.neighbour_table()
        return NeighbourOperator(torch.as_tensor(index, device=device),
                                 torch.as_tensor(table, device=device, dtype=dtype))
    matrix = weighted.adjacency()
    if layout == "dense":
        return DenseOperator(torch.as_tensor(matrix.toarray(), device=device, dtype=dtype))
    if layout == "sparse":
        with warnings.catch_warnings():  # torch flags CSR as beta; the product we use is stable
            warnings.simplefilter("ignore", UserWarning)
            csr = torch.sparse_csr_tensor(
                torch.as_tensor(matrix.indptr, dtype=torch.int64),
                torch.as_tensor(matrix.indices, dtype=torch.int64),
                torch.as_tensor(matrix.data, dtype=dtype), size=matrix.shape, check_invariants=True,
            )
        return SparseOperator(csr.to(device))
    raise ValueError(f"unknown layout {layout!r}; allowed: auto, dense, sparse, neighbours, mean-field")


# --------------------------------------------------------------------------------------------------
# The system and its right-hand side


@dataclass(frozen=True)
class KuramotoSystem:
    """Parameters of the oscillator ODE/SDE; tensors broadcast against the state (b, n).

    Attributes:
        omega: natural frequencies, (n,) or (b, n).
        coupling: coupling strength K, scalar, (b, 1) per replica, (n,) per node or (b, n).
        operator: the normalised coupling matrix W.
        harmonics: amplitudes h_m of harmonics m = 1, 2, ... (Daido); (1.0,) is plain Kuramoto.
        frustration: phase lags alpha_m (Sakaguchi), one per harmonic.
        noise: D, the noise intensity (a free phase diffuses with variance 2 D t).
        inertia: mu >= 0; mu > 0 gives the second-order model with a velocity state.
    """

    omega: torch.Tensor
    coupling: torch.Tensor
    operator: CouplingOperator
    harmonics: tuple[float, ...] = (1.0,)
    frustration: tuple[float, ...] = (0.0,)
    noise: float = 0.0
    inertia: float = 0.0

    def __post_init__(self):
        for name in ("omega", "coupling"):  # numpy arrays and numbers become tensors (same dtype) here
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                if not isinstance(value, np.ndarray | float | int | list | tuple) or isinstance(value, bool):
                    raise TypeError(f"KuramotoSystem {name} must be a torch tensor, a numpy array or a number, "
                                    f"got {type(value).__name__}")
                array = np.asarray(value)
                object.__setattr__(self, name, torch.as_tensor(array if array.dtype.kind == "f" else
                                                               array.astype(np.float64)))
        if len(self.frustration) == 1 and len(self.harmonics) > 1:
            object.__setattr__(self, "frustration", self.frustration * len(self.harmonics))
        if len(self.frustration) != len(self.harmonics):
            raise ValueError(f"frustration has {len(self.frustration)} entries but there are "
                             f"{len(self.harmonics)} harmonics; give one angle or one per harmonic")
        if self.noise < 0 or self.inertia < 0:
            raise ValueError("noise and inertia must be >= 0")


def coupling_term(system: KuramotoSystem, theta: torch.Tensor) -> torch.Tensor:
    """``sum_j W_ij sum_m h_m sin(m (theta_j - theta_i) - alpha_m)`` for theta (b, n) -> (b, n)."""
    total = None
    for m, (h, alpha) in enumerate(zip(system.harmonics, system.frustration), start=1):
        if h == 0:
            continue
        mt = theta if m == 1 else m * theta
        s, c = torch.sin(mt), torch.cos(mt)
        agg_s, agg_c = system.operator.aggregate(torch.stack((s, c))).unbind(0)  # (b, n) each
        if alpha == 0:
            term = agg_s * c - agg_c * s
        else:
            shifted = mt + alpha
            term = agg_s * torch.cos(shifted) - agg_c * torch.sin(shifted)
        term = term if h == 1 else h * term
        total = term if total is None else total + term
    return torch.zeros_like(theta) if total is None else total


def drift(system: KuramotoSystem, theta: torch.Tensor) -> torch.Tensor:
    """Deterministic right-hand side ``omega + K * coupling_term`` (b, n)."""
    return system.omega + system.coupling * coupling_term(system, theta)


# --------------------------------------------------------------------------------------------------
# State and integrators


@dataclass(frozen=True)
class OscillatorState:
    """Immutable integrator state.

    Attributes:
        theta: (b, n) unwrapped phases.
        velocity: (b, n) dtheta/dt for the inertial model, else None.
        step: number of steps taken since t = 0; time is ``step * dt``.
        control: the step-size controller's state of an adaptive method
            (:class:`lotsim.dynamics.adaptive.AdaptiveControl`), else None.
    """

    theta: torch.Tensor
    velocity: torch.Tensor | None = None
    step: int = 0
    control: object | None = None


@dataclass(frozen=True)
class Integrator:
    """``init_fn(theta, velocity=None, step=0) -> state``, ``step_fn(state, n_steps=1) -> state`` and
    the name of the backend that runs them (``torch``, ``numba``, ``cupy``). Unpacks as the pair
    ``init_fn, step_fn = integrator``."""

    init_fn: Callable[..., OscillatorState]
    step_fn: Callable[..., OscillatorState]
    backend: str = "torch"

    def __iter__(self):
        return iter((self.init_fn, self.step_fn))


def noise_seed(seed: int, step: int) -> int:
    """Counter-based seed of the noise increment of ``step`` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def _rk_combine(method: Method, f: Callable, y: tuple, dt: float) -> tuple:
    """One explicit Runge-Kutta step of the autonomous system y' = f(y) over tuples of tensors."""

    def axpy(a, xs, ys):
        return tuple(x + a * yy for x, yy in zip(xs, ys))

    k1 = f(y)
    if method == "euler":
        return axpy(dt, y, k1)
    if method == "heun":
        # a real Heun: the corrector evaluates the slope at the predicted state of ALL nodes
        k2 = f(axpy(dt, y, k1))
        return tuple(yy + 0.5 * dt * (a + b) for yy, a, b in zip(y, k1, k2))
    k2 = f(axpy(0.5 * dt, y, k1))
    k3 = f(axpy(0.5 * dt, y, k2))
    k4 = f(axpy(dt, y, k3))
    return tuple(yy + (dt / 6.0) * (a + 2 * b + 2 * c + d) for yy, a, b, c, d in zip(y, k1, k2, k3, k4))


def check_method(system: KuramotoSystem, method: str, dt: float, rtol: float = DEFAULT_RTOL,
                 atol: float = DEFAULT_ATOL) -> None:
    """Argument checks shared by every backend, so they all refuse the same things the same way."""
    if method not in METHODS:
        raise ValueError(f"unknown integrator {method!r}; allowed: {', '.join(METHODS)}")
    if not dt > 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive number, got {dt}")
    if system.noise > 0 and method not in ("euler", "heun"):
        raise ValueError(f"{method} has no consistent form with noise; use integrator 'heun' (stochastic Heun) "
                         "or 'euler' (Euler-Maruyama)")
    if method not in FIXED_METHODS:
        check_tolerances(rtol, atol)


def kuramoto_integrator(system: KuramotoSystem, *, method: Method = "rk4", dt: float = 0.01,
                        seed: int = 0, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> Integrator:
    """Integrator for a :class:`KuramotoSystem` (torch reference backend).

    Deterministic systems use Euler, Heun or RK4 (global orders 1, 2, 4), or the error-controlled
    Dormand-Prince pairs ``dopri5`` (order 5) and ``dop853`` (order 8) with tolerances
    ``rtol``/``atol``; ``dt`` is then only the unit of the time grid, see
    :mod:`lotsim.dynamics.adaptive`. With noise, ``euler`` is Euler-Maruyama and ``heun`` the
    stochastic Heun scheme (additive noise: both strong order 1 in the noise, Heun order 2 in the
    drift); ``rk4`` and the adaptive pairs are refused because they have no consistent SDE form.

    Args:
        system: the oscillator system.
        method: euler | heun | rk4 | dopri5 | dop853.
        dt: time step (fixed-step methods) or time grid unit (adaptive pairs), > 0.
        seed: noise stream seed.
        rtol, atol: relative and absolute tolerance of the adaptive pairs.
    """
    check_method(system, method, dt, rtol, atol)
    if method not in FIXED_METHODS:
        return adaptive_integrator(system, method=method, dt=dt, rtol=rtol, atol=atol)
    inertial = system.inertia > 0
    mu = system.inertia
    sigma = math.sqrt(2.0 * system.noise * dt) if system.noise > 0 else 0.0

    if inertial:
        def f(y):
            theta, velocity = y
            return velocity, (drift(system, theta) - velocity) / mu
    else:
        def f(y):
            return (drift(system, y[0]),)

    def init_fn(theta: torch.Tensor, velocity: torch.Tensor | None = None, step: int = 0) -> OscillatorState:
        if inertial and velocity is None:
            velocity = torch.zeros_like(theta)
        return OscillatorState(theta=theta, velocity=velocity if inertial else None, step=int(step))

    def _increment(like: torch.Tensor, step: int) -> torch.Tensor:
        gen = torch.Generator(device=like.device).manual_seed(noise_seed(seed, step))
        return sigma * torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)

    def one_step(state: OscillatorState) -> OscillatorState:
        y = (state.theta, state.velocity) if inertial else (state.theta,)
        if sigma == 0.0:
            y = _rk_combine(method, f, y, dt)
        else:
            dw = _increment(state.theta, state.step)
            # additive noise enters the equation of the highest derivative
            kick = (torch.zeros_like(dw), dw / mu) if inertial else (dw,)
            k1 = f(y)
            pred = tuple(a + dt * b + c for a, b, c in zip(y, k1, kick))
            if method == "euler":
                y = pred
            else:
                k2 = f(pred)
                y = tuple(a + 0.5 * dt * (b + c) + d for a, b, c, d in zip(y, k1, k2, kick))
        return OscillatorState(theta=y[0], velocity=y[1] if inertial else None, step=state.step + 1)

    def step_fn(state: OscillatorState, n_steps: int = 1) -> OscillatorState:
        for _ in range(n_steps):
            state = one_step(state)
        return state

    return Integrator(init_fn, step_fn, "torch")


def order_parameter(theta: torch.Tensor, harmonic: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Kuramoto order parameter ``r e^{i psi} = mean_j exp(i m theta_j)`` over the last axis.

    Written with cos/sin means (no complex tensors) so it exports to ONNX.

    Returns:
        (r, psi) with the node axis reduced.
    """
    mt = theta if harmonic == 1 else harmonic * theta
    x, y = torch.cos(mt).mean(dim=-1), torch.sin(mt).mean(dim=-1)
    return torch.sqrt(x * x + y * y), torch.atan2(y, x)

