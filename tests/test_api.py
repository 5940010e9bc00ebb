"""The Python API (lotsim.simulate / load_run) runs the command line's recipe and driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lotsim
from lotsim.cli import app
from lotsim.config import RecipeError
from lotsim.dynamics import KuramotoSystem, build_operator, make_integrator
from lotsim.lattice import build_lattice

runner = CliRunner()


def test_simulate_in_memory_equals_lotsim_simulate(tmp_path):
    out = tmp_path / "cli.h5"
    result = runner.invoke(app, ["simulate", "--topology", "triangular", "--shape", "6x6", "--coupling", "0.5,2",
                                 "--replicas", "2", "--t-max", "4", "--freq-dist", "gaussian", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = lotsim.simulate(topology="triangular", shape=(6, 6), coupling=[0.5, 2], replicas=2, t_max=4,
                          frequencies={"dist": "gaussian"})
    cli = lotsim.load_run(out)
    assert run.path is None and cli.path == out
    assert np.array_equal(run.theta, cli.theta) and run.theta.shape == (9, 4, 18)
    assert np.array_equal(run.times, cli.times) and np.array_equal(run.omega, cli.omega)
    assert run.coupling.tolist() == [0.5, 0.5, 2, 2] and run.seed.tolist() == [0, 1, 0, 1]
    assert run.recipe.lattice == cli.recipe.lattice and run.recipe.lattice.topology == "triangular"
    assert run.positions.shape == (18, 2) and run.edges.shape[1] == 2
    assert lotsim.load_run(tmp_path).theta.shape == run.theta.shape  # the run folder


def test_simulate_keeps_the_file_only_when_asked_and_never_overwrites(tmp_path):
    path = tmp_path / "kept.h5"
    run = lotsim.simulate(n=20, coupling=1.0, steps=20, out=path)
    assert run.path == path and path.is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        lotsim.simulate(n=20, coupling=2.0, steps=20, out=path)
    assert np.array_equal(lotsim.load_run(path).theta, run.theta)
    again = lotsim.simulate(n=20, coupling=2.0, steps=20, out=path, overwrite=True)
    assert again.coupling.tolist() == [2.0]


def test_keywords_sections_and_overrides():
    run = lotsim.simulate(topology="ring", n=30, coupling=1.0, dt=0.1, steps=10, save_every=5,
                          initial={"kind": "twisted", "twist": 2}, overrides=["frequencies.dist=constant"])
    assert run.theta.shape == (3, 1, 30) and run.recipe.initial.twist == 2
    assert run.recipe.dynamics.t_max is None and np.all(run.omega == 0)
    with pytest.raises(RecipeError, match="did you mean 'topology'"):
        lotsim.simulate(topolgy="ring")
    with pytest.raises(RecipeError, match="must be a dict"):
        lotsim.simulate(lattice="ring")
    with pytest.raises(RecipeError, match="dynamics.dt"):
        lotsim.simulate(dt=-1)


def test_to_xarray_has_named_dimensions():
    pytest.importorskip("xarray")
    run = lotsim.simulate(n=10, coupling="1:2:2", steps=20)
    ds = run.to_xarray()
    assert ds["theta"].dims == ("time", "replica", "node") and ds["r"].dims == ("time", "replica")
    assert ds["coupling"].values.tolist() == [1.0, 2.0] and "recipe_toml" in ds.attrs
    np.testing.assert_array_equal(ds["theta"].values, run.theta)


def test_kuramoto_system_takes_numpy_arrays_and_numbers():
    ring = build_lattice("ring", n=8)
    operator = build_operator(ring, "degree")
    omega = np.linspace(-1, 1, 8)
    theta0 = torch.as_tensor(np.linspace(0, 1, 8)[None])

    def run(system):
        integrator = make_integrator(system, backend="torch", method="rk4", dt=0.01)
        return integrator.step_fn(integrator.init_fn(theta0), 50).theta

    reference = run(KuramotoSystem(omega=torch.as_tensor(omega), coupling=torch.tensor([[1.5]], dtype=torch.float64),
                                   operator=operator))
    assert torch.equal(run(KuramotoSystem(omega=omega, coupling=np.array([[1.5]]), operator=operator)), reference)
    assert torch.equal(run(KuramotoSystem(omega=omega, coupling=1.5, operator=operator)), reference)
    with pytest.raises(TypeError, match="omega must be a torch tensor, a numpy array or a number"):
        KuramotoSystem(omega="fast", coupling=1.0, operator=operator)


def test_lotsim_import_stays_cheap():
    import subprocess
    import sys

    code = "import sys, lotsim; assert 'torch' not in sys.modules; print(callable(lotsim.simulate))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
