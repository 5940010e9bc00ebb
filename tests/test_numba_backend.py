"""The numba backend against the torch reference (brian2-style backend parity), plus its own contract.

Sizes are tiny so the suite stays fast; the kernel is compiled once per dtype (cached on disk).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from lotsim.dynamics import (  # noqa: E402
    DenseOperator,
    KuramotoSystem,
    MeanFieldOperator,
    OscillatorState,
    build_operator,
    kuramoto_integrator,
    make_integrator,
)
from lotsim.dynamics import numba_backend as nb  # noqa: E402
from lotsim.dynamics import numba_kernels as kernels  # noqa: E402
from lotsim.lattice import build_lattice  # noqa: E402

F64 = torch.float64
STEPS = 200


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reference runs tiny tensors, where torch's thread pool only adds overhead (and on a busy
    2-core machine, a lot of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _system(layout="neighbours", *, b=2, coupling=None, dtype=F64, lattice=None, **kw) -> KuramotoSystem:
    lattice = lattice or (build_lattice("complete", n=40) if layout == "mean-field"
                          else build_lattice("square", shape=(20, 20)))
    g = torch.Generator().manual_seed(1)
    omega = torch.randn(lattice.n, generator=g, dtype=dtype)
    if coupling is None:
        coupling = torch.linspace(1.0, 3.0, b, dtype=dtype).reshape(b, 1)
    op = build_operator(lattice, "degree" if layout != "mean-field" else "mean-field", layout=layout, dtype=dtype)
    return KuramotoSystem(omega, coupling, op, **kw)


def _theta0(system, b=2, dtype=F64, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, system.operator.n, generator=g, dtype=dtype) * 2 * math.pi).to(dtype)


def _both(system, theta0, *, method="rk4", steps=STEPS, dt=0.01, seed=0, velocity=None):
    out = []
    for module in (nb, None):
        integ = (module.kuramoto_integrator if module else kuramoto_integrator)(system, method=method, dt=dt,
                                                                                 seed=seed)
        out.append(integ.step_fn(integ.init_fn(theta0, velocity), steps))
    return out


def _close(a: OscillatorState, b: OscillatorState, atol=1e-12):
    assert a.step == b.step
    assert a.theta.dtype == b.theta.dtype and a.theta.shape == b.theta.shape
    torch.testing.assert_close(a.theta, b.theta, atol=atol, rtol=0)
    if b.velocity is not None:
        torch.testing.assert_close(a.velocity, b.velocity, atol=atol, rtol=0)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("layout", ["neighbours", "sparse", "mean-field"])
def test_parity_every_method_and_layout(method, layout):
    system = _system(layout)
    assert nb.supports(system)
    fast, ref = _both(system, _theta0(system), method=method)
    _close(fast, ref)


def test_parity_harmonics_frustration_and_ring():
    system = _system("neighbours", harmonics=(1.0, 0.4, -0.2), frustration=(0.3, -0.5, 1.1),
                     lattice=build_lattice("ring", n=50))
    _close(*_both(system, _theta0(system)))
    mf = _system("mean-field", harmonics=(1.0, 0.5), frustration=(0.2,))
    _close(*_both(mf, _theta0(mf)))


@pytest.mark.parametrize("layout", ["neighbours", "sparse"])
def test_parity_irregular_graph_with_weights(layout):
    lattice = build_lattice("small-world", n=200, k=4, p=0.2, seed=3)
    rng = np.random.default_rng(5)
    lattice = lattice.with_edge_weights(rng.uniform(0.5, 1.5, lattice.num_edges))
    system = _system(layout, lattice=lattice)
    _close(*_both(system, _theta0(system)))


@pytest.mark.parametrize("method", ["heun", "rk4"])
def test_parity_inertia(method):
    system = _system("neighbours", inertia=0.5)
    g = torch.Generator().manual_seed(3)
    velocity = torch.randn(2, system.operator.n, generator=g, dtype=F64)
    _close(*_both(system, _theta0(system), method=method, velocity=velocity))


@pytest.mark.parametrize("shape", ["scalar", "replica", "node", "replica-node"])
def test_parity_coupling_shapes(shape):
    n = 400
    g = torch.Generator().manual_seed(4)
    coupling = {"scalar": torch.tensor(2.0, dtype=F64), "replica": torch.tensor([[1.0], [2.5]], dtype=F64),
                "node": torch.rand(n, generator=g, dtype=F64) * 3,
                "replica-node": torch.rand(2, n, generator=g, dtype=F64) * 3}[shape]
    system = _system("sparse", coupling=coupling)
    _close(*_both(system, _theta0(system)))


def test_parity_float32():
    system = _system("neighbours", dtype=torch.float32)
    fast, ref = _both(system, _theta0(system, dtype=torch.float32), steps=100)
    assert fast.theta.dtype == torch.float32
    torch.testing.assert_close(fast.theta, ref.theta, atol=2e-4, rtol=0)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_noise_uses_the_same_increments(method, monkeypatch):
    system = _system("neighbours", noise=0.2)
    theta0 = _theta0(system)
    monkeypatch.setattr(nb, "_NOISE_CHUNK_BYTES", 3 * 2 * 400 * 8)  # several chunks of 3 steps
    fast, ref = _both(system, theta0, method=method, steps=50, seed=7)
    _close(fast, ref)
    # the stream is counter based: 20 + 30 steps equal 50 steps, and resumes agree
    integ = nb.kuramoto_integrator(system, method=method, dt=0.01, seed=7)
    split = integ.step_fn(integ.step_fn(integ.init_fn(theta0), 20), 30)
    torch.testing.assert_close(split.theta, fast.theta, atol=0, rtol=0)


def test_noise_with_inertia():
    system = _system("mean-field", noise=0.1, inertia=0.3)
    _close(*_both(system, _theta0(system), method="heun", steps=60, seed=3))


def test_batched_equals_looped_bitwise():
    system = _system("neighbours", b=3)
    theta0 = _theta0(system, b=3)
    integ = nb.kuramoto_integrator(system, dt=0.01)
    batched = integ.step_fn(integ.init_fn(theta0), 100).theta
    for r in range(3):
        single = KuramotoSystem(system.omega, system.coupling[r:r + 1], system.operator)
        one = nb.kuramoto_integrator(single, dt=0.01)
        assert torch.equal(one.step_fn(one.init_fn(theta0[r:r + 1]), 100).theta[0], batched[r])


@pytest.mark.parametrize("layout", ["neighbours", "mean-field"])
def test_thread_layouts_and_lattice_runs_are_bitwise_equal(layout, monkeypatch):
    """Replica-parallel, node-parallel, segmented and gather-only runs sum the same terms in the same order."""
    system = _system(layout, b=2)
    theta0 = _theta0(system)

    def run():
        integ = nb.kuramoto_integrator(system, dt=0.01)
        return integ.step_fn(integ.init_fn(theta0), 50).theta

    by_replica = run()
    monkeypatch.setattr(nb, "_PARALLEL_MIN_NODES", 0)
    monkeypatch.setattr(nb, "_CHUNK_MIN", 1)
    monkeypatch.setattr(nb.numba, "get_num_threads", lambda: 4)  # b % threads != 0: two candidate layouts
    monkeypatch.setattr(nb.LayoutTuner, "plan", lambda self, layouts, remaining: ("nodes", min(remaining, 7)))
    assert torch.equal(run(), by_replica)  # node-parallel, several chunks, in segments of 7 steps
    monkeypatch.setattr(nb, "operator_arrays", functools.partial(kernels.operator_arrays, runs=False))
    assert torch.equal(run(), by_replica)


@pytest.mark.parametrize("lattice", [build_lattice("square", shape=(24, 24)), build_lattice("chain", n=40),
                                     build_lattice("random-regular", n=60, degree=3),
                                     build_lattice("small-world", n=200, k=4, p=0.05)])
def test_lattice_runs_cover_every_node(lattice):
    index, weight = lattice.neighbour_table()
    n_blocks = -(-lattice.n // kernels._BLOCK)
    pieces, block_pieces, offset, run_weight = kernels._lattice_runs(index.astype(np.uint32), weight, n_blocks)
    assert pieces[0, 0] == 0 and pieces[-1, 1] == lattice.n and np.all(pieces[1:, 0] == pieces[:-1, 1])
    runs = pieces[:, 2][pieces[:, 2] >= 0]
    assert np.array_equal(runs, np.arange(offset.shape[0]))
    assert np.all(pieces[pieces[:, 2] >= 0, 1] - pieces[pieces[:, 2] >= 0, 0] >= kernels._MIN_RUN)
    assert not np.any((pieces[1:, 2] == -1) & (pieces[:-1, 2] == -1))  # short runs are merged
    for lo, hi, run in pieces:  # a run's rows are translates of its first row, with its weights
        if run >= 0:
            expect = np.arange(lo, hi)[:, None] + offset[run].view(np.int64)[None]
            assert np.array_equal(index[lo:hi], expect) and np.all(weight[lo:hi] == run_weight[run])
    for blk, (first, stop) in enumerate(block_pieces):  # every block's nodes are in its pieces
        lo, hi = blk * kernels._BLOCK, min((blk + 1) * kernels._BLOCK, lattice.n)
        assert pieces[first, 0] <= lo and pieces[stop - 1, 1] >= hi


def test_free_rotation_is_exact():
    system = _system("neighbours", coupling=torch.tensor(0.0, dtype=F64))
    theta0 = _theta0(system)
    integ = nb.kuramoto_integrator(system, dt=0.01)
    state = integ.step_fn(integ.init_fn(theta0), 300)
    torch.testing.assert_close(state.theta, theta0 + system.omega * 3.0, atol=1e-12, rtol=0)


def test_large_phases_take_libm():
    system = _system("neighbours")
    theta0 = _theta0(system) + 3e6  # beyond the fast sincos's reduction range
    fast, ref = _both(system, theta0, steps=20)
    torch.testing.assert_close(fast.theta, ref.theta, atol=1e-8, rtol=0)


def test_supports_and_fallbacks():
    system = _system("neighbours")
    assert nb.supports(system)
    assert not nb.supports(KuramotoSystem(system.omega, system.coupling, DenseOperator(torch.eye(400, dtype=F64))))
    assert not nb.supports(KuramotoSystem(system.omega.requires_grad_(False).clone().requires_grad_(True),
                                          system.coupling, system.operator))
    assert not nb.supports(KuramotoSystem(system.omega.half(), system.coupling, system.operator))
    coo = build_operator(build_lattice("ring", n=8), "none", layout="sparse")
    coo = type(coo)(coo.weight.to_sparse_coo())
    assert not nb.supports(KuramotoSystem(torch.zeros(8, dtype=F64), torch.tensor(1.0, dtype=F64), coo))
    with pytest.raises(ValueError, match="rk4"):
        nb.kuramoto_integrator(_system("neighbours", noise=0.1), method="rk4")
    # states the kernel does not take are stepped by the torch reference
    integ = nb.kuramoto_integrator(system, dt=0.01)
    theta0 = _theta0(system).requires_grad_(True)
    stepped = integ.step_fn(integ.init_fn(theta0), 3)
    assert stepped.theta.requires_grad and stepped.step == 3
    assert integ.step_fn(integ.init_fn(theta0), 0).theta is theta0


def test_auto_backend_picks_numba_and_state_is_immutable():
    system = KuramotoSystem(torch.zeros(30, dtype=F64), torch.tensor(1.0, dtype=F64), MeanFieldOperator(30, 1 / 30))
    integ = make_integrator(system, backend="auto")
    assert integ.backend == "numba"
    theta0 = _theta0(system, b=1)
    before = theta0.clone()
    state = integ.step_fn(integ.init_fn(theta0), 5)
    assert torch.equal(theta0, before) and state.step == 5 and isinstance(state.theta, torch.Tensor)


def test_auto_backend_counts_numba_compile_only_when_not_cached(monkeypatch):
    from lotsim.dynamics import backends

    system = _system("neighbours", b=2)
    monkeypatch.setattr(backends, "numba_cached", lambda method, replicas=1: False)
    assert make_integrator(system, backend="auto", work_hint=1e7).backend == "torch"  # the compile would dominate
    assert make_integrator(system, backend="auto", work_hint=1e9).backend == "numba"
    assert make_integrator(system, backend="auto").backend == "numba"  # no hint: a large run
    monkeypatch.setattr(backends, "numba_cached", lambda method, replicas=1: True)
    assert make_integrator(system, backend="auto", work_hint=1e7).backend == "numba"  # cached: only tiny runs stay
    assert make_integrator(system, backend="auto", work_hint=1e5).backend == "torch"
    assert make_integrator(system, backend="auto", method="dopri5", work_hint=1e7).backend == "numba"


def test_numba_cache_probe_sees_a_compiled_kernel():
    from lotsim.dynamics import backends

    system = _system("neighbours", b=1)
    integ = nb.kuramoto_integrator(system, dt=0.01)
    integ.step_fn(integ.init_fn(_theta0(system, b=1)), 1)  # compiles (or loads) the serial kernel
    assert backends.numba_cached("rk4", replicas=1)
