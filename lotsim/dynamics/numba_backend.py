"""Fused CPU kernel backend (numba): the torch reference's integrators as one compiled call.

Same contract as :func:`lotsim.dynamics.core.kuramoto_integrator`: ``kuramoto_integrator(system,
method=, dt=, seed=)`` returns an ``(init_fn, step_fn)`` pair over :class:`OscillatorState` with
torch tensors in and out; :func:`supports` says which systems it runs (``backends.make_integrator``
picks it on ``auto``). The torch backend stays the test oracle: float64 results agree to ~1e-12.
This module is the driver: the kernels are in :mod:`lotsim.dynamics.numba_kernels`, the choice of
thread layout in :mod:`lotsim.dynamics.layout_tuner`, and the adaptive pairs in
:mod:`lotsim.dynamics.numba_adaptive`. The thread count follows ``numba.set_num_threads`` /
``NUMBA_NUM_THREADS``.

With noise, the increments come from exactly the torch backend's counter-based stream (a
``torch.Generator`` seeded with ``noise_seed(seed, step)`` per step), generated for a chunk of steps
and then integrated by the same kernel, so both backends give the same noisy trajectory up to
round-off.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from lotsim.dynamics.adaptive import DEFAULT_ATOL, DEFAULT_RTOL
from lotsim.dynamics.core import (
    FIXED_METHODS,
    Integrator,
    KuramotoSystem,
    MeanFieldOperator,
    Method,
    NeighbourOperator,
    OscillatorState,
    SparseOperator,
    noise_seed,
)
from lotsim.dynamics.core import kuramoto_integrator as _torch_integrator
from lotsim.dynamics.layout_tuner import LayoutTuner
from lotsim.dynamics.numba_kernels import (
    _BLOCK,
    _integrate,
    _integrate_serial,
    _tableau,
    operator_arrays,
    system_arrays,
)

__all__ = ["supports", "kuramoto_integrator"]

_NOISE_CHUNK_BYTES = 8 << 20  # noise increments generated ahead, per chunk of steps
_PARALLEL_MIN_NODES = 16384  # below this, one thread per call beats one barrier per stage (measured)
_CHUNK_MIN = 4  # blocks per parallel work item, at least


def _tensors(system: KuramotoSystem) -> list:
    op = system.operator
    if isinstance(op, NeighbourOperator):
        return [system.omega, system.coupling, op.index, op.weight]
    if isinstance(op, SparseOperator):
        return [system.omega, system.coupling, op.weight]
    return [system.omega, system.coupling]


def supports(system: KuramotoSystem) -> bool:
    """Whether this backend runs ``system``: CPU float32/float64 tensors without autograd, and a padded
    neighbour table, a CSR matrix or the mean field (dense ``W`` stays on torch)."""
    op = system.operator
    if not isinstance(op, (NeighbourOperator, SparseOperator, MeanFieldOperator)):
        return False
    if isinstance(op, SparseOperator) and op.weight.layout != torch.sparse_csr:
        return False
    if op.n >= 2**31 - 1:
        return False
    for t in _tensors(system):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.requires_grad:
            return False
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            return False
    return system.omega.ndim <= 2 and system.coupling.ndim <= 2


def work_dtype(system: KuramotoSystem, theta) -> torch.dtype:
    """The dtype a step computes in: the state's promoted with the system's parameters and weights."""
    dtype = torch.promote_types(theta.dtype, system.omega.dtype)
    dtype = torch.promote_types(dtype, system.coupling.dtype)
    op = system.operator
    weight = op.weight if isinstance(op, (NeighbourOperator, SparseOperator)) else None
    return dtype if weight is None else torch.promote_types(dtype, weight.dtype)


def numba_state(state: OscillatorState, n: int) -> bool:
    """Whether a kernel can take ``state``: CPU tensors without gradients, (b, n), float32 or float64."""
    theta = state.theta
    tensors = [theta] if state.velocity is None else [theta, state.velocity]
    if any(t.device.type != "cpu" or t.requires_grad for t in tensors):
        return False
    return theta.ndim == 2 and theta.shape[1] == n and theta.dtype in (torch.float32, torch.float64)


def kernel_step_fn(system: KuramotoSystem, reference: Integrator,
                   kernel_step: Callable[[OscillatorState, int, torch.dtype], OscillatorState],
                   accepts: Callable[[OscillatorState], bool] | None = None) -> Callable[..., OscillatorState]:
    """The ``step_fn(state, n_steps=1)`` of the numba integrators around their kernel call.

    ``n_steps <= 0`` returns the state; states the kernels cannot take go to the torch ``reference``:
    not (b, n) float32/float64 CPU tensors without gradients (:func:`numba_state`), parameters that
    do not broadcast to the state's shape, or ``accepts(state)`` false. The others run
    ``kernel_step(state, n_steps, dtype)`` with the dtype the step computes in (:func:`work_dtype`).
    """
    n = system.operator.n
    broadcasts: dict[tuple[int, ...], bool] = {}

    def _broadcasts(shape: torch.Size) -> bool:
        """Whether the parameters broadcast to ``shape`` without changing it (cached: torch's check costs
        ~10 us, as much as a step of a small lattice)."""
        key = tuple(shape)
        if key not in broadcasts:
            try:
                broadcasts[key] = torch.broadcast_shapes(shape, system.omega.shape, system.coupling.shape) == shape
            except RuntimeError:
                broadcasts[key] = False
        return broadcasts[key]

    def step_fn(state: OscillatorState, n_steps: int = 1) -> OscillatorState:
        n_steps = int(n_steps)
        if n_steps <= 0:
            return state
        if not (numba_state(state, n) and _broadcasts(state.theta.shape) and (accepts is None or accepts(state))):
            return reference.step_fn(state, n_steps)
        return kernel_step(state, n_steps, work_dtype(system, state.theta))

    return step_fn


def kuramoto_integrator(system: KuramotoSystem, *, method: Method = "rk4", dt: float = 0.01,
                        seed: int = 0, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> Integrator:
    """Integrator for ``system`` running in one compiled call per ``step_fn`` call.

    Same arguments, checks and results (to round-off) as the torch reference
    :func:`lotsim.dynamics.core.kuramoto_integrator`. States whose tensors need autograd, live on
    another device or do not match the system's shape or dtype are stepped by the torch reference.
    ``dopri5`` and ``dop853`` run in :mod:`lotsim.dynamics.numba_adaptive`.

    Args:
        system: the oscillator system (see :func:`supports`).
        method: euler | heun | rk4 (with noise: Euler-Maruyama or stochastic Heun) | dopri5 | dop853.
        dt: time step (time grid unit for the adaptive pairs), > 0.
        seed: noise stream seed.
        rtol, atol: tolerances of the adaptive pairs.
    """
    reference = _torch_integrator(system, method=method, dt=dt, seed=seed, rtol=rtol, atol=atol)  # validates
    if not supports(system):
        raise ValueError(f"the numba backend does not support this system ({type(system.operator).__name__}, "
                         "or tensors that need autograd / are not on the CPU); use the torch backend")
    if method not in FIXED_METHODS:
        from lotsim.dynamics.numba_adaptive import kuramoto_integrator as adaptive_integrator

        return adaptive_integrator(system, method=method, dt=dt, rtol=rtol, atol=atol)
    inertial = system.inertia > 0
    mu = float(system.inertia) if inertial else 1.0
    sigma = math.sqrt(2.0 * system.noise * dt) if system.noise > 0 else 0.0
    stage_c, stage_w, final = _tableau(method, dt)
    n = system.operator.n
    cache: dict = {}

    def _parameters(dtype: torch.dtype, shape: tuple[int, int]) -> dict:
        key = (dtype, shape)
        if key not in cache:
            np_dtype = np.dtype(str(dtype).removeprefix("torch."))
            if np_dtype not in cache:
                cache[np_dtype] = operator_arrays(system.operator, np_dtype)
            cache[key] = {
                "op": cache[np_dtype],
                "par": system_arrays(system, np_dtype, shape) + (
                    np.array(stage_c, np_dtype), np.array(stage_w, np_dtype), np.array([mu, final], np_dtype)),
            }
        return cache[key]

    def _accepts(state: OscillatorState) -> bool:
        theta = state.theta
        if inertial and (state.velocity is None or state.velocity.shape != theta.shape):
            return False
        return sigma == 0.0 or work_dtype(system, theta) == theta.dtype  # the noise is drawn in the state's dtype

    def _scratch(p: dict, b: int, np_dtype: np.dtype) -> tuple:
        """The kernel's scratch arrays, allocated once per state shape and calling thread (every call
        overwrites them before reading; allocating them cost ~10 us per call)."""
        key = ("scratch", threading.get_ident())
        if key not in p:
            n_harm = p["par"][2].shape[0]
            n_blocks = (n + _BLOCK - 1) // _BLOCK
            pool = numba.config.NUMBA_NUM_THREADS  # per-thread block scratch, indexed by numba.get_thread_id()
            p[key] = (
                np.empty((2, n_harm, b, n), np_dtype), np.empty((2, n_harm, b, n), np_dtype),  # S, C
                np.empty((pool, n_harm, _BLOCK), np_dtype), np.empty((pool, n_harm, _BLOCK), np_dtype),  # AS, AC
                np.empty((pool, _BLOCK), np_dtype), np.empty((pool, _BLOCK), np_dtype),  # D, Y
                np.empty((b, n) if inertial else (1, 1), np_dtype), np.empty((b, n), np_dtype),  # V, AT
                np.empty((b, n) if inertial else (1, 1), np_dtype),  # AV
                np.empty((2, n_harm, b, n_blocks), np_dtype), np.empty((2, n_harm, b), np_dtype))  # psum, sums
        return p[key]

    def init_fn(theta: torch.Tensor, velocity: torch.Tensor | None = None, step: int = 0) -> OscillatorState:
        return reference.init_fn(theta, velocity, step)

    def _kernel_step(state: OscillatorState, n_steps: int, dtype: torch.dtype) -> OscillatorState:
        b = state.theta.shape[0]
        p = _parameters(dtype, (b, n))
        np_dtype = p["par"][0].dtype
        theta = state.theta.detach().numpy().astype(np_dtype, copy=True)  # the state stays immutable
        vel = (state.velocity.detach().numpy().astype(np_dtype, copy=True) if inertial
               else np.zeros((1, 1), np_dtype))
        n_blocks = (n + _BLOCK - 1) // _BLOCK
        buf = _scratch(p, b, np_dtype)
        threads = numba.get_num_threads()
        # node-parallel work items: a few per thread and replica, each at least _CHUNK_MIN blocks
        chunk_blocks = max(_CHUNK_MIN, -(-n_blocks // (4 * threads)))
        layouts = (("replicas",) if threads == 1 or b * n < _PARALLEL_MIN_NODES or b % threads == 0
                   else ("replicas", "nodes"))
        tuner = p.setdefault(("tuner", threads), LayoutTuner())

        def run(steps: int, dw: np.ndarray | None) -> None:
            done = 0
            while done < steps:
                layout, todo = tuner.plan(layouts, steps - done)
                noise = _NO_NOISE[np_dtype] if dw is None else dw[done:done + todo]
                start = time.perf_counter()
                if layout == "replicas" and min(threads, b) == 1:
                    _integrate_serial(todo, theta, vel, p["par"], p["op"], inertial, dw is not None, noise, buf)
                else:
                    _integrate(layout == "replicas", chunk_blocks, todo, theta, vel, p["par"], p["op"], inertial,
                               dw is not None, noise, buf)
                tuner.record(layouts, layout, todo, time.perf_counter() - start)
                done += todo

        if sigma == 0.0:
            run(n_steps, None)
        else:
            chunk = max(1, min(n_steps, _NOISE_CHUNK_BYTES // max(1, b * n * np_dtype.itemsize)))
            dw = torch.empty((chunk, b, n), dtype=dtype)
            done = 0
            while done < n_steps:
                steps = min(chunk, n_steps - done)
                for j in range(steps):  # the torch backend's stream: one generator per step
                    gen = torch.Generator().manual_seed(noise_seed(seed, state.step + done + j))
                    torch.randn((b, n), generator=gen, dtype=dtype, out=dw[j])
                dw[:steps].mul_(sigma)
                run(steps, dw.numpy())
                done += steps
        return OscillatorState(theta=torch.from_numpy(theta), velocity=torch.from_numpy(vel) if inertial else None,
                               step=state.step + n_steps)

    return Integrator(init_fn, kernel_step_fn(system, reference, _kernel_step, _accepts), "numba")


_NO_NOISE = {np.dtype(np.float32): np.zeros((1, 1, 1), np.float32),
             np.dtype(np.float64): np.zeros((1, 1, 1), np.float64)}
