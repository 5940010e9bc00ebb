"""Physics validation of the Kuramoto core (docs/physics.md "Validation"): analytic results are tests.

Every integration test here runs on every backend through the ``backend`` fixture: ``torch`` (the
reference), ``numba`` (the fused CPU kernel), ``cuda-emulated`` (the CUDA kernels of
``cuda/kuramoto.cu`` compiled as host C++ and launched through the CuPy backend's own launch plans,
see ``test_cuda_emulation.py``) and ``cupy`` (the same kernels on a GPU; marked ``gpu``, skipped
without CuPy and a CUDA device). A new backend joins by adding a case to :class:`Backend`: it then
has to pass the same physics as the reference.
"""

from __future__ import annotations

import functools
import math
import shutil

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from lotsim.dynamics import (
    KuramotoSystem,
    build_operator,
    drift,
    kuramoto_integrator,
    make_integrator,
    order_parameter,
)
from lotsim.dynamics.initial import initial_phases, natural_frequencies
from lotsim.lattice import build_lattice

F64 = torch.float64


class Backend:
    """Builds integrators on one backend; systems and states live on its device."""

    def __init__(self, name: str):
        self.name = name
        self.device = "cuda" if name == "cupy" else "cpu"

    def __repr__(self) -> str:
        return self.name

    def integrator(self, system: KuramotoSystem, *, method: str = "rk4", dt: float = 0.01, seed: int = 0):
        if self.name == "cuda-emulated":
            from cuda_cases import EmulatedLauncher, emulation_library

            from lotsim.dynamics import cuda_kernels

            launcher = EmulatedLauncher(emulation_library())
            return cuda_kernels.build_integrator(system, lambda device: launcher, method=method, dt=dt, seed=seed)
        return make_integrator(system, backend=self.name, method=method, dt=dt, seed=seed)


def _available(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None."""
    if name == "cuda-emulated" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH for the host emulation of the CUDA kernels"
    if name == "cupy":
        try:
            import cupy
        except ImportError:
            return "CuPy is not installed (pip install 'lotsim[gpu12]' or '[gpu13]')"
        if not (cupy.is_available() and torch.cuda.is_available()):
            return "needs a CUDA device and a CUDA build of torch"
    return None


@pytest.fixture(params=["torch", "numba", "cuda-emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request) -> Backend:
    reason = _available(request.param)
    if reason:
        pytest.skip(reason)
    return Backend(request.param)


REFERENCE = Backend("torch")


def _system(lattice, omega, coupling, normalization="none", layout="auto", device="cpu", dtype=F64, **kw):
    omega = torch.as_tensor(np.array(omega), dtype=dtype, device=device)
    coupling = torch.as_tensor(np.asarray(coupling, dtype=float), dtype=dtype, device=device).reshape(-1, 1)
    return KuramotoSystem(omega, coupling, build_operator(lattice, normalization, layout=layout, device=device,
                                                          dtype=dtype), **kw)


def _run(system, theta0, *, dt, steps, method="rk4", seed=0, record_every=None, backend=REFERENCE):
    """Integrate on ``backend``; returns the final state (and the stacked frames), on the CPU."""
    init, step = backend.integrator(system, method=method, dt=dt, seed=seed)
    state = init(torch.as_tensor(np.asarray(theta0), dtype=system.omega.dtype, device=system.omega.device))
    if record_every is None:
        return _on_cpu(step(state, steps))
    frames = []
    for _ in range(steps // record_every):
        state = step(state, record_every)
        frames.append(state.theta.cpu())
    return _on_cpu(state), torch.stack(frames)


def _on_cpu(state):
    velocity = None if state.velocity is None else state.velocity.cpu()
    return type(state)(theta=state.theta.cpu(), velocity=velocity, step=state.step)


# --------------------------------------------------------------------------- two oscillators


@pytest.mark.parametrize("delta_omega", [0.5, 1.0, 1.9])
def test_two_oscillators_lock_at_arcsin(backend, delta_omega):
    c = 1.0
    lat = build_lattice("complete", n=2)
    sys_ = _system(lat, [-delta_omega / 2, delta_omega / 2], [c], device=backend.device)
    state = _run(sys_, [[0.0, 0.0]], dt=0.01, steps=4000, backend=backend)
    phase_difference = (state.theta[0, 1] - state.theta[0, 0]).item()
    assert phase_difference == pytest.approx(math.asin(delta_omega / (2 * c)), abs=1e-6)
    velocity = drift(_system(lat, [-delta_omega / 2, delta_omega / 2], [c]), state.theta)
    assert (velocity[0, 1] - velocity[0, 0]).abs().item() < 1e-8  # frequency locked


@pytest.mark.parametrize("delta_omega", [2.5, 4.0])
def test_two_oscillators_beat_frequency_above_locking(backend, delta_omega):
    c = 1.0
    lat = build_lattice("complete", n=2)
    sys_ = _system(lat, [-delta_omega / 2, delta_omega / 2], [c], device=backend.device)
    beat = math.sqrt(delta_omega**2 - 4 * c**2)
    periods = 20
    t_total = periods * 2 * math.pi / beat
    init, step = backend.integrator(sys_, dt=0.005)
    state0 = step(init(torch.zeros(1, 2, dtype=F64, device=backend.device)), 2000)  # discard t = 10
    steps = round(t_total / 0.005)
    state1 = step(state0, steps)
    d0 = (state0.theta[0, 1] - state0.theta[0, 0]).item()
    d1 = (state1.theta[0, 1] - state1.theta[0, 0]).item()
    measured = (d1 - d0) / (steps * 0.005)
    assert measured == pytest.approx(beat, rel=2e-3)  # the phase slips 2 pi once per beat period


# --------------------------------------------------------------------------- complete graph


def _stationary_r(n, dist, width, couplings, *, t_max=60.0, dt=0.05, start="sync", backend=REFERENCE):
    lat = build_lattice("complete", n=n)
    omega = natural_frequencies(n, dist, width=width, sampling="quantile", seed=0)
    b = len(couplings)
    sys_ = _system(lat, np.broadcast_to(omega, (b, n)), couplings, normalization="mean-field",
                   device=backend.device)
    theta0 = np.zeros((b, n)) if start == "sync" else np.tile(initial_phases(lat, "random"), (b, 1))
    steps = round(t_max / dt)
    _, frames = _run(sys_, theta0, dt=dt, steps=steps, record_every=10, backend=backend)
    r, _ = order_parameter(frames)
    return r[r.shape[0] // 2:].mean(0).numpy()


def test_lorentzian_order_parameter_matches_closed_form(backend):
    gamma, couplings = 0.5, [1.5, 2.0, 3.0]
    r = _stationary_r(4000, "lorentzian", gamma, couplings, backend=backend)
    theory = np.sqrt(1 - 2 * gamma / np.asarray(couplings))  # K_c = 2 gamma
    assert np.allclose(r, theory, atol=0.02), (r, theory)


def test_lorentzian_incoherent_below_kc(backend):
    r = _stationary_r(4000, "lorentzian", 0.5, [0.5], start="random", backend=backend)
    assert r[0] < 0.06  # O(1/sqrt(N)) fluctuations only


@pytest.mark.slow
def test_lorentzian_closed_form_at_n_10000_within_0_01():
    gamma, couplings = 0.5, [1.2, 1.5, 2.0, 3.0, 4.0]
    r = _stationary_r(10_000, "lorentzian", gamma, couplings, t_max=150.0)
    assert np.allclose(r, np.sqrt(1 - 2 * gamma / np.asarray(couplings)), atol=0.01)


def _gaussian_self_consistent_r(k, sigma):
    """Solve 1 = K int_{-pi/2}^{pi/2} cos^2(x) g(K r sin x) dx for r > 0."""
    g = stats.norm(0, sigma).pdf

    def residual(r):
        return k * integrate.quad(lambda x: math.cos(x) ** 2 * g(k * r * math.sin(x)), -math.pi / 2,
                                  math.pi / 2)[0] - 1

    return optimize.brentq(residual, 1e-6, 1.0)


def test_gaussian_critical_coupling_and_self_consistency(backend):
    sigma = 1.0
    kc = math.sqrt(8 / math.pi) * sigma
    assert 2 / (math.pi * stats.norm(0, sigma).pdf(0)) == pytest.approx(kc)
    couplings = [0.8 * kc, 1.5 * kc, 2.0 * kc]
    r = _stationary_r(4000, "gaussian", sigma, couplings, t_max=80.0, backend=backend)
    assert r[0] < 0.08
    for k, measured in zip(couplings[1:], r[1:]):
        assert measured == pytest.approx(_gaussian_self_consistent_r(k, sigma), abs=0.02)


def test_incoherent_state_has_mean_r_squared_one_over_n():
    n, samples = 50, 4000
    lat = build_lattice("complete", n=n)
    theta = torch.as_tensor(np.stack([initial_phases(lat, "random", seed=s) for s in range(samples)]))
    r, _ = order_parameter(theta)
    mean_r2 = (r**2).mean().item()
    # E[r^2] = 1/N exactly; the sample mean has sd ~ (1/N)/sqrt(samples)
    assert mean_r2 == pytest.approx(1 / n, rel=5 * 1 / math.sqrt(samples))


# --------------------------------------------------------------------------- integrators


@functools.cache
def _convergence_problem():
    """A small coupled ring with frustration and two harmonics, and a fine-dt RK4 reference at t = 2."""
    lat = build_lattice("ring", n=8)
    omega = natural_frequencies(8, "gaussian", width=1.0, seed=1)
    theta0 = initial_phases(lat, "random", seed=2)[None]
    reference = _run(_system(lat, omega, [1.5], frustration=(0.3,), harmonics=(1.0, 0.4)), theta0, dt=1e-4,
                     steps=20_000).theta
    return lat, omega, theta0, reference


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_integrator_convergence_order(backend, method, order):
    lat, omega, theta0, reference = _convergence_problem()
    sys_ = _system(lat, omega, [1.5], frustration=(0.3,), harmonics=(1.0, 0.4), device=backend.device)
    t_end = 2.0
    dts = {"euler": [0.05, 0.025], "heun": [0.025, 0.0125], "rk4": [0.1, 0.05]}[method]
    errors = [(_run(sys_, theta0, dt=dt, steps=round(t_end / dt), method=method, backend=backend).theta
               - reference).abs().max() for dt in dts]
    observed = math.log2(errors[0] / errors[1])
    assert observed == pytest.approx(order, abs=0.15)


def test_free_rotation_is_exact_at_zero_coupling(backend):
    lat = build_lattice("square", shape=(6, 6))
    omega = natural_frequencies(36, "gaussian", width=2.0, seed=3)
    sys_ = _system(lat, omega, [0.0], device=backend.device)
    theta0 = initial_phases(lat, "random", seed=4)[None]
    dt, steps = 0.01, 1000
    state = _run(sys_, theta0, dt=dt, steps=steps, backend=backend)
    expected = theta0 + omega * (dt * steps)
    assert np.allclose(state.theta.numpy(), expected, rtol=1e-13, atol=1e-12)


def test_batched_couplings_equal_runs_one_by_one(backend):
    lat = build_lattice("square", shape=(8, 8))
    omega = natural_frequencies(64, "gaussian", width=0.5, seed=5)
    theta0 = initial_phases(lat, "random", seed=6)
    couplings = [0.0, 0.7, 1.3, 2.9]
    batched = _run(_system(lat, np.broadcast_to(omega, (4, 64)), couplings, device=backend.device),
                   np.tile(theta0, (4, 1)), dt=0.02, steps=200, backend=backend).theta
    for i, k in enumerate(couplings):
        single = _run(_system(lat, omega, [k], device=backend.device), theta0[None], dt=0.02, steps=200,
                      backend=backend).theta
        assert torch.equal(batched[i], single[0])


@pytest.mark.parametrize("layout", ["dense", "sparse", "neighbours"])
def test_layouts_agree(layout):
    lat = build_lattice("small-world", n=50, k=4, p=0.2, seed=0)
    omega = natural_frequencies(50, "gaussian", seed=0)
    theta = torch.as_tensor(initial_phases(lat, "random")[None])
    reference = drift(_system(lat, omega, [1.3], "degree", "dense", harmonics=(1.0, 0.5), frustration=(0.2, 0.1)),
                      theta)
    other = drift(_system(lat, omega, [1.3], "degree", layout, harmonics=(1.0, 0.5), frustration=(0.2, 0.1)), theta)
    assert torch.allclose(reference, other, atol=1e-13)


def test_mean_field_path_equals_dense_complete_graph():
    lat = build_lattice("complete", n=30)
    omega = natural_frequencies(30, "gaussian", seed=0)
    theta = torch.as_tensor(initial_phases(lat, "random")[None])
    for norm in ("mean-field", "degree", "none"):
        fast = _system(lat, omega, [2.0], norm, frustration=(0.4,))
        slow = _system(lat, omega, [2.0], norm, "dense", frustration=(0.4,))
        assert torch.allclose(drift(fast, theta), drift(slow, theta), atol=1e-13)


def test_degree_normalisation_and_isolated_nodes():
    import networkx as nx

    from lotsim.lattice import from_networkx

    g = nx.Graph([(0, 1), (0, 2)])
    g.add_node(3)  # isolated: rotates freely
    lat = from_networkx(g)
    sys_ = _system(lat, [0.0, 0.0, 0.0, 1.0], [1.0], "degree", "sparse")
    theta = torch.tensor([[0.0, 1.0, 0.5, 2.0]], dtype=F64)
    rhs = drift(sys_, theta)[0]
    assert rhs[0].item() == pytest.approx((math.sin(1.0) + math.sin(0.5)) / 2)
    assert rhs[1].item() == pytest.approx(math.sin(-1.0))
    assert rhs[3].item() == 1.0


# --------------------------------------------------------------------------- nonlocal coupling


def test_chimera_state_of_identical_oscillators_with_nonlocal_coupling():
    """Kuramoto & Battogtokh (2002): identical phase oscillators on a ring with the kernel
    G(x) = (kappa/2) exp(-kappa |x|) and lag alpha = 1.457 split into a phase-locked domain and a
    drifting one whose mean frequencies form an arch; without the lag the same start synchronises.
    The set-up of recipes/simulate/chimera_ring.toml (N = 256, kappa = 4)."""
    from lotsim.observables import effective_frequencies, frequency_clusters

    n, kappa = 256, 4.0
    lattice = build_lattice("ring", n=n, coupling_range=n / 2, weights="exp", lattice_constant=n / kappa)
    x = np.arange(n) / n - 0.5
    theta0 = 6 * np.random.default_rng(0).uniform(-0.5, 0.5, n) * np.exp(-30 * x**2)
    for alpha in (1.457, 0.0):
        system = _system(lattice, np.zeros(n), [kappa / (2 * n)], frustration=(alpha,))
        init, step = make_integrator(system, backend="numba", dt=0.05)
        state = step(init(torch.as_tensor(theta0[None])), 10_000)  # t = 500: past the transient
        frames = [state.theta]
        for _ in range(40):  # 40 frames over t = 100
            state = step(state, 50)
            frames.append(state.theta)
        theta = torch.stack(frames)[:, 0].numpy()
        omega_eff = effective_frequencies(theta, 2.5 * np.arange(41))
        clusters = frequency_clusters(omega_eff, tol=1e-2)  # the locked arc wobbles by ~3e-3
        locked = clusters.labels == np.argmax(np.bincount(clusters.labels))
        if alpha == 0.0:
            assert clusters.locked_fraction == 1.0
            continue
        # one contiguous locked arc around the ends of [-1/2, 1/2), the drifting domain in the middle
        assert 0.15 < clusters.locked_fraction < 0.6
        assert locked[0] and locked[-1] and not locked[n // 2]
        assert np.count_nonzero(np.diff(locked.astype(int))) == 2  # exactly two domain walls
        drift = omega_eff[~locked]
        omega_locked = omega_eff[locked].mean()
        assert np.all(np.abs(drift - omega_locked) > 2e-2)  # every other oscillator drifts
        # the arch: drifting frequencies are furthest from the locked one at the centre of their domain
        assert abs(omega_eff[n // 2] - omega_locked) > 0.8 * np.abs(drift - omega_locked).max()
        z = np.exp(1j * theta[-1])
        local = np.abs(np.convolve(np.concatenate([z[-4:], z, z[:4]]), np.ones(9) / 9, "valid"))
        assert np.median(local[locked]) > 0.99 and local[~locked].mean() < 0.8  # (windows of 9 nodes)


# --------------------------------------------------------------------------- model extensions


def test_sakaguchi_frustration_shifts_the_collective_frequency(backend):
    lat = build_lattice("complete", n=20)
    k, alpha = 1.0, 0.6
    sys_ = _system(lat, np.zeros(20), [k], "mean-field", frustration=(alpha,), device=backend.device)
    theta0 = 0.1 * np.random.default_rng(0).standard_normal((1, 20))
    state = _run(sys_, theta0, dt=0.01, steps=3000, backend=backend)
    velocity = drift(_system(lat, np.zeros(20), [k], "mean-field", frustration=(alpha,)), state.theta)
    # synchronised identical oscillators rotate at -K sin(alpha) (N-1)/N (no self-coupling)
    assert torch.allclose(velocity, torch.full_like(velocity, -k * math.sin(alpha) * 19 / 20), atol=1e-8)


def test_second_harmonic_two_cluster_state(backend):
    lat = build_lattice("complete", n=40)
    sys_ = _system(lat, np.zeros(40), [1.0], "mean-field", harmonics=(0.0, 1.0), device=backend.device)
    rng = np.random.default_rng(1)
    theta0 = np.where(np.arange(40) < 20, 0.0, math.pi) + 0.2 * rng.standard_normal(40)
    state = _run(sys_, theta0[None], dt=0.02, steps=2000, backend=backend)
    r1, _ = order_parameter(state.theta)
    r2, _ = order_parameter(state.theta, harmonic=2)
    assert r2.item() == pytest.approx(1.0, abs=1e-6)
    assert r1.item() < 1e-6


def test_lyapunov_potential_never_increases_for_identical_oscillators(backend):
    lat = build_lattice("square", shape=(6, 6))
    sys_ = _system(lat, np.zeros(36), [1.0], "none", device=backend.device)
    adjacency = torch.as_tensor(lat.adjacency().toarray())
    _, frames = _run(sys_, initial_phases(lat, "random", seed=3)[None], dt=0.01, steps=2000, record_every=20,
                     method="rk4", backend=backend)
    diff = frames[:, 0, None, :] - frames[:, 0, :, None]
    potential = -0.5 * (adjacency * torch.cos(diff)).sum((-1, -2))
    assert torch.all(potential[1:] - potential[:-1] <= 1e-10)


def test_inertial_model_locks_like_first_order(backend):
    lat = build_lattice("complete", n=2)
    sys_ = _system(lat, [-0.5, 0.5], [1.0], inertia=0.5, device=backend.device)
    state = _run(sys_, [[0.0, 0.0]], dt=0.01, steps=6000, backend=backend)
    assert (state.theta[0, 1] - state.theta[0, 0]).item() == pytest.approx(math.asin(0.5), abs=1e-6)
    assert state.velocity.abs().max().item() < 1e-6


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_noise_free_diffusion_variance(backend, method):
    n, d, dt, steps = 4000, 0.3, 0.01, 500
    lat = build_lattice("complete", n=n)
    sys_ = _system(lat, np.zeros(n), [0.0], noise=d, device=backend.device)
    state = _run(sys_, np.zeros((1, n)), dt=dt, steps=steps, method=method, seed=7, backend=backend)
    variance = state.theta.var().item()
    expected = 2 * d * dt * steps
    assert variance == pytest.approx(expected, rel=4 * math.sqrt(2 / n))


def test_noise_is_reproducible_and_resumable():
    lat = build_lattice("ring", n=16)
    sys_ = _system(lat, np.zeros(16), [1.0], noise=0.1)
    init, step = kuramoto_integrator(sys_, method="heun", dt=0.01, seed=11)
    s0 = init(torch.zeros(1, 16, dtype=F64))
    straight = step(s0, 100)
    split = step(init(step(s0, 37).theta, step=37), 63)
    assert torch.equal(straight.theta, split.theta)
    other_seed = kuramoto_integrator(sys_, method="heun", dt=0.01, seed=12).step_fn(s0, 100)
    assert not torch.equal(straight.theta, other_seed.theta)


def test_rk4_with_noise_is_refused():
    lat = build_lattice("ring", n=4)
    with pytest.raises(ValueError, match="heun"):
        kuramoto_integrator(_system(lat, np.zeros(4), [1.0], noise=0.1), method="rk4")


def test_float32_runs_and_stays_close_to_float64(backend):
    lat = build_lattice("square", shape=(8, 8))
    omega = natural_frequencies(64, "gaussian", seed=0)
    theta0 = initial_phases(lat, "random")[None]
    s64 = _run(_system(lat, omega, [1.0]), theta0, dt=0.01, steps=300).theta
    sys32 = _system(lat, omega, [1.0], device=backend.device, dtype=torch.float32)
    s32 = _run(sys32, theta0, dt=0.01, steps=300, backend=backend).theta
    assert s32.dtype == torch.float32
    assert torch.allclose(s32.double(), s64, atol=1e-4)
