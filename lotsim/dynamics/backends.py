"""Backend dispatch: every backend builds the same ``(init_fn, step_fn)`` integrator.

``torch`` is the reference (CPU and CUDA). ``numba`` is the fused CPU kernel (module
``lotsim.dynamics.numba_backend``) and ``cupy`` the raw CUDA kernels from ``cuda/`` (module
``lotsim.dynamics.cupy_backend``); both are imported only when selected, so CPU paths never import
CuPy. ``auto`` picks, for CPU tensors, numba when it is installed, supports the system and the run is
not tiny (see :func:`numba_pays`); for CUDA tensors, cupy when it supports the system and method;
torch otherwise.
"""

from __future__ import annotations

import importlib
from typing import Literal

from lotsim.dynamics.adaptive import DEFAULT_ATOL, DEFAULT_RTOL
from lotsim.dynamics.core import FIXED_METHODS, Integrator, KuramotoSystem, Method, kuramoto_integrator

Backend = Literal["auto", "torch", "numba", "cupy"]
BACKENDS = ("auto", "torch", "numba", "cupy")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package or device); the message says why."""


def _load(name: str):
    try:
        return importlib.import_module(f"lotsim.dynamics.{name}_backend")
    except ModuleNotFoundError as err:  # the backend module or its package is missing
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from None


# Cost model of ``auto`` on CPU (measured on 2 shared cores, one thread, periodic square lattices,
# RK4 float64; docs/performance.md): torch integrates about 7e6 oscillator-steps/s, numba about 5e7;
# numba's first compile of a kernel takes about 15 s (cached on disk afterwards), loading it from the
# cache about 0.5 s.
TORCH_RATE = 7e6
NUMBA_RATE = 5e7
NUMBA_COMPILE_S = 15.0
NUMBA_LOAD_S = 0.5


def numba_cached(method: Method, replicas: int = 1) -> bool:
    """Whether numba's on-disk cache holds the kernel a run of ``method`` with ``replicas`` replicas
    calls first (for the current source; numba's own index, which is empty when stale or absent)."""
    try:
        import numba

        if method not in FIXED_METHODS:
            from lotsim.dynamics.numba_adaptive import _integrate as kernel
        elif replicas == 1 or numba.get_num_threads() == 1:
            from lotsim.dynamics.numba_kernels import _integrate_serial as kernel
        else:
            from lotsim.dynamics.numba_kernels import _integrate as kernel
        return bool(kernel._cache._cache_file._load_index())
    except Exception:  # numba missing, caching disabled or its internals changed: assume a compile
        return False


def numba_pays(work: float, method: Method, replicas: int = 1) -> bool:
    """Whether numba finishes ``work`` oscillator-steps sooner than torch, its compile counted when it
    is not cached (see the cost model above)."""
    startup = NUMBA_LOAD_S if numba_cached(method, replicas) else NUMBA_COMPILE_S
    return work / NUMBA_RATE + startup < work / TORCH_RATE


def make_integrator(system: KuramotoSystem, *, backend: Backend = "auto", method: Method = "rk4",
                    dt: float = 0.01, seed: int = 0, rtol: float | None = None, atol: float | None = None,
                    work_hint: float | None = None) -> Integrator:
    """Build an integrator for ``system`` on ``backend`` (see module docstring).

    ``work_hint``: the oscillator-steps of the whole job this integrator belongs to (all replicas of
    a run, or of every shard of a sweep), so ``auto`` keeps tiny CPU runs on torch, where numba's
    one-off compile would dominate; None counts as a large run.
    ``rtol``/``atol`` are the tolerances of the adaptive methods (``dopri5``, ``dop853``; None: the defaults
    ``DEFAULT_RTOL``/``DEFAULT_ATOL`` of :mod:`lotsim.dynamics.adaptive`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    kwargs = dict(method=method, dt=dt, seed=seed)
    if method not in FIXED_METHODS:
        kwargs.update(rtol=DEFAULT_RTOL if rtol is None else rtol, atol=DEFAULT_ATOL if atol is None else atol)
    if backend == "torch":
        return kuramoto_integrator(system, **kwargs)
    if backend == "auto":
        cpu = not system.omega.is_cuda
        if not cpu and method not in FIXED_METHODS:
            return kuramoto_integrator(system, **kwargs)
        try:
            module = _load("numba" if cpu else "cupy")
            replicas = system.coupling.shape[0] if system.coupling.dim() == 2 else 1
            if module.supports(system) and (not cpu or work_hint is None
                                            or numba_pays(work_hint, method, replicas)):
                return module.kuramoto_integrator(system, **kwargs)
        except BackendUnavailable:
            pass
        return kuramoto_integrator(system, **kwargs)
    module = _load(backend)
    if hasattr(module, "supports") and not module.supports(system):
        raise BackendUnavailable(f"backend {backend!r} does not support this system "
                                 f"({type(system.operator).__name__}); use --backend torch")
    if backend == "cupy" and method not in FIXED_METHODS:
        raise ValueError(f"backend 'cupy' has fixed-step integrators only ({', '.join(FIXED_METHODS)}); "
                         f"run {method} with --backend torch or numba")
    return module.kuramoto_integrator(system, **kwargs)
