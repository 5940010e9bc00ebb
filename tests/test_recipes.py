"""Every simulation recipe in recipes/simulate/ validates and runs (a few steps, a small copy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lotsim.config import SimulationRecipe, load_recipe
from lotsim.simulation import run_simulation

RECIPES = sorted((Path(__file__).parents[1] / "recipes" / "simulate").glob("*.toml"))


def test_there_are_simulation_recipes():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_runs_briefly(path, tmp_path):
    recipe = load_recipe(SimulationRecipe, path)
    assert recipe.name == path.stem
    quick = load_recipe(SimulationRecipe, path, ["dynamics.t_max=0.4", "output.save_every=2"])
    result = run_simulation(quick, tmp_path / "traj.h5")
    assert np.all(np.isfinite(result.r_final))
