"""The CUDA backend's launch plans and kernel bodies, run on the CPU (no GPU, no CuPy needed).

``cuda/host_emulation.cpp`` compiles the kernels of ``cuda/kuramoto.cu`` as host C++ and runs them
thread by thread; ``lotsim.dynamics.cuda_kernels`` drives them exactly as it drives CuPy on a GPU,
and every launch is checked against the compiled signature. So these tests check the kernels'
arithmetic, indexing and stage logic and the backend's argument lists against the torch reference;
warp shuffles, shared memory, DLPack and streams are left to the GPU tests (test_cupy_backend.py).
"""

from __future__ import annotations

import ctypes
import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from cuda_cases import (
    KINDS,
    EmulatedLauncher,
    cxx_compiler,
    dense_reference,
    emulation_library,
    make_system,
)

from lotsim.dynamics import (
    BackendUnavailable,
    DenseOperator,
    KuramotoSystem,
    build_operator,
    core,
    cuda_kernels,
    make_integrator,
)
from lotsim.lattice import build_lattice

pytestmark = pytest.mark.skipif(cxx_compiler() is None,
                                reason="no C++ compiler on PATH for the host emulation")


@pytest.fixture(scope="module")
def lib():
    return emulation_library()


@pytest.fixture
def launcher(lib):
    return EmulatedLauncher(lib)


def emulated(system, launcher, **kwargs):
    return cuda_kernels.build_integrator(system, lambda device: launcher, **kwargs)


def reference(system, **kwargs):
    return core.kuramoto_integrator(dense_reference(system), **kwargs)


def run(integrator, theta0, n_steps, velocity=None):
    return integrator.step_fn(integrator.init_fn(theta0, velocity), n_steps)


# ----------------------------------------------------------------------------------------------------
# Kernel inventory, argument checking, random numbers


def test_every_kernel_is_built(lib):
    assert set(lib.lotsim_emu_names().decode().split(",")) == set(cuda_kernels.NAME_EXPRESSIONS)
    assert lib.lotsim_emu_max_harmonics() == cuda_kernels.MAX_HARMONICS


def test_the_launcher_rejects_arguments_cupy_would_misread(launcher):
    partials = torch.zeros(1, 8, 2, dtype=torch.float32)
    out = torch.zeros(1, 2, dtype=torch.float32)
    name = "kuramoto_reduce<float>"
    launcher.launch(name, (1, 1), 256, (partials, out, np.int32(8)))
    with pytest.raises(TypeError, match="argument 2 is int"):  # a Python int: CuPy would pass 8 bytes
        launcher.launch(name, (1, 1), 256, (partials, out, 8))
    with pytest.raises(TypeError, match="argument 0 is pd"):
        launcher.launch(name, (1, 1), 256, (partials.double(), out, np.int32(8)))
    # a double where the kernel takes float: the first real scalar of a stage kernel (the check fails
    # before anything runs, so the other arguments only need the right types)
    name = "kuramoto_stage_csr<float>"
    signature = launcher.lib.lotsim_emu_signature(name.encode()).decode().split(",")
    like = {"pf": torch.zeros(1, dtype=torch.float32), "pi": torch.zeros(1, dtype=torch.int32),
            "f": np.float32(0), "i": np.int32(0), "q": np.int64(0), "Q": np.uint64(0)}
    args = [like[code] for code in signature]
    at = signature.index("f")
    args[at] = np.float64(1.0)
    with pytest.raises(TypeError, match=f"argument {at} is d"):
        launcher.launch(name, (1, 1), 256, tuple(args))


# Random123's published known-answer vectors for Philox4x32-10 (counter words, key words, output)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_the_known_answers(lib, counter, key, expected):
    out = (ctypes.c_uint * 4)()
    lib.lotsim_emu_philox((ctypes.c_uint * 4)(*counter), (ctypes.c_uint * 2)(*key), out)
    assert tuple(out) == expected


@pytest.mark.parametrize("double", [0, 1])
def test_normals_are_standard(lib, double):
    z = np.array([lib.lotsim_emu_normal(7, step, b, i, double)
                  for step in range(20) for b in range(5) for i in range(500)])
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.03
    assert abs(np.mean(np.abs(z) > 2) - 0.0455) < 0.005
    assert lib.lotsim_emu_normal(7, 3, 1, 2, double) != lib.lotsim_emu_normal(8, 3, 1, 2, double)


# ----------------------------------------------------------------------------------------------------
# Parity with the torch reference (float64)

FANCY = dict(harmonics=(1.0, 0.4), frustration=(0.3, -0.8))
STEPS = 400  # the GPU tests take 1000 steps; here the torch reference on 2 CPU cores sets the pace


@pytest.mark.parametrize("options", [{}, dict(per_node_coupling=True, **FANCY)], ids=["plain", "fancy"])
@pytest.mark.parametrize("kind", KINDS)
def test_drift_matches_reference(launcher, kind, options):
    """The stage kernels' right-hand side: one Euler step of dt = 1 moves theta by the drift (to round-off)."""
    system, theta = make_system(kind, **options)
    expected = core.drift(dense_reference(system), theta)
    drift = run(emulated(system, launcher, method="euler", dt=1.0), theta, 1).theta - theta
    torch.testing.assert_close(drift, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rk4_trajectories_match_reference(launcher, kind):
    system, theta0 = make_system(kind, **FANCY)
    got = run(emulated(system, launcher, method="rk4", dt=0.01), theta0, STEPS)
    want = run(reference(system, method="rk4", dt=0.01), theta0, STEPS)
    assert got.step == want.step == STEPS
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("kind", ["neighbour", "meanfield"])
def test_euler_and_heun_match_reference(launcher, kind, method):
    system, theta0 = make_system(kind, per_node_coupling=True, **FANCY)
    got = run(emulated(system, launcher, method=method, dt=0.02), theta0, 500)
    want = run(reference(system, method=method, dt=0.02), theta0, 500)
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_inertia_matches_reference(launcher, kind):
    system, theta0 = make_system(kind, inertia=0.7, **FANCY)
    velocity = 0.1 * torch.cos(theta0)
    got = run(emulated(system, launcher, method="rk4", dt=0.01), theta0, STEPS, velocity)
    want = run(reference(system, method="rk4", dt=0.01), theta0, STEPS, velocity)
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.velocity, want.velocity, rtol=0, atol=1e-10)


def test_float32_order_parameter_matches_reference(launcher):
    system, theta0 = make_system("neighbour", dtype=torch.float32, replicas=3)
    got = run(emulated(system, launcher), theta0, STEPS)
    want = run(reference(system), theta0, STEPS)
    r_got, _ = core.order_parameter(got.theta)
    r_want, _ = core.order_parameter(want.theta)
    assert got.theta.dtype == torch.float32
    torch.testing.assert_close(r_got, r_want, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Contract: immutability, batching, noise stream


def test_step_fn_leaves_the_input_state_alone(launcher):
    system, theta0 = make_system("csr", inertia=0.5)
    integrator = emulated(system, launcher)
    state = integrator.init_fn(theta0.clone())
    before = (state.theta.clone(), state.velocity.clone())
    integrator.step_fn(state, 10)
    assert torch.equal(state.theta, before[0]) and torch.equal(state.velocity, before[1])
    assert integrator.step_fn(state, 0) is state


@pytest.mark.parametrize("kind", ["neighbour", "meanfield"])
def test_batched_runs_equal_runs_one_by_one(launcher, kind):
    system, theta0 = make_system(kind, replicas=3)
    together = run(emulated(system, launcher), theta0, 50).theta
    for b in range(3):
        single = replace(system, coupling=system.coupling[b:b + 1])
        assert torch.equal(run(emulated(single, launcher), theta0[b:b + 1], 50).theta, together[b:b + 1])
    # the noise of replica b is keyed by (seed, step, b, node): replica 0 alone sees the same kicks
    noisy = replace(system, noise=0.05)
    together = run(emulated(noisy, launcher, method="heun", seed=4), theta0, 50).theta
    alone = run(emulated(replace(noisy, coupling=noisy.coupling[:1]), launcher, method="heun", seed=4),
                theta0[:1], 50).theta
    assert torch.equal(alone, together[:1])


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_noise_is_reproducible_and_resumable(launcher, method):
    system, theta0 = make_system("meanfield", noise=0.2, inertia=0.3)
    integrator = emulated(system, launcher, method=method, seed=11)
    straight = integrator.step_fn(integrator.init_fn(theta0), 60)
    halfway = integrator.step_fn(integrator.init_fn(theta0), 25)
    resumed = integrator.step_fn(halfway, 35)
    assert torch.equal(straight.theta, resumed.theta) and torch.equal(straight.velocity, resumed.velocity)
    again = emulated(system, launcher, method=method, seed=11).step_fn(integrator.init_fn(theta0), 60)
    assert torch.equal(again.theta, straight.theta)
    other = emulated(system, launcher, method=method, seed=12).step_fn(integrator.init_fn(theta0), 60)
    assert not torch.allclose(other.theta, straight.theta)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_free_diffusion_has_variance_2Dt(launcher, method):
    """K = 0, omega = 0: theta(t) - theta(0) ~ N(0, 2 D t), independent over nodes, replicas, steps."""
    lattice = build_lattice("ring", n=4096)
    system = KuramotoSystem(omega=torch.zeros(4096, dtype=torch.float64), coupling=torch.zeros(1, 1),
                            operator=build_operator(lattice, "none"), noise=0.3)
    theta0 = torch.zeros(4, 4096, dtype=torch.float64)
    integrator = emulated(system, launcher, method=method, dt=0.05, seed=5)
    state = integrator.init_fn(theta0)
    for n_steps in (40, 120):
        state = integrator.step_fn(state, n_steps - state.step)
        t = state.step * 0.05
        displacement = state.theta - theta0
        assert abs(displacement.mean().item()) < 4 * math.sqrt(2 * 0.3 * t / displacement.numel())
        assert displacement.var().item() == pytest.approx(2 * 0.3 * t, rel=0.05)


# The physics (locking, beats, r(K) closed forms, convergence orders, free rotation, Lyapunov
# descent, inertia, diffusion) runs on the emulated kernels through test_dynamics.py's backend fixture.


# ----------------------------------------------------------------------------------------------------
# Refusals and messages


def test_unsupported_systems_and_methods_are_refused(launcher):
    system, _ = make_system("neighbour", noise=0.1)
    with pytest.raises(ValueError, match="rk4 has no consistent form with noise"):
        emulated(system, launcher, method="rk4")
    with pytest.raises(ValueError, match="unknown integrator"):
        emulated(system, launcher, method="midpoint")
    dense = KuramotoSystem(omega=torch.zeros(4), coupling=torch.ones(1),
                           operator=DenseOperator(torch.ones(4, 4)))
    assert not cuda_kernels.supports(dense)
    with pytest.raises(ValueError, match="use the torch backend"):
        emulated(dense, launcher)
    many = make_system("csr", harmonics=(1.0,) * 9, frustration=(0.0,))[0]
    assert not cuda_kernels.supports(many)


def test_missing_cupy_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    monkeypatch.delitem(sys.modules, "lotsim.dynamics.cupy_backend", raising=False)
    system, _ = make_system("neighbour")
    with pytest.raises(BackendUnavailable, match=r"lotsim\[gpu12\].*lotsim\[gpu13\]"):
        make_integrator(system, backend="cupy")


def test_without_a_gpu_the_backend_says_so():
    cupy = pytest.importorskip("cupy")
    if cupy.is_available():
        pytest.skip("a CUDA device is available")
    system, _ = make_system("neighbour")
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU; none is available"):
        make_integrator(system, backend="cupy")


def test_cupy_backend_wiring_runs_on_the_emulator(monkeypatch, launcher):
    """make_integrator(backend="cupy") end to end, with the GPU replaced by the host emulation."""
    pytest.importorskip("cupy")
    from lotsim.dynamics import cupy_backend

    monkeypatch.setattr(cupy_backend, "_require_gpu", lambda: None)
    monkeypatch.setattr(cupy_backend, "_check_tensor", lambda tensor, name: None)
    monkeypatch.setattr(cupy_backend, "_launcher_for", lambda device: launcher)
    system, theta0 = make_system("meanfield", **FANCY)
    integrator = make_integrator(system, backend="cupy", method="heun", dt=0.02)
    assert integrator.backend == "cupy"
    got = integrator.step_fn(integrator.init_fn(theta0), 100)
    want = run(reference(system, method="heun", dt=0.02), theta0, 100)
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-11)
