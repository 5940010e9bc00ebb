"""Shared pieces of the CUDA backend tests: test systems, and the host emulation of the kernels.

``test_cuda_emulation.py`` runs the launch plans of ``lotsim.dynamics.cuda_kernels`` on the CPU through
``cuda/host_emulation.cpp`` (the kernel bodies of ``cuda/kuramoto.cu`` compiled as C++); the GPU tests in
``test_cupy_backend.py`` run the same cases through CuPy. Both compare against the torch reference.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lotsim.dynamics import DenseOperator, KuramotoSystem, SparseOperator, build_operator
from lotsim.lattice import build_lattice

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "cuda"

# ----------------------------------------------------------------------------------------------------
# Test systems


def make_system(kind: str, *, device="cpu", dtype=torch.float64, replicas: int = 2, harmonics=(1.0,),
                frustration=(0.0,), inertia: float = 0.0, noise: float = 0.0, per_node_coupling: bool = False,
                seed: int = 0) -> tuple[KuramotoSystem, torch.Tensor]:
    """A small system with random frequencies and phases.

    kind: ``neighbour`` (periodic 8x8 square lattice, per-edge exp weights), ``neighbour-uniform``
    (ring of 48, uniform weights), ``csr`` (directed Erdos-Renyi, degree normalisation) or
    ``meanfield`` (complete graph of 96).

    Returns:
        (system, theta0 (replicas, n)).
    """
    if kind == "neighbour":
        lattice = build_lattice("square", shape=(8, 8), weights="exp", lattice_constant=2.0)
        op = build_operator(lattice, "none", device=device, dtype=dtype)
    elif kind == "neighbour-uniform":
        op = build_operator(build_lattice("ring", n=48), "none", device=device, dtype=dtype)
    elif kind == "csr":
        op = build_operator(build_lattice("erdos-renyi", n=60, p=0.15, directed=True, seed=seed), "degree",
                            layout="sparse", device=device, dtype=dtype)
    elif kind == "meanfield":
        op = build_operator(build_lattice("complete", n=96), "mean-field", device=device, dtype=dtype)
    else:
        raise ValueError(kind)
    gen = torch.Generator().manual_seed(seed)
    n = op.n
    omega = (0.5 * torch.randn(n, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    if per_node_coupling:
        coupling = (1.0 + torch.rand(n, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    else:
        coupling = torch.linspace(0.8, 2.5, replicas, dtype=dtype, device=device).reshape(-1, 1)
    theta0 = (2 * torch.pi * torch.rand(replicas, n, generator=gen, dtype=torch.float64)).to(device=device,
                                                                                           dtype=dtype)
    system = KuramotoSystem(omega=omega, coupling=coupling, operator=op, harmonics=tuple(harmonics),
                            frustration=tuple(frustration), noise=noise, inertia=inertia)
    return system, theta0


KINDS = ("neighbour", "neighbour-uniform", "csr", "meanfield")


def dense_reference(system: KuramotoSystem) -> KuramotoSystem:
    """The same system with a CSR operator replaced by its dense twin.

    torch 2.13's CSR product is slow on CPU (about 11 ms for n = 60, four columns), so the CPU
    tests integrate the reference with the dense matrix: the same W, summed in another order.
    """
    if isinstance(system.operator, SparseOperator) and system.operator.weight.device.type == "cpu":
        return replace(system, operator=DenseOperator(system.operator.weight.to_dense()))
    return system

# ----------------------------------------------------------------------------------------------------
# Host emulation of the kernels


def cxx_compiler() -> str | None:
    """A C++17 compiler for the host emulation, or None."""
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.cache
def emulation_library() -> ctypes.CDLL:
    """Build cuda/host_emulation.cpp once per test session and load it."""
    compiler = cxx_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler on PATH")
    out = Path(tempfile.mkdtemp(prefix="lotsim-emu-")) / "libkuramoto_emulation.so"
    command = [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-shared", "-fPIC",
               str(CUDA_DIR / "host_emulation.cpp"), "-o", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    lib.lotsim_emu_signature.restype = ctypes.c_char_p
    lib.lotsim_emu_signature.argtypes = [ctypes.c_char_p]
    lib.lotsim_emu_names.restype = ctypes.c_char_p
    lib.lotsim_emu_launch.restype = ctypes.c_int
    lib.lotsim_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                      ctypes.POINTER(ctypes.c_void_p)]
    lib.lotsim_emu_normal.restype = ctypes.c_double
    lib.lotsim_emu_normal.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int]
    return lib


_POINTER_CODES = {torch.float32: "pf", torch.float64: "pd", torch.int32: "pi"}
_SCALAR_CODES = {np.float32: ("f", ctypes.c_float), np.float64: ("d", ctypes.c_double),
                 np.int32: ("i", ctypes.c_int), np.int64: ("q", ctypes.c_longlong),
                 np.uint64: ("Q", ctypes.c_ulonglong)}


class EmulatedLauncher:
    """A :class:`~lotsim.dynamics.cuda_kernels.KernelLauncher` that runs kernels on the CPU.

    Every launch is checked against the compiled kernel signature: the number of arguments, the
    element type behind each pointer and the exact numpy type of each scalar (CuPy checks none of
    these on the GPU, it packs what it is given).
    """

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.launches: list[str] = []

    def scope(self):
        return contextlib.nullcontext()

    def arg(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError("the emulator takes contiguous CPU tensors")
        return tensor

    def launch(self, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        raw = self.lib.lotsim_emu_signature(name.encode())
        if raw is None:
            raise KeyError(f"no kernel {name!r} in the emulation build")
        signature = raw.decode().split(",")
        if len(signature) != len(args):
            raise TypeError(f"{name}: {len(args)} arguments for {len(signature)} parameters")
        values, pointers = [], []
        for position, (code, value) in enumerate(zip(signature, args)):
            if isinstance(value, torch.Tensor):
                got = _POINTER_CODES.get(value.dtype, str(value.dtype))
                holder = ctypes.c_void_p(value.data_ptr())
            elif type(value) in _SCALAR_CODES:
                got, ctype = _SCALAR_CODES[type(value)]
                holder = ctype(value.item())
            else:
                got, holder = type(value).__name__, None
            if got != code:
                raise TypeError(f"{name}: argument {position} is {got}, the kernel takes {code}")
            values.append(holder)
            pointers.append(ctypes.cast(ctypes.pointer(holder), ctypes.c_void_p))
        array = (ctypes.c_void_p * len(pointers))(*pointers)
        rc = self.lib.lotsim_emu_launch(name.encode(), grid[0], grid[1], block, array)
        if rc != 0:
            raise RuntimeError(f"{name}: bad launch configuration grid={grid} block={block} (rc={rc})")
        self.launches.append(name)
