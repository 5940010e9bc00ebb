"""Observables on known inputs with known answers (pure numpy, fast)."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from lotsim import observables as obs
from lotsim.analysis.theory import _self_consistency, critical_coupling, ott_antonsen_r, stationary_r
from lotsim.dynamics.initial import initial_phases
from lotsim.lattice import build_lattice


def test_uniform_random_phases_have_mean_r_squared_one_over_n():
    n, samples = 50, 20000
    theta = np.random.default_rng(0).uniform(0, 2 * math.pi, (samples, n))
    r, psi = obs.order_parameter(theta)
    assert r.shape == psi.shape == (samples,)
    # E[r^2] = 1/N exactly; sd of r^2 is about 1/N, so the mean of 20000 samples is within ~1%
    assert np.mean(r**2) == pytest.approx(1 / n, rel=0.03)


def test_perfect_sync_has_r_one_in_every_harmonic_and_one_locked_cluster():
    theta = np.full((3, 40), 1.234)
    assert np.allclose(obs.order_parameters(theta, 4), 1.0)
    assert np.allclose(obs.order_parameter(theta)[1], 1.234)
    clusters = obs.frequency_clusters(np.full(40, 0.7))
    assert clusters.locked_fraction == 1.0 and list(clusters.sizes) == [40]
    assert clusters.frequencies[0] == pytest.approx(0.7)


def test_two_antiphase_clusters_have_r1_zero_and_r2_one():
    theta = np.concatenate([np.full(20, 0.3), np.full(20, 0.3 + math.pi)])
    r = obs.order_parameters(theta, 3)
    assert r[0] == pytest.approx(0.0, abs=1e-12)
    assert r[1] == pytest.approx(1.0)
    assert r[2] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("q", [-2, 0, 1, 3])
def test_twisted_ring_has_r_zero_and_winding_q(q):
    n = 60
    lattice = build_lattice("ring", n=n)
    theta = initial_phases(lattice, "twisted", twist=q) + 0.7
    noisy = theta + np.random.default_rng(1).normal(0, 0.05, n)
    assert obs.winding_number(np.stack([theta, noisy])).tolist() == [q, q]
    if q != 0:
        assert obs.order_parameter(theta)[0] == pytest.approx(0.0, abs=1e-12)
    # unwrapped phases that grew by whole turns keep the winding number
    assert obs.winding_number(theta + 2 * math.pi * (np.arange(n) % 3)) == q
    # local order of a q-twist: neighbour average of e^{i theta_{j +- 1}} = e^{i theta_j} cos(2 pi q / n)
    adjacency = obs.adjacency_matrix(lattice.senders, lattice.receivers, None, n)
    assert np.allclose(obs.local_order_parameter(theta, adjacency), abs(math.cos(2 * math.pi * q / n)))


def test_single_vortex_on_an_open_square_grid():
    lattice = build_lattice("square", shape=(12, 12), periodic=False)
    theta = initial_phases(lattice, "vortex")
    faces, centres = obs.square_plaquettes(lattice.shape, periodic=False)
    assert faces.shape == (121, 4)
    charges = obs.face_charges(theta, faces)
    assert (charges == 1).sum() == 1 and (charges == -1).sum() == 0
    assert np.allclose(centres[charges == 1][0], lattice.positions.mean(axis=0), atol=0.5)
    antivortex = obs.face_charges(-theta, faces)
    assert (antivortex == -1).sum() == 1 and (antivortex == 1).sum() == 0
    # the generic planar-face finder agrees with the explicit plaquettes
    generic, _ = obs.planar_faces(lattice.positions, lattice.senders, lattice.receivers)
    assert generic.shape == (121, 4) and (obs.face_charges(theta, generic) == 1).sum() == 1


def test_net_charge_on_a_torus_is_zero():
    lattice = build_lattice("square", shape=(10, 10), periodic=True)
    theta = np.random.default_rng(3).uniform(0, 2 * math.pi, (5, lattice.n))
    faces, _ = obs.square_plaquettes(lattice.shape, periodic=True)
    charges = obs.face_charges(theta, faces)
    assert charges.shape == (5, 100)
    assert np.all(charges.sum(axis=-1) == 0) and np.all((charges != 0).sum(axis=-1) > 0)


@pytest.mark.parametrize(("topology", "shape"), [("triangular", (8, 12)), ("hexagonal", (5, 6))])
def test_vortex_on_triangular_and_hexagonal_lattices(topology, shape):
    lattice = build_lattice(topology, shape=shape, periodic=False)
    faces, _ = obs.planar_faces(lattice.positions, lattice.senders, lattice.receivers)
    if topology == "triangular":
        assert faces.shape == (sum(nx.triangles(nx.Graph(lattice.to_networkx())).values()) // 3, 3)
    else:
        assert faces.shape == (shape[0] * shape[1], 6)
    charges = obs.face_charges(initial_phases(lattice, "vortex"), faces)
    assert (charges == 1).sum() == 1 and (charges == -1).sum() == 0


def test_effective_frequencies_are_exact_for_uniform_rotation():
    times = np.linspace(0.0, 7.0, 29)
    omega = np.array([[0.3, -1.2, 2.5], [0.0, 1e-3, -4.0]])
    theta = 5.0 + omega[None] * times[:, None, None]
    for method in ("fit", "endpoints"):
        assert np.allclose(obs.effective_frequencies(theta, times, method), omega, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="two frames"):
        obs.effective_frequencies(theta[:1], times[:1])


def test_frequency_clusters_split_at_gaps_larger_than_tol():
    omega_eff = np.array([1.0, 1.001, 0.999, -2.0, -2.0005, 5.0])
    c = obs.frequency_clusters(omega_eff, tol=0.01)
    assert list(c.sizes) == [3, 2]
    assert np.allclose(c.frequencies, [1.0, -2.00025])
    assert c.locked_fraction == pytest.approx(0.5)
    assert c.labels[0] == c.labels[1] == c.labels[2] != c.labels[3]
    assert obs.frequency_clusters(np.arange(5.0), tol=0.5).locked_fraction == 0.0


def test_a_chain_of_drifting_frequencies_is_not_a_locked_cluster():
    """Partial sync / chimera: a locked group beside a continuum of drifters spaced below tol."""
    locked = 1.0 + 1e-4 * np.linspace(-1, 1, 30)
    drifting = 1.008 + np.arange(120) * 0.004  # gaps 0.004 < tol (0.0079 to the locked group), span 0.48
    c = obs.frequency_clusters(np.concatenate([drifting, locked]), tol=0.01)
    assert c.sizes[0] == 30 and c.frequencies[0] == pytest.approx(1.0)
    assert c.locked_fraction == pytest.approx(30 / 150)
    assert np.all(c.widths <= 0.01)
    assert len(set(c.labels[120:])) == 1 and c.labels[120] not in c.labels[:120]
    grid = obs.frequency_clusters(np.arange(200) * 0.004, tol=0.01)  # evenly spaced drifters
    assert grid.sizes.max() <= 3 and np.all(grid.widths <= 0.01)  # only neighbours within tol group up
    odd = obs.frequency_clusters(np.array([0.0, 0.0, np.nan, 1.0]), tol=0.01)
    assert list(odd.sizes) == [2] and len(set(odd.labels)) == 3


def test_susceptibility():
    assert obs.susceptibility(np.full(50, 0.4), n=100) == pytest.approx(0.0, abs=1e-12)
    r = np.array([[0.1, 0.5], [0.3, 0.5]])
    assert np.allclose(obs.susceptibility(r, n=10), [10 * 0.01, 0.0])


def test_detect_transient_of_an_exponential_relaxation():
    times = np.linspace(0, 40, 801)
    noise = np.random.default_rng(0).normal(0, 0.002, times.size)
    r = 0.5 + 0.5 * np.exp(-times) + noise
    start = obs.detect_transient(r, times)
    # the band is max(3 sd, 0.01) = 0.01; 0.5 e^{-t} < 0.01 from t = 3.9 on (the running mean lags a little)
    assert 3.5 <= times[start] <= 6.0
    assert obs.detect_transient(0.3 + noise, times) == 0
    assert obs.detect_transient(np.array([0.2]), np.array([0.0])) == 0


def test_potential_on_the_complete_graph_matches_the_edge_sum():
    n, coupling = 12, 1.7
    lattice = build_lattice("complete", n=n)
    theta = np.random.default_rng(2).uniform(0, 2 * math.pi, (3, n))
    edge_sum = obs.lyapunov_potential(theta, lattice.senders, lattice.receivers,
                                      coupling / n * np.ones(lattice.num_edges), harmonics=(1.0, 0.5))
    closed = obs.lyapunov_potential_complete(theta, coupling, harmonics=(1.0, 0.5))
    assert np.allclose(edge_sum, closed)
    assert obs.lyapunov_potential_complete(np.zeros(n), coupling) == pytest.approx(-0.5 * coupling * (n - 1))
    assert np.allclose(obs.local_order_parameter_complete(theta),
                       obs.local_order_parameter(theta, lattice.adjacency()))


def test_potential_never_increases_for_identical_frequencies_on_a_symmetric_lattice():
    lattice = build_lattice("square", shape=(6, 6), periodic=True)
    senders, receivers, w = lattice.senders, lattice.receivers, 0.8 * lattice.weights  # W = K A (none)
    theta = np.random.default_rng(4).uniform(0, 2 * math.pi, lattice.n)
    values = []
    for _ in range(400):  # explicit Euler of the gradient flow, small dt
        values.append(float(obs.lyapunov_potential(theta, senders, receivers, w)))
        force = np.bincount(receivers, weights=w * np.sin(theta[senders] - theta[receivers]), minlength=lattice.n)
        theta = theta + 0.02 * force
    assert np.all(np.diff(values) <= 1e-12) and values[-1] < values[0]


def test_theory_critical_couplings_and_self_consistency():
    assert critical_coupling("lorentzian", 0.5) == 1.0
    assert critical_coupling("gaussian", 1.0) == pytest.approx(1.5958, abs=1e-4)
    assert critical_coupling("uniform", 1.0) == pytest.approx(4 / math.pi)
    k = np.array([0.5, 1.0, 1.5, 3.0])
    assert np.allclose(stationary_r(k, "lorentzian", 0.5), [0, 0, math.sqrt(1 / 3), math.sqrt(2 / 3)])
    # the quadrature of the self-consistency integral reproduces the Lorentzian closed form
    assert _self_consistency(math.sqrt(1 - 1 / 1.5), 1.5, "lorentzian", 0.5) == pytest.approx(1.0, abs=1e-9)
    for dist in ("gaussian", "uniform"):
        r = stationary_r(2.0, dist, 1.0)
        assert 0 < r < 1 and _self_consistency(float(r), 2.0, dist, 1.0) == pytest.approx(1.0, abs=1e-9)
    # uniform: first-order jump to r = pi/4 at K_c
    assert stationary_r(critical_coupling("uniform", 1.0) * 1.0001, "uniform", 1.0) == pytest.approx(math.pi / 4,
                                                                                                      abs=0.01)


def test_ott_antonsen_solution_solves_its_ode():
    t = np.linspace(0, 10, 2001)
    for coupling in (0.6, 1.0, 2.0):
        r = ott_antonsen_r(t, coupling, 0.5, 0.3)
        drdt = np.gradient(r, t)
        assert np.allclose(drdt, -0.5 * r + 0.5 * coupling * r * (1 - r**2), atol=1e-4)
    assert ott_antonsen_r(np.array([1e4]), 2.0, 0.5, 0.1)[0] == pytest.approx(math.sqrt(0.5))


def test_random_phases_put_a_defect_on_one_plaquette_in_three():
    # four independent uniform phases around a square wind by +-1 with probability 1/6 each
    faces, _ = obs.square_plaquettes((100, 100), periodic=True)
    charges = obs.face_charges(np.random.default_rng(5).uniform(0, 2 * math.pi, (4, 10000)), faces)
    assert (charges == 1).mean() == pytest.approx(1 / 6, abs=0.01)
    assert (charges == -1).mean() == pytest.approx(1 / 6, abs=0.01)


def test_drifters_with_nearby_natural_frequencies_are_not_locked_clusters():
    """Below K_c a dense Lorentzian population has many neighbours within tol by chance: they drift at
    their own frequencies side by side (omega_eff ~ omega), which the coupling did not cause."""
    rng = np.random.default_rng(0)
    omega = 0.5 * np.tan(np.pi * (rng.random(1000) - 0.5))  # Lorentzian, gamma 0.5
    drifting = obs.frequency_clusters(omega * 0.98, tol=0.01)  # incoherent: each near its own frequency
    assert drifting.sizes.size > 100  # what a frequency-only rule calls "locked clusters"
    judged = obs.frequency_clusters(omega * 0.98, tol=0.01, omega=omega)
    assert judged.sizes.size == 0 and judged.locked_fraction == 0.0 and judged.coincident == drifting.sizes.size
    locked = np.where(np.abs(omega) < 0.3, 0.0, omega * 0.98)  # a core pulled to the mean frequency
    core = obs.frequency_clusters(locked, tol=0.01, omega=omega)
    assert core.sizes[0] == np.sum(np.abs(omega) < 0.3) and core.locked_fraction == pytest.approx(core.sizes[0] / 1000)
    same = obs.frequency_clusters(np.zeros(50), tol=0.01, omega=np.full(50, 0.3))  # identical: all count
    assert list(same.sizes) == [50] and same.coincident == 0
