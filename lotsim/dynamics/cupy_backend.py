"""CuPy backend: the fused CUDA kernels of ``cuda/kuramoto.cu`` behind the torch integrator interface.

``make_integrator(system, backend="cupy")`` imports this module, which imports CuPy. States hold torch
CUDA tensors; every launch runs on torch's current stream (``cupy.cuda.ExternalStream``) on zero-copy
DLPack views (``cupy.from_dlpack``), so torch and the kernels need no synchronisation, and
``step_fn(state, n_steps)`` queues all its launches without a host sync. The kernel source ships
inside the package (``lotsim/cuda/kuramoto.cu``) and is compiled once per device by NVRTC
(``cupy.RawModule(code=..., name_expressions=...)``, cached on disk by CuPy).

Same contract as :func:`lotsim.dynamics.core.kuramoto_integrator`, with two differences: noise comes
from a counter-based Philox stream (statistically equivalent to the torch backend's, not the same
numbers), and there is no autograd through the kernels.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from lotsim.dynamics import cuda_kernels
from lotsim.dynamics.backends import BackendUnavailable
from lotsim.dynamics.core import Integrator, KuramotoSystem, Method

try:
    import cupy
except ImportError:  # make_integrator shows this message as is
    raise BackendUnavailable("backend 'cupy' needs CuPy: pip install 'lotsim[gpu12]' (CUDA 12) or "
                             "'lotsim[gpu13]' (CUDA 13)") from None


def supports(system: KuramotoSystem) -> bool:
    """Neighbour-table, CSR and mean-field systems with at most 8 nonzero harmonics."""
    return cuda_kernels.supports(system)


def _require_gpu() -> None:
    if not cupy.is_available():
        raise BackendUnavailable("backend 'cupy' needs a CUDA GPU; none is available")
    if not torch.cuda.is_available():
        raise BackendUnavailable("backend 'cupy' needs a CUDA build of torch (states are torch CUDA "
                                 "tensors); this torch has no CUDA")


def _check_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
        where = tensor.device if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise BackendUnavailable(f"backend 'cupy' runs on CUDA tensors, but {name} is on {where}; "
                                 "pass --device cuda (or build the system and state on a CUDA device)")


@functools.cache
def _module() -> cupy.RawModule:
    return cupy.RawModule(code=cuda_kernels.read_source(), options=cuda_kernels.COMPILE_OPTIONS,
                          name_expressions=cuda_kernels.NAME_EXPRESSIONS)


@functools.cache
def _function(device_index: int, name: str):
    """The compiled kernel ``name`` on a device (NVRTC runs once per device, then CuPy's disk cache)."""
    with cupy.cuda.Device(device_index):
        try:
            return _module().get_function(name)
        except cupy.cuda.compiler.CompileException:
            raise
        except Exception as err:  # e.g. no NVRTC library next to a CuPy without the [ctk] extra
            if "nvrtc" in str(err).lower():
                raise BackendUnavailable(f"backend 'cupy' cannot compile its kernels ({err}); install "
                                         "'lotsim[gpu12]' / 'lotsim[gpu13]', which bring NVRTC") from err
            raise


class CupyLauncher:
    """Runs launch plans on one CUDA device, on torch's current stream."""

    def __init__(self, device: torch.device):
        self.device_index = device.index if device.index is not None else torch.cuda.current_device()

    def scope(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(cupy.cuda.Device(self.device_index))
        stream = torch.cuda.current_stream(self.device_index).cuda_stream
        stack.enter_context(cupy.cuda.ExternalStream(stream, self.device_index))
        return stack

    def arg(self, tensor: torch.Tensor) -> Any:
        return cupy.from_dlpack(tensor)

    def launch(self, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        _function(self.device_index, name)(grid, (block,), args)


@functools.cache
def _launcher(device_index: int) -> CupyLauncher:
    return CupyLauncher(torch.device("cuda", device_index))


def _launcher_for(device: torch.device) -> CupyLauncher:
    return _launcher(device.index if device.index is not None else torch.cuda.current_device())


def kuramoto_integrator(system: KuramotoSystem, *, method: Method = "rk4", dt: float = 0.01,
                        seed: int = 0) -> Integrator:
    """Fixed-step integrator on the CUDA kernels; drop-in for ``core.kuramoto_integrator``.

    Args:
        system: a system with a neighbour-table, CSR or mean-field operator, on a CUDA device.
        method: euler | heun | rk4; with noise, euler is Euler-Maruyama and heun stochastic Heun.
        dt: time step, > 0.
        seed: noise seed (Philox key); step s of a run uses counter s, so resumed runs are bit-identical.

    Raises:
        BackendUnavailable: no GPU, a torch without CUDA, or CPU tensors (pass --device cuda).
        ValueError: bad method/dt, rk4 with noise, or an unsupported operator.
    """
    _require_gpu()
    if isinstance(system.omega, torch.Tensor):
        _check_tensor(system.omega, "the system (omega)")
    kernels = cuda_kernels.build_integrator(system, _launcher_for, method=method, dt=dt, seed=seed,
                                            check_tensor=_check_tensor)
    return Integrator(kernels.init_fn, kernels.step_fn, "cupy")

