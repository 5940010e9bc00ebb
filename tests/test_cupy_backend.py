"""The CuPy backend on a GPU against the torch reference on the same device.

Skipped without CuPy or without a CUDA device. The same kernels run on the CPU in
``test_cuda_emulation.py``; what only a GPU shows is checked here: NVRTC compilation through CuPy,
warp-shuffle/shared-memory reductions, DLPack views, torch's stream, no host syncs, large N.
The physics suite (analytic results: locking, r(K) closed forms, convergence orders, ...) runs on this
backend through the ``backend`` fixture of ``test_dynamics.py``: ``pytest -m gpu tests/``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

cupy = pytest.importorskip("cupy")

from cuda_cases import KINDS, make_system  # noqa: E402

from lotsim.dynamics import (  # noqa: E402  (after the importorskip above)
    BackendUnavailable,
    KuramotoSystem,
    MeanFieldOperator,
    NeighbourOperator,
    build_operator,
    core,
    make_integrator,
)
from lotsim.lattice import build_lattice  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch"),
]
FANCY = dict(harmonics=(1.0, 0.4), frustration=(0.3, -0.8))


def gpu_system(kind, **kwargs):
    return make_system(kind, device="cuda", **kwargs)


def pair(system, **kwargs):
    """(cupy integrator, torch reference integrator) for the same system."""
    return tuple(make_integrator(system, backend=backend, **kwargs) for backend in ("cupy", "torch"))


def run(integrator, theta0, n_steps, velocity=None):
    return integrator.step_fn(integrator.init_fn(theta0, velocity), n_steps)


# ----------------------------------------------------------------------------------------------------
# Parity (float64 to 1e-10 after 1000 RK4 steps)


@pytest.mark.parametrize("kind", KINDS)
def test_rk4_trajectories_match_reference(kind):
    system, theta0 = gpu_system(kind, **FANCY)
    cupy_int, torch_int = pair(system, method="rk4", dt=0.01)
    got, want = run(cupy_int, theta0, 1000), run(torch_int, theta0, 1000)
    assert got.theta.device == theta0.device and got.step == 1000
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("kind", KINDS)
def test_euler_and_heun_match_reference(kind, method):
    system, theta0 = gpu_system(kind, per_node_coupling=True, **FANCY)
    cupy_int, torch_int = pair(system, method=method, dt=0.01)
    torch.testing.assert_close(run(cupy_int, theta0, 1000).theta, run(torch_int, theta0, 1000).theta,
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_inertia_matches_reference(kind):
    system, theta0 = gpu_system(kind, inertia=0.7, **FANCY)
    velocity = 0.1 * torch.cos(theta0)
    cupy_int, torch_int = pair(system, method="rk4", dt=0.01)
    got, want = run(cupy_int, theta0, 1000, velocity), run(torch_int, theta0, 1000, velocity)
    torch.testing.assert_close(got.theta, want.theta, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.velocity, want.velocity, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_drift_matches_reference(kind):
    """The stage kernels' right-hand side: one Euler step of dt = 1 moves theta by the drift (to round-off)."""
    system, theta = gpu_system(kind, per_node_coupling=True, **FANCY)
    cupy_int, _ = pair(system, method="euler", dt=1.0)
    drift = run(cupy_int, theta, 1).theta - theta
    torch.testing.assert_close(drift, core.drift(system, theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_order_parameter_matches_reference(kind):
    system, theta0 = gpu_system(kind, dtype=torch.float32, replicas=4)
    cupy_int, torch_int = pair(system)
    got, want = run(cupy_int, theta0, 1000), run(torch_int, theta0, 1000)
    assert got.theta.dtype == torch.float32
    r_got, _ = core.order_parameter(got.theta)
    r_want, _ = core.order_parameter(want.theta)
    torch.testing.assert_close(r_got, r_want, rtol=0, atol=1e-4)


def test_large_lattice_matches_reference():
    """Many blocks per replica (grid x) and the mean-field reduction over 4096 partial sums."""
    n = 1 << 20
    node = torch.arange(n, device="cuda")
    ring = NeighbourOperator(torch.stack(((node - 1) % n, (node + 1) % n), dim=1),  # built without networkx
                             torch.rand(n, 2, device="cuda", dtype=torch.float64))
    for op in (ring, MeanFieldOperator(n, 1.0 / n)):
        system = KuramotoSystem(omega=torch.randn(n, device="cuda", dtype=torch.float64), operator=op,
                                coupling=torch.tensor([[1.0], [3.0]], device="cuda", dtype=torch.float64))
        theta0 = 2 * math.pi * torch.rand(2, n, device="cuda", dtype=torch.float64)
        cupy_int, torch_int = pair(system)
        torch.testing.assert_close(run(cupy_int, theta0, 20).theta, run(torch_int, theta0, 20).theta,
                                   rtol=0, atol=1e-11)


# ----------------------------------------------------------------------------------------------------
# Streams, syncs, state contract


def test_runs_on_torchs_current_stream_without_host_syncs():
    system, theta0 = gpu_system("meanfield", **FANCY)
    integrator = make_integrator(system, backend="cupy")
    expected = run(integrator, theta0, 200).theta  # also builds and caches the plan and the kernels
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            state = run(integrator, theta0, 200)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(state.theta, expected)


def test_step_fn_leaves_the_input_state_alone():
    system, theta0 = gpu_system("neighbour", inertia=0.5)
    integrator = make_integrator(system, backend="cupy")
    state = integrator.init_fn(theta0.clone())
    before = (state.theta.clone(), state.velocity.clone())
    later = integrator.step_fn(state, 10)
    assert torch.equal(state.theta, before[0]) and torch.equal(state.velocity, before[1])
    assert later.step == 10 and later.theta.shape == theta0.shape


def test_cpu_tensors_are_refused_with_a_hint():
    system, _ = make_system("neighbour")  # on the CPU
    with pytest.raises(BackendUnavailable, match="--device cuda"):
        make_integrator(system, backend="cupy")
    gpu, theta0 = gpu_system("neighbour")
    with pytest.raises(BackendUnavailable, match="--device cuda"):
        make_integrator(gpu, backend="cupy").init_fn(theta0.cpu())


# ----------------------------------------------------------------------------------------------------
# Noise (statistics; the stream differs from the torch backend's)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_free_diffusion_has_variance_2Dt(method, dtype):
    n, noise, dt = 1 << 16, 0.25, 0.01
    op = build_operator(build_lattice("ring", n=n), "none", device="cuda", dtype=dtype)
    system = KuramotoSystem(omega=torch.zeros(n, device="cuda", dtype=dtype), operator=op, noise=noise,
                            coupling=torch.zeros(1, 1, device="cuda", dtype=dtype))
    theta0 = torch.zeros(4, n, device="cuda", dtype=dtype)
    integrator = make_integrator(system, backend="cupy", method=method, dt=dt, seed=3)
    state = integrator.init_fn(theta0)
    for steps in (100, 400):
        state = integrator.step_fn(state, steps - state.step)
        displacement = (state.theta - theta0).double()
        assert displacement.var().item() == pytest.approx(2 * noise * steps * dt, rel=0.03)
        assert abs(displacement.mean().item()) < 5 * math.sqrt(2 * noise * steps * dt / displacement.numel())


def test_noisy_runs_agree_statistically_with_the_reference():
    system, theta0 = gpu_system("meanfield", replicas=64, noise=0.5)
    system = replace(system, coupling=torch.full((64, 1), 2.0, device="cuda", dtype=torch.float64))
    theta0 = theta0[:1].expand(64, -1).contiguous()
    cupy_int, torch_int = pair(system, method="heun", dt=0.01, seed=1)
    r_got, _ = core.order_parameter(run(cupy_int, theta0, 1500).theta)
    r_want, _ = core.order_parameter(run(torch_int, theta0, 1500).theta)
    spread = math.hypot(r_got.std().item(), r_want.std().item()) / math.sqrt(64)
    assert abs(r_got.mean().item() - r_want.mean().item()) < 4 * spread + 1e-3


def test_noise_is_reproducible_and_resumable():
    system, theta0 = gpu_system("csr", noise=0.2, inertia=0.3)
    integrator = make_integrator(system, backend="cupy", method="heun", seed=11)
    straight = integrator.step_fn(integrator.init_fn(theta0), 60)
    resumed = integrator.step_fn(integrator.step_fn(integrator.init_fn(theta0), 25), 35)
    assert torch.equal(straight.theta, resumed.theta) and torch.equal(straight.velocity, resumed.velocity)
