"""Error-controlled integration (dopri5, dop853) on the torch reference and the numba kernel.

The physics tests of ``test_dynamics.py`` that use the deterministic RK4 run here once more on the
adaptive pairs (a tight tolerance, ``dt`` as the time grid): they have to pass the same physics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import test_dynamics as physics
import torch
from test_dynamics import Backend, _run, _system

from lotsim.dynamics import KuramotoSystem, build_operator, kuramoto_integrator, make_integrator
from lotsim.dynamics.adaptive import TABLEAUX, AdaptiveControl, step_factor
from lotsim.dynamics.initial import initial_phases, natural_frequencies
from lotsim.lattice import build_lattice

F64 = torch.float64


class Adaptive(Backend):
    """A backend whose deterministic RK4 runs are replaced by an adaptive pair at a tight tolerance."""

    tol = 1e-11

    def __init__(self, name: str, method: str = "dopri5"):
        super().__init__(name)
        self.method = method

    def __repr__(self) -> str:
        return f"{self.name}-{self.method}"

    def integrator(self, system, *, method="rk4", dt=0.01, seed=0):
        if method != "rk4":
            pytest.skip("only the deterministic RK4 runs have an adaptive twin")
        return make_integrator(system, backend=self.name, method=self.method, dt=dt, rtol=self.tol, atol=self.tol)


@pytest.fixture(params=[("torch", "dopri5"), ("numba", "dopri5"), ("numba", "dop853")], ids=lambda p: "-".join(p))
def adaptive(request) -> Adaptive:
    return Adaptive(*request.param)


def _problem(b: int = 1, n_side: int = 8, seed: int = 0):
    lat = build_lattice("square", shape=(n_side, n_side), periodic=True)
    omega = natural_frequencies(lat.n, "gaussian", width=1.0, seed=seed)
    theta0 = np.stack([initial_phases(lat, "random", seed=seed + 1 + i) for i in range(b)])
    couplings = np.linspace(0.5, 2.0, b)
    return lat, omega, theta0, couplings


# --------------------------------------------------------------------------- the physics, once more


@pytest.mark.parametrize("delta_omega", [0.5, 1.9])
def test_two_oscillators_lock_at_arcsin(adaptive, delta_omega):
    physics.test_two_oscillators_lock_at_arcsin(adaptive, delta_omega)


def test_two_oscillators_beat_frequency(adaptive):
    physics.test_two_oscillators_beat_frequency_above_locking(adaptive, 2.5)


def test_free_rotation_is_exact(adaptive):
    physics.test_free_rotation_is_exact_at_zero_coupling(adaptive)


def test_batched_couplings_equal_runs_one_by_one(adaptive):
    physics.test_batched_couplings_equal_runs_one_by_one(adaptive)


def test_frustration_harmonics_lyapunov_inertia(adaptive):
    physics.test_sakaguchi_frustration_shifts_the_collective_frequency(adaptive)
    physics.test_second_harmonic_two_cluster_state(adaptive)
    physics.test_lyapunov_potential_never_increases_for_identical_oscillators(adaptive)
    physics.test_inertial_model_locks_like_first_order(adaptive)


@pytest.mark.slow
def test_lorentzian_order_parameter_matches_closed_form():
    physics.test_lorentzian_order_parameter_matches_closed_form(Adaptive("numba"))


# --------------------------------------------------------------------------- the method itself


def _fixed_step(tab, f, y, h, steps):
    """``steps`` steps of size h with the pair's propagated (5th) and embedded (4th order) solutions."""
    hi = lo = y
    for _ in range(steps):
        for which, weights in (("hi", tab.b), ("lo", tab.b - tab.e)):
            y0 = hi if which == "hi" else lo
            ks = []
            for s in range(len(tab.c)):
                ks.append(f(y0 + h * sum(a * k for a, k in zip(tab.a[s, :s], ks))))
            y1 = y0 + h * sum(w * k for w, k in zip(weights, ks))
            hi, lo = (y1, lo) if which == "hi" else (hi, y1)
    return hi, lo


def test_dopri5_tableau_orders_are_5_and_4():
    """Global error ratios at fixed steps h and h/2: 2^5 for the solution, 2^4 for the embedded one
    (dopri5's 5th-order error constants are small, so the asymptotic ratio needs h <= 0.0125 here)."""
    lat = build_lattice("ring", n=8)
    omega = natural_frequencies(8, "gaussian", width=1.0, seed=1)
    theta0 = initial_phases(lat, "random", seed=2)[None]
    system = _system(lat, omega, [1.5], frustration=(0.3,), harmonics=(1.0, 0.4))

    def f(y):
        return physics.drift(system, y)

    tab = TABLEAUX["dopri5"]
    reference = _fixed_step(tab, f, torch.as_tensor(theta0), 0.002, 1000)[0]  # error ~1e-15
    errors = []
    for h in (0.0125, 0.00625):
        hi, lo = _fixed_step(tab, f, torch.as_tensor(theta0), h, round(2.0 / h))
        errors.append(((hi - reference).abs().max().item(), (lo - reference).abs().max().item()))
    assert math.log2(errors[0][0] / errors[1][0]) == pytest.approx(5, abs=0.25)
    assert math.log2(errors[0][1] / errors[1][1]) == pytest.approx(4, abs=0.15)
    assert np.sum(tab.b) == pytest.approx(1) and np.allclose(tab.a.sum(1), tab.c)


def test_dop853_is_scipys_dop853_and_of_order_8():
    """One step equals scipy's DOP853 step (same coefficients); the global error ratio for h -> h/2 is
    2^8 or better and the local one about 2^9."""
    from scipy.integrate import solve_ivp

    lat = build_lattice("ring", n=8)
    omega = natural_frequencies(8, "gaussian", width=1.0, seed=1)
    theta0 = torch.as_tensor(initial_phases(lat, "random", seed=2)[None])
    system = _system(lat, omega, [1.5], frustration=(0.3,), harmonics=(1.0, 0.4))

    def f(y):
        return physics.drift(system, y)

    tab = TABLEAUX["dop853"]
    one = solve_ivp(lambda t, y: f(torch.as_tensor(y)[None])[0].numpy(), (0.0, 0.1), theta0[0].numpy(),
                    method="DOP853", first_step=0.1, rtol=1e3, atol=1e3)
    assert one.t.shape == (2,)  # a single step
    assert np.abs(_fixed_step(tab, f, theta0, 0.1, 1)[0][0].numpy() - one.y[:, -1]).max() < 1e-14
    reference = _fixed_step(tab, f, theta0, 0.01, 200)[0]
    glob = [(_fixed_step(tab, f, theta0, h, round(2.0 / h))[0] - reference).abs().max().item() for h in (0.2, 0.1)]
    assert math.log2(glob[0] / glob[1]) > 7.8
    local = []
    for h in (0.2, 0.1):
        fine = _fixed_step(tab, f, theta0, h / 50, 50)[0]
        local.append((_fixed_step(tab, f, theta0, h, 1)[0] - fine).abs().max().item())
    assert math.log2(local[0] / local[1]) == pytest.approx(9, abs=0.5)


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_error_follows_the_tolerance_and_meets_rk4(backend, method):
    """The global error falls with the tolerance (about proportionally) and, at a tight tolerance,
    dopri5 agrees with a fine-step RK4 to 1e-10."""
    lat, omega, theta0, couplings = _problem(b=2)
    system = _system(lat, np.broadcast_to(omega, (2, lat.n)), couplings)
    rk4 = kuramoto_integrator(system, method="rk4", dt=2e-3)
    y_ref = rk4.step_fn(rk4.init_fn(torch.as_tensor(theta0)), 2500).theta  # t = 5
    errors = {}
    for tol in (1e-5, 1e-7, 1e-9, 1e-12):
        integ = make_integrator(system, backend=backend, method=method, dt=0.5, rtol=tol, atol=tol)
        assert integ.backend == backend
        state = integ.step_fn(integ.init_fn(torch.as_tensor(theta0)), 10)
        errors[tol] = (state.theta - y_ref).abs().max().item()
        assert errors[tol] < 100 * tol + 1e-10
        assert state.control.error.max() >= 0.1 * errors[tol]  # the recorded estimate is not optimistic
    assert errors[1e-5] > 20 * errors[1e-7] > 400 * errors[1e-9]
    assert errors[1e-12] < 1e-10


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_numba_matches_the_torch_reference(method):
    lat, omega, theta0, couplings = _problem(b=3)
    system = _system(lat, np.broadcast_to(omega, (3, lat.n)), couplings, harmonics=(1.0, 0.3),
                     frustration=(0.2, 0.1), inertia=0.4)
    states = {}
    for backend in ("torch", "numba"):
        integ = make_integrator(system, backend=backend, method=method, dt=0.25, rtol=1e-8, atol=1e-8)
        state = integ.init_fn(torch.as_tensor(theta0))
        for _ in range(8):
            state = integ.step_fn(state, 2)
        states[backend] = state
    t, n = states["torch"], states["numba"]
    assert np.array_equal(t.control.accepted, n.control.accepted)
    assert np.array_equal(t.control.rejected, n.control.rejected)
    assert torch.allclose(t.theta, n.theta, rtol=0, atol=1e-11)
    assert torch.allclose(t.velocity, n.velocity, rtol=0, atol=1e-11)
    assert t.step == n.step == 16


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_frames_land_on_the_grid_and_resume_repeats_the_steps(backend):
    """step_fn advances exactly n * dt; a state rebuilt from the checkpoint arrays continues bitwise."""
    lat, omega, theta0, couplings = _problem(b=2)
    system = _system(lat, np.broadcast_to(omega, (2, lat.n)), couplings)
    integ = make_integrator(system, backend=backend, method="dopri5", dt=0.1, rtol=1e-6, atol=1e-6)
    s0 = integ.init_fn(torch.as_tensor(theta0))
    straight = integ.step_fn(integ.step_fn(s0, 7), 5)
    half = integ.step_fn(s0, 7)
    control = AdaptiveControl.from_arrays({k: v.copy() for k, v in half.control.to_arrays().items()})
    resumed = integ.step_fn(integ.init_fn(half.theta.clone(), step=half.step, control=control), 5)
    assert resumed.step == straight.step == 12
    assert torch.equal(resumed.theta, straight.theta)
    assert np.array_equal(resumed.control.accepted, straight.control.accepted)
    # one call of 12 grid steps lands on the same time (different steps, same solution to the tolerance)
    once = integ.step_fn(s0, 12)
    assert torch.allclose(once.theta, straight.theta, atol=1e-5)
    assert (half.control.h > 0).all() and (s0.control is None)


def test_step_factor_is_the_pi_controller():
    order = 5
    assert step_factor(0.0, 1e-4, order, False) == 10.0  # no error: the largest growth
    assert step_factor(1e6, 1e-4, order, False) == 0.2  # rejected: the largest cut
    assert step_factor(float("nan"), 1e-4, order, False) == 0.2
    assert step_factor(0.5, 0.5, order, True) <= 1.0  # no growth right after a rejection
    expo = 1 / order - 0.75 * 0.04
    assert step_factor(0.5, 0.25, order, False) == pytest.approx(0.9 * 0.5 ** -expo * 0.25 ** 0.04)


def test_refusals():
    lat = build_lattice("ring", n=4)
    noisy = _system(lat, np.zeros(4), [1.0], noise=0.1)
    with pytest.raises(ValueError, match="heun"):
        kuramoto_integrator(noisy, method="dopri5")
    quiet = _system(lat, np.zeros(4), [1.0])
    with pytest.raises(ValueError, match="rtol"):
        kuramoto_integrator(quiet, method="dopri5", rtol=-1.0)
    with pytest.raises(ValueError, match="both be 0"):
        kuramoto_integrator(quiet, method="dopri5", rtol=0.0, atol=0.0)


def test_blow_up_poisons_the_state_instead_of_hanging():
    lat = build_lattice("ring", n=4)
    system = KuramotoSystem(torch.tensor([float("nan"), 0, 0, 0], dtype=F64), torch.ones(1, 1, dtype=F64),
                            build_operator(lat, "none"))
    for backend in ("torch", "numba"):
        integ = make_integrator(system, backend=backend, method="dopri5", dt=0.1)
        state = integ.step_fn(integ.init_fn(torch.zeros(1, 4, dtype=F64)), 3)
        assert not torch.isfinite(state.theta).all()


def test_run_and_backend_records():
    """A short state of the run helper keeps working with dopri5 (_run drops the controller)."""
    lat, omega, theta0, couplings = _problem()
    system = _system(lat, omega, [1.0])
    state = _run(system, theta0, dt=0.1, steps=3, backend=Adaptive("torch"))
    assert state.step == 3


# --------------------------------------------------------------------------- through the simulator


def test_simulate_with_tolerances_stores_frames_on_the_grid_and_the_step_counts(tmp_path):
    import h5py
    from typer.testing import CliRunner

    from lotsim.cli import app
    from lotsim.io import open_trajectory

    out = tmp_path / "run.h5"
    args = ["simulate", "--topology", "square", "--shape", "8x8", "--coupling", "0:2:3", "--t-max", "3",
            "--dt", "0.1", "--save-every", "5", "--rtol", "1e-8", "--atol", "1e-9", "--backend", "torch",
            "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_trajectory(out) as traj:
        assert np.array_equal(traj.times, 0.5 * np.arange(7))
        assert 'integrator = "dopri5"' in traj.recipe_toml and "rtol = 1e-08" in traj.recipe_toml
    with h5py.File(out) as f:
        extra = f["lotsim/state/extra"]
        assert extra["adaptive_accepted"].shape == (3,) and (extra["adaptive_accepted"][()] > 0).all()
        assert extra["adaptive_rejected"].shape == (3,) and extra["adaptive_error"].shape == (3,)
    bad = CliRunner().invoke(app, args[:-3] + ["--integrator", "rk4", "--out", str(tmp_path / "b.h5")])
    assert bad.exit_code == 2 and "dopri5" in bad.output and "Traceback" not in bad.output


def test_interrupted_adaptive_run_resumes_bit_identically(tmp_path):
    from lotsim.config import SimulationRecipe, load_recipe
    from lotsim.io import open_trajectory
    from lotsim.simulation import SimulationInterrupted, run_simulation

    recipe = load_recipe(SimulationRecipe, updates={
        "lattice.topology": "ring", "lattice.n": 32, "dynamics.t_max": 20.0, "dynamics.dt": 0.1,
        "dynamics.coupling": [0.5, 1.5], "dynamics.integrator": "dopri5", "dynamics.rtol": 1e-7,
        "output.save_every": 2, "dynamics.backend": "numba"})

    def stop(step, total):
        if step == 120:
            raise KeyboardInterrupt

    with pytest.raises(SimulationInterrupted):
        run_simulation(recipe, tmp_path / "cut.h5", progress=stop)
    run_simulation(recipe, tmp_path / "cut.h5", resume=True)
    run_simulation(recipe, tmp_path / "straight.h5")
    with open_trajectory(tmp_path / "cut.h5") as a, open_trajectory(tmp_path / "straight.h5") as b:
        assert np.array_equal(a.steps, b.steps)
        assert np.array_equal(a.phase[()], b.phase[()])
