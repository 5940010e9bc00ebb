"""Backend dispatch: every backend builds the same ``(init_fn, step_fn)`` integrator.

``torch`` is the reference (CPU and CUDA). ``numba`` is the fused CPU kernel (module
``lotsim.dynamics.numba_backend``) and ``cupy`` the raw CUDA kernels from ``cuda/`` (module
``lotsim.dynamics.cupy_backend``); both are imported only when selected, so CPU paths never import
CuPy. ``auto`` picks numba for CPU tensors and cupy for CUDA tensors when they support the system
(and are installed), torch otherwise.
"""

from __future__ import annotations

import importlib
from typing import Literal

from lotsim.dynamics.core import Integrator, KuramotoSystem, Method, kuramoto_integrator

Backend = Literal["auto", "torch", "numba", "cupy"]
BACKENDS = ("auto", "torch", "numba", "cupy")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package or device); the message says why."""


def _load(name: str):
    try:
        return importlib.import_module(f"lotsim.dynamics.{name}_backend")
    except ModuleNotFoundError as err:  # the backend module or its package is missing
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from None


# oscillator-steps below which ``auto`` keeps torch on CPU: numba's first compile (~10-20 s per dtype,
# cached on disk afterwards) would cost more than it saves on a small run
AUTO_NUMBA_MIN_WORK = 2e8


def make_integrator(system: KuramotoSystem, *, backend: Backend = "auto", method: Method = "rk4",
                    dt: float = 0.01, seed: int = 0, steps_hint: int | None = None) -> Integrator:
    """Build an integrator for ``system`` on ``backend`` (see module docstring).

    ``steps_hint`` (the number of steps the caller will take) lets ``auto`` keep small CPU runs on
    torch, where numba's one-off compile would dominate.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "torch":
        return kuramoto_integrator(system, method=method, dt=dt, seed=seed)
    if backend == "auto":
        cpu = not system.omega.is_cuda
        if cpu and steps_hint is not None:
            replicas = system.coupling.shape[0] if system.coupling.dim() == 2 else 1
            if replicas * system.operator.n * steps_hint < AUTO_NUMBA_MIN_WORK:
                return kuramoto_integrator(system, method=method, dt=dt, seed=seed)
        try:
            module = _load("numba" if cpu else "cupy")
            if module.supports(system):
                return module.kuramoto_integrator(system, method=method, dt=dt, seed=seed)
        except BackendUnavailable:
            pass
        return kuramoto_integrator(system, method=method, dt=dt, seed=seed)
    module = _load(backend)
    if hasattr(module, "supports") and not module.supports(system):
        raise BackendUnavailable(f"backend {backend!r} does not support this system "
                                 f"({type(system.operator).__name__}); use --backend torch")
    return module.kuramoto_integrator(system, method=method, dt=dt, seed=seed)
