"""Sharded sweeps: shards hold exactly the full run's replicas; submitit's local executor runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lotsim.cli import app
from lotsim.cluster import plan_shards
from lotsim.config import RecipeError, SimulationRecipe, load_recipe
from lotsim.io import open_trajectory
from lotsim.simulation import run_simulation

UPDATES = {"lattice.topology": "ring", "lattice.n": 24, "dynamics.coupling": "0:2:3", "replicas": 2,
           "dynamics.steps": 30, "output.save_every": 10, "frequencies.dist": "gaussian",
           "dynamics.normalization": "none", "dynamics.backend": "torch"}


def test_shards_partition_the_replicas_and_equal_the_full_run(tmp_path):
    recipe = load_recipe(SimulationRecipe, updates=UPDATES)
    full = run_simulation(recipe, tmp_path / "full.h5")
    phases, couplings = [], []
    for job in plan_shards(recipe, 4, tmp_path):
        run_simulation(job.recipe, job.path)
        with open_trajectory(job.path) as traj:
            phases.append(traj.phase[()])
            couplings.append(traj.replica_data("coupling")[()])
    with open_trajectory(full.path) as traj:
        assert np.array_equal(np.concatenate(phases, axis=1), traj.phase[()])
    assert np.array_equal(np.concatenate(couplings), full.couplings)


def test_bad_shard_specs():
    for bad in ["4/4", "x/2", "1"]:
        with pytest.raises(RecipeError, match="shard"):
            load_recipe(SimulationRecipe, updates={**UPDATES, "shard": bad})


def test_sweep_command_runs_a_local_job_array(tmp_path):
    pytest.importorskip("submitit")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "sw"\nreplicas = 2\n[lattice]\ntopology = "ring"\nn = 16\n'
                      '[dynamics]\ncoupling = "0:1:2"\nsteps = 20\n')
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--shards", "2", "--cluster", "local",
                                      "--out", str(tmp_path / "sweep"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["files"]) == 2 and len(report["summaries"]) == 2
    total = sum(summary["replicas"] for summary in report["summaries"])
    assert total == 4
    for path in report["files"]:
        with open_trajectory(path) as traj:
            assert traj.n_frames == 3
