"""Host side of the CUDA kernels in ``cuda/kuramoto.cu``, without CuPy.

This module knows the kernel names, reads the ``.cu`` source that ships with the package, and turns a
:class:`~lotsim.dynamics.core.KuramotoSystem` into kernel launches: it allocates the scratch buffers,
lays out the operator (transposed int32 neighbour table, int32 CSR, or the mean-field scale), and
drives the fused Runge-Kutta stages. It talks to the device only through a :class:`KernelLauncher`, so
the same launch plan runs on a GPU through CuPy (``lotsim.dynamics.cupy_backend``) and, in the tests,
on the CPU through a host emulation of the very same kernel bodies (``cuda/host_emulation.cpp``).
Importing it never imports CuPy.

Kernel arguments follow CuPy's rules (it checks no types): arrays for pointers, ``np.int32`` for
``int``, ``np.int64`` for ``long long``, ``np.uint64`` for ``unsigned long long``, ``np.float32`` or
``np.float64`` for ``T``. The host emulation checks every launch against the compiled signatures.

Legend: ``b`` replicas (batch), ``n`` nodes, ``m`` harmonics with nonzero amplitude, ``k`` table width.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import numpy as np
import torch

from lotsim.dynamics.core import (
    FIXED_METHODS,
    Integrator,
    KuramotoSystem,
    MeanFieldOperator,
    Method,
    NeighbourOperator,
    OscillatorState,
    SparseOperator,
    check_method,
)

SOURCE_FILE = "kuramoto.cu"
# Every kernel template the backend launches; each is instantiated for float and double. The nvcc
# compile test checks that the PTX has an .entry for each, the emulation test that the host build does.
KERNELS = (
    "kuramoto_sincos",
    "kuramoto_reduce",
    "kuramoto_stage_neighbour",
    "kuramoto_stage_csr",
    "kuramoto_stage_meanfield",
)
REAL_TYPES = {torch.float32: "float", torch.float64: "double"}
NAME_EXPRESSIONS = tuple(f"{kernel}<{real}>" for kernel in KERNELS for real in REAL_TYPES.values())
COMPILE_OPTIONS = ("-std=c++17",)
MAX_HARMONICS = 8  # LOTSIM_MAX_HARMONICS in kuramoto.cu
BLOCK = 256  # threads per block for every launch (a multiple of 32)
MAX_REPLICAS = 65535  # gridDim.y
_UINT64 = (1 << 64) - 1


def kernel_name(kernel: str, dtype: torch.dtype) -> str:
    """The NVRTC name expression of ``kernel`` for a real dtype, e.g. ``kuramoto_reduce<double>``."""
    return f"{kernel}<{REAL_TYPES[dtype]}>"


def read_source() -> str:
    """The CUDA source ``kuramoto.cu`` as shipped in the package (``lotsim/cuda``)."""
    return resources.files("lotsim").joinpath("cuda", SOURCE_FILE).read_text(encoding="utf-8")


class KernelLauncher(Protocol):
    """How launch plans reach a device: views of torch tensors, and kernel launches."""

    def scope(self) -> contextlib.AbstractContextManager:
        """Context (device, stream) inside which :meth:`arg` and :meth:`launch` are called."""

    def arg(self, tensor: torch.Tensor) -> Any:
        """A zero-copy kernel argument for a contiguous tensor."""

    def launch(self, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        """Launch kernel ``name`` (a name expression) asynchronously, in order with earlier launches."""


# --------------------------------------------------------------------------------------------------
# What the kernels support


def _harmonic_rows(system: KuramotoSystem) -> list[tuple[float, float, float, float]]:
    """Rows (m, h_m, cos alpha_m, sin alpha_m) of the harmonics with h_m != 0."""
    return [(float(m), float(h), math.cos(a), math.sin(a))
            for m, (h, a) in enumerate(zip(system.harmonics, system.frustration), start=1) if h != 0]


def supports(system: KuramotoSystem) -> bool:
    """Whether the kernels can integrate ``system``.

    Neighbour tables, CSR matrices and the mean field, at most :data:`MAX_HARMONICS` nonzero
    harmonics. Dense (learned, per-replica) operators stay on the torch backend.
    """
    op = system.operator
    if isinstance(op, SparseOperator):
        ok = op.weight.layout == torch.sparse_csr
    else:
        ok = isinstance(op, NeighbourOperator | MeanFieldOperator)
    return ok and len(_harmonic_rows(system)) <= MAX_HARMONICS


def _stages(method: str, dt: float) -> tuple[list[tuple[float, float]], float]:
    """[(stage weight, offset of the next stage's state)] and the final factor (see kuramoto.cu)."""
    if method == "euler":
        return [(1.0, 0.0)], dt
    if method == "heun":
        return [(1.0, dt), (1.0, 0.0)], 0.5 * dt
    return [(1.0, 0.5 * dt), (2.0, 0.5 * dt), (2.0, dt), (1.0, 0.0)], dt / 6.0


# --------------------------------------------------------------------------------------------------
# Device layout of a system for one (replicas, dtype, device)


def _compact(value, b: int, n: int, dtype: torch.dtype,
             device: torch.device) -> tuple[torch.Tensor, int, int]:
    """A parameter broadcastable to (b, n) as (contiguous tensor, stride over b, stride over n).

    Broadcast axes get stride 0, so omega (n,), per-replica couplings (b, 1), per-node (n,) and full
    (b, n) tables all cost one pointer and two strides, and nothing is materialised at (b, n).
    """
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() > 2:
        raise ValueError(f"a parameter of shape {tuple(t.shape)} does not broadcast against the state "
                         f"({b}, {n})")
    full = torch.broadcast_to(t, (b, n))
    stride_b, stride_n = full.stride()
    rows = b if stride_b != 0 else 1
    cols = n if stride_n != 0 else 1
    compact = full[:rows, :cols].contiguous()
    return compact, (cols if rows > 1 else 0), (1 if cols > 1 else 0)


@dataclass
class _Plan:
    """Everything the launches of one system need for a fixed (b, dtype, device)."""

    b: int
    n: int
    dtype: torch.dtype
    kind: str  # neighbour | csr | meanfield
    system_args: tuple  # omega, strides, coupling, strides, harm, n_harm, n
    op_args: tuple
    n_harm: int
    blocks: int  # ceil(n / BLOCK): gridDim.x of the node kernels
    sc: tuple[torch.Tensor, torch.Tensor]  # (b, m, n, 2) ping-pong buffers
    partials: torch.Tensor  # (b, m, blocks, 2), mean field only
    sums: torch.Tensor  # (b, m, 2), mean field only
    acc_theta: torch.Tensor
    acc_vel: torch.Tensor
    vel_stage: torch.Tensor
    views: dict[int, Any] = field(default_factory=dict)

    def real(self, x: float):
        return np.float32(x) if self.dtype == torch.float32 else np.float64(x)

    def bind(self, launcher: KernelLauncher, args: tuple) -> tuple:
        """Replace tensors by (cached) kernel arguments; scalars pass through."""
        out = []
        for a in args:
            if isinstance(a, torch.Tensor):
                key = id(a)
                if key not in self.views:
                    self.views[key] = (launcher.arg(a), a)  # keep the tensor alive with its view
                out.append(self.views[key][0])
            else:
                out.append(a)
        return tuple(out)


def _operator_args(system: KuramotoSystem, dtype: torch.dtype, device: torch.device, real, b: int,
                   n_harm: int, blocks: int) -> tuple[str, tuple, torch.Tensor, torch.Tensor]:
    op = system.operator
    empty = torch.zeros(1, dtype=dtype, device=device)
    if isinstance(op, NeighbourOperator):
        if op.index.shape[0] >= 2**31 or op.index.shape[1] >= 2**31:
            raise ValueError("the neighbour table is too large for 32-bit indices")
        index = op.index.to(device=device).t().contiguous().to(torch.int32)  # (k, n): coalesced gathers
        weight = op.weight.to(device=device, dtype=dtype)
        first = weight.reshape(-1)[:1]
        uniform = bool(weight.numel() == 0 or (weight == first).all())
        uniform_weight = float(first.item()) if weight.numel() else 0.0
        table = empty if uniform else weight.t().contiguous()
        args = (index, table, np.int32(index.shape[0]), np.int32(uniform), real(uniform_weight))
        return "neighbour", args, empty, empty
    if isinstance(op, SparseOperator):
        weight = op.weight.to(device=device, dtype=dtype)
        if weight.values().numel() >= 2**31:
            raise ValueError("the CSR matrix is too large for 32-bit indices")
        args = (weight.crow_indices().to(torch.int32).contiguous(),
                weight.col_indices().to(torch.int32).contiguous(), weight.values().contiguous())
        return "csr", args, empty, empty
    if isinstance(op, MeanFieldOperator):
        partials = torch.zeros((b, max(n_harm, 1), blocks, 2), dtype=dtype, device=device)
        sums = torch.zeros((b, max(n_harm, 1), 2), dtype=dtype, device=device)
        return "meanfield", (sums, partials, real(op.scale)), partials, sums
    raise ValueError(f"the CUDA kernels do not support {type(op).__name__}; use the torch backend")


@torch.no_grad()
def _make_plan(system: KuramotoSystem, b: int, dtype: torch.dtype, device: torch.device,
               inertial: bool) -> _Plan:
    n = system.operator.n
    if b > MAX_REPLICAS:
        raise ValueError(f"the CUDA kernels take at most {MAX_REPLICAS} replicas per run, got {b}")
    if n >= 2**31:
        raise ValueError(f"n = {n} nodes is too large for 32-bit indices")
    real = np.float32 if dtype == torch.float32 else np.float64
    rows = _harmonic_rows(system)
    n_harm = len(rows)
    harm = torch.tensor(rows if rows else [[0.0, 0.0, 1.0, 0.0]], dtype=dtype, device=device)
    omega, omega_sb, omega_sn = _compact(system.omega, b, n, dtype, device)
    coupling, coupling_sb, coupling_sn = _compact(system.coupling, b, n, dtype, device)
    system_args = (omega, np.int64(omega_sb), np.int64(omega_sn), coupling, np.int64(coupling_sb),
                   np.int64(coupling_sn), harm, np.int32(n_harm), np.int32(n))
    blocks = max(1, -(-n // BLOCK))
    kind, op_args, partials, sums = _operator_args(system, dtype, device, real, b, n_harm, blocks)
    sc_shape = (b, max(n_harm, 1), n, 2)
    acc_theta = torch.empty((b, n), dtype=dtype, device=device)
    scratch = (lambda: torch.empty((b, n), dtype=dtype, device=device)) if inertial else (lambda: acc_theta)
    return _Plan(b=b, n=n, dtype=dtype, kind=kind, system_args=system_args, op_args=op_args, n_harm=n_harm,
                 blocks=blocks, sc=(torch.empty(sc_shape, dtype=dtype, device=device),
                                    torch.empty(sc_shape, dtype=dtype, device=device)),
                 partials=partials, sums=sums, acc_theta=acc_theta, acc_vel=scratch(), vel_stage=scratch())


def _as_rows(theta: torch.Tensor, n: int, what: str = "theta") -> torch.Tensor:
    """(..., n) -> a fresh contiguous (b, n) copy the kernels may overwrite."""
    if theta.dtype not in REAL_TYPES:
        raise ValueError(f"{what} must be float32 or float64 for the CUDA kernels, got {theta.dtype}")
    if theta.dim() == 0 or theta.shape[-1] != n:
        raise ValueError(f"{what} has shape {tuple(theta.shape)}; the last axis must be the {n} nodes")
    return theta.detach().reshape(-1, n).clone(memory_format=torch.contiguous_format)


def _sincos(plan: _Plan, launcher: KernelLauncher, theta_arg, sc_index: int) -> None:
    """sc[sc_index] = (sin m theta, cos m theta), and the mean-field sums of them."""
    meanfield = plan.kind == "meanfield"
    args = plan.bind(launcher, (theta_arg,)) + plan.bind(launcher, (
        plan.sc[sc_index], plan.partials, np.int32(meanfield), plan.system_args[6], plan.system_args[7],
        plan.system_args[8]))
    launcher.launch(kernel_name("kuramoto_sincos", plan.dtype), (plan.blocks, plan.b), BLOCK, args)
    _reduce(plan, launcher)


def _reduce(plan: _Plan, launcher: KernelLauncher) -> None:
    if plan.kind == "meanfield" and plan.n_harm > 0:
        args = plan.bind(launcher, (plan.partials, plan.sums, np.int32(plan.blocks)))
        launcher.launch(kernel_name("kuramoto_reduce", plan.dtype), (plan.b * plan.n_harm, 1), BLOCK, args)


# --------------------------------------------------------------------------------------------------
# Public entry points (used by cupy_backend with a CuPy launcher)


def build_integrator(system: KuramotoSystem, launcher_for: Callable[[torch.device], KernelLauncher], *,
                     method: Method = "rk4", dt: float = 0.01, seed: int = 0,
                     check_tensor: Callable[[torch.Tensor, str], None] | None = None) -> Integrator:
    """Fixed-step integrator running the fused kernels; same contract as ``core.kuramoto_integrator``.

    Args:
        system: the oscillator system (see :func:`supports`).
        launcher_for: device -> launcher for that device.
        method: euler | heun | rk4 (Euler-Maruyama / stochastic Heun with noise).
        dt: time step.
        seed: noise seed; the increment of step s depends only on (seed, s) (Philox, see kuramoto.cu).
        check_tensor: optional hook rejecting tensors on the wrong device, called as (tensor, name).

    Returns:
        ``Integrator(init_fn, step_fn)``; ``step_fn(state, n_steps)`` queues all launches without a
        host synchronisation and returns a new state (the input state is never modified). The first
        call for a (replicas, dtype, device) builds the launch plan, which reads the neighbour weights
        once on the host (are they uniform?); later calls reuse it.
    """
    check_method(system, method, dt)
    if method not in FIXED_METHODS:
        raise ValueError(f"the CUDA kernels have fixed-step integrators only ({', '.join(FIXED_METHODS)}); "
                         f"run {method} on the torch backend (--backend torch)")
    if not supports(system):
        raise ValueError(f"the CUDA kernels do not support this system ({type(system.operator).__name__}, "
                         f"{len(_harmonic_rows(system))} harmonics); use the torch backend")
    inertial = system.inertia > 0
    stages, final_dt = _stages(method, dt)
    sigma = math.sqrt(2.0 * system.noise * dt) if system.noise > 0 else 0.0
    seed_word = np.uint64(int(seed) & _UINT64)
    plans: dict[tuple, _Plan] = {}

    def init_fn(theta: torch.Tensor, velocity: torch.Tensor | None = None, step: int = 0) -> OscillatorState:
        if check_tensor is not None:
            check_tensor(theta, "theta")
        if inertial and velocity is None:
            velocity = torch.zeros_like(theta)
        return OscillatorState(theta=theta, velocity=velocity if inertial else None, step=int(step))

    def step_fn(state: OscillatorState, n_steps: int = 1) -> OscillatorState:
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if n_steps == 0:
            return state
        if check_tensor is not None:
            check_tensor(state.theta, "theta")
        n = system.operator.n
        shape = state.theta.shape
        theta = _as_rows(state.theta, n)
        velocity = None
        if inertial:
            if state.velocity is None:
                raise ValueError("the inertial model needs a velocity in the state; build it with init_fn")
            velocity = _as_rows(state.velocity.to(theta.dtype), n, "velocity")
            if velocity.shape != theta.shape:
                raise ValueError(f"velocity shape {tuple(state.velocity.shape)} does not match theta "
                                 f"{tuple(shape)}")
        key = (theta.shape[0], theta.dtype, theta.device)
        if key not in plans:
            plans[key] = _make_plan(system, theta.shape[0], theta.dtype, theta.device, inertial)
        plan = plans[key]
        launcher = launcher_for(theta.device)
        real = plan.real
        name = kernel_name(f"kuramoto_stage_{plan.kind}", plan.dtype)
        grid = (plan.blocks, plan.b)
        with launcher.scope():
            theta_arg = launcher.arg(theta)
            velocity_arg = launcher.arg(velocity) if inertial else None
            _sincos(plan, launcher, theta_arg, 0)
            # argument tuples of every (parity of the sc buffers, stage), built once; the step is appended
            head = {}
            for parity in (0, 1):
                for index, (weight, offset) in enumerate(stages):
                    last = index == len(stages) - 1
                    state_args = plan.bind(launcher, (plan.vel_stage, plan.acc_theta, plan.acc_vel,
                                                      plan.sc[parity], plan.sc[1 - parity]))
                    tail = plan.bind(launcher, plan.system_args + plan.op_args)
                    control = (np.int32(index), np.int32(last), real(weight), real(offset), real(final_dt),
                               np.int32(inertial), real(system.inertia if inertial else 1.0), real(sigma),
                               seed_word)
                    head[parity, index] = ((theta_arg, velocity_arg if inertial else theta_arg) + state_args
                                           + tail + control)
            parity = 0
            for s in range(n_steps):
                step_word = np.uint64((state.step + s) & _UINT64)
                for index in range(len(stages)):
                    launcher.launch(name, grid, BLOCK, head[parity, index] + (step_word,))
                    _reduce(plan, launcher)
                    parity ^= 1
        return OscillatorState(theta=theta.reshape(shape),
                               velocity=velocity.reshape(shape) if inertial else None,
                               step=state.step + n_steps)

    return Integrator(init_fn, step_fn, "cupy")

