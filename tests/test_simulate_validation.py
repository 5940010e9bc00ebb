"""Bad values on the simulation side: one line naming the value, exit 2, before any work; the recipe
as the one description of a run (typed defaults, generated help, library-derived values)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lotsim.cli import app
from lotsim.config import RecipeError, SimulationRecipe, load_recipe, recipe_keys
from lotsim.lattice import build_lattice, lattice_size
from lotsim.memory import check_memory, estimate_memory

runner = CliRunner()
TINY = ["--topology", "ring", "--n", "8", "--coupling", "1", "--steps", "4", "--save-every", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(("args", "words"), [
    (["--topology", "ring", "--n", "1000000000"], ["lattice.n = 1000000000", "TiB"]),
    (["--topology", "complete", "--n", "1000000000"], ["lattice.n = 1000000000", "TiB"]),
    (["--topology", "hypercubic", "--shape", "100000x100000"], ["lattice.shape", "TiB"]),
    (["--n", "100", "--replicas", "1000000000"], ["replicas = 1000000000", "TiB"]),
    (["--n", "100", "--coupling", "0:1:1000000000"], ["0:1:1000000000", "TiB"]),
])
def test_sizes_that_cannot_fit_are_refused_at_once(tmp_path, args, words):
    start = time.perf_counter()
    result = invoke("simulate", *args, "--steps", "3", "--out", tmp_path / "x.h5")
    assert_one_line(result, "memory", *words)
    assert time.perf_counter() - start < 10  # nothing was built
    assert not (tmp_path / "x.h5").exists()


def test_memory_estimate_names_the_cause_and_passes_small_runs():
    small = load_recipe(SimulationRecipe, updates={"lattice.n": 100})
    check_memory(small)  # fits
    parts = estimate_memory(small)
    assert 0 < sum(parts.values()) < 100e6
    with pytest.raises(ValueError, match=r"replicas = 1 .*lattice.n = 100"):
        check_memory(small, available=1000)
    sharded = load_recipe(SimulationRecipe, updates={"lattice.n": 100, "shard": "0/13"})
    assert estimate_memory(sharded)["state"] * 13 == parts["state"]


@pytest.mark.parametrize(("topology", "kwargs"), [
    ("ring", {"n": 20}), ("chain", {"n": 20, "periodic": False}), ("square", {"shape": (5, 7)}),
    ("square", {"n": 36, "periodic": False}), ("hypercubic", {"shape": (3, 4, 5)}), ("complete", {"n": 30}),
    ("hexagonal", {"shape": (4, 6)}), ("hexagonal", {"shape": (3, 4), "periodic": False}),
    ("triangular", {"shape": (4, 6)}), ("random-regular", {"n": 20, "degree": 3}),
])
def test_lattice_size_matches_the_built_lattice(topology, kwargs):
    nodes, edges = lattice_size(topology, **kwargs)
    lattice = build_lattice(topology, **kwargs)
    assert nodes == pytest.approx(lattice.n, rel=0.25)
    if topology != "complete":  # the complete graph's edges stay implicit
        assert edges == pytest.approx(lattice.num_edges, rel=0.25)


@pytest.mark.parametrize(("args", "words"), [
    (["--t-max", "inf"], ["dynamics.t_max", "finite"]),
    (["--t-max", "1e300", "--dt", "1e-10"], ["dynamics.t_max / dynamics.dt", "2**53"]),
    (["--coupling", "nan"], ["dynamics.coupling", "finite"]),
    (["--coupling", "0:inf:3"], ["dynamics.coupling", "finite"]),
    (["--set", "dynamics.coupling=[1.0, inf]"], ["dynamics.coupling", "finite"]),
    (["--freq-mean", "inf"], ["frequencies.mean", "finite"]),
    (["--freq-width", "nan"], ["frequencies.width"]),
    (["--frustration", "nan"], ["dynamics.frustration", "finite"]),
    (["--harmonics", "1,inf"], ["dynamics.harmonics", "finite"]),
    (["--noise", "inf", "--integrator", "heun"], ["dynamics.noise", "finite"]),
    (["--inertia", "nan"], ["dynamics.inertia"]),
    (["--twist", "100000000000000000000", "--init", "twisted"], ["initial.twist"]),
    (["--seed", "100000000000000000000000"], ["seed"]),
    (["--seed", "-1"], ["seed"]),
    (["--seed", str(2**63 - 1), "--replicas", "2"], ["seed"]),
    (["--device", "nonsense"], ["dynamics.device", "nonsense"]),
    (["--coupling", "a:b:c"], ["dynamics.coupling", "a:b:c"]),
    (["--set", "frequencies.file='omega.npy'"], ["frequencies.file", "frequencies.dist"]),
    (["--lattice-file", "edges.txt"], ["lattice.file", "edgelist"]),
    (["--set", "initial.file='x.npy'"], ["initial.file", "initial.kind"]),
])
def test_non_finite_and_absurd_values_name_their_key(tmp_path, args, words):
    steps = [] if "--t-max" in args else ["--steps", "3"]
    result = invoke("simulate", "--topology", "ring", "--n", "8", *steps, *args, "--out", tmp_path / "x.h5")
    assert_one_line(result, *words)
    assert "🅱" not in result.stderr  # ":b:" is not rendered as an emoji


def test_freq_file_without_its_distribution_is_refused(tmp_path):
    np.save(tmp_path / "omega.npy", np.zeros(8))
    result = invoke("simulate", *TINY, "--freq-file", tmp_path / "omega.npy", "--out", tmp_path / "x.h5")
    assert_one_line(result, "frequencies.dist", "--freq-dist file")
    ok = invoke("simulate", *TINY, "--freq-dist", "file", "--freq-file", tmp_path / "omega.npy",
                "--out", tmp_path / "x.h5")
    assert ok.exit_code == 0, ok.output


def test_frequency_file_of_strings_names_the_file(tmp_path):
    np.save(tmp_path / "words.npy", np.array(["a", "b"] * 4))
    result = invoke("simulate", *TINY, "--freq-dist", "file", "--freq-file", tmp_path / "words.npy",
                    "--out", tmp_path / "x.h5")
    assert_one_line(result, "words.npy")


def test_bad_out_paths_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("")
    assert_one_line(invoke("simulate", *TINY, "--out", tmp_path / "folder"), "is a folder")
    assert_one_line(invoke("simulate", *TINY, "--out", tmp_path / "folder", "--overwrite"), "is a folder")
    assert_one_line(invoke("simulate", *TINY, "--out", tmp_path / "afile" / "x.h5"), "is a file, not a folder")
    if Path("/sys/kernel").is_dir():  # a folder nobody may write, root included
        result = invoke("simulate", *TINY, "--out", "/sys/kernel/lotsim-test.h5")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a chmod would not stop root
    assert_one_line(invoke("simulate", *TINY, "--out", tmp_path / "locked" / "x.h5"), "not writable")


def test_cupy_backend_without_cupy_is_one_line(tmp_path, monkeypatch):
    import sys

    pytest.importorskip("torch")
    if "cupy" in sys.modules or _has_cupy():
        pytest.skip("CuPy is installed")
    result = invoke("simulate", *TINY, "--backend", "cupy", "--out", tmp_path / "x.h5")
    assert_one_line(result, "cupy")


def _has_cupy() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def test_huge_phases_warn_about_lost_precision(tmp_path):
    from lotsim.simulation import precision_warning

    assert precision_warning(1e3, 0.05, "float64") is None
    assert precision_warning(1e306, 0.05, "float64") is not None
    assert precision_warning(2e12, 0.05, "float64") is not None  # 2**52 * 1e-3 dt is ~2.3e11
    assert precision_warning(1e3, 0.05, "float32") is not None
    result = invoke("simulate", "--topology", "ring", "--n", "8", "--coupling", "0", "--freq-dist", "constant",
                    "--freq-mean", "1e300", "--steps", "2", "--out", tmp_path / "x.h5", "--json")
    assert result.exit_code == 0, result.output
    assert "precision" in result.stderr
    assert "precision" in json.loads(result.stdout)["warnings"][0]


def test_analyze_json_of_nan_phases_is_valid_json_with_nulls(tmp_path):
    out = tmp_path / "x.h5"
    assert invoke("simulate", *TINY, "--out", out).exit_code == 0
    with h5py.File(out, "r+") as f:
        phase = f["particles/oscillators/phase/value"]
        values = phase[()]
        values[1:] = np.nan
        phase[...] = values
    result = invoke("analyze", "order", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # NaN is not JSON
    assert report["replicas"][0]["r_final"] is None
    assert "null" in result.stderr


def test_help_shows_recipe_defaults_and_flags_without_types():
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[default: 0.05]" in result.stdout and "[default: rk4]" in result.stdout
    assert "<bool>" not in result.stdout
    assert "hexagon" in result.stdout and "--list-keys" in result.stdout
    keys = runner.invoke(app, ["simulate", "--list-keys"], env={"COLUMNS": "200"})
    assert keys.exit_code == 0
    for key, _, _ in recipe_keys(SimulationRecipe):
        assert key in keys.stdout
    again = invoke("simulate", *TINY, "--out", "/nonexistent-dir-for-test/x.h5")  # defaults were put back
    assert "dynamics.dt" not in again.output


def test_recipe_is_typed_and_frozen_with_derived_values():
    recipe = load_recipe(SimulationRecipe, updates={"dynamics.t_max": 1.0, "dynamics.dt": 0.1,
                                                    "output.save_every": 3})
    assert recipe.dynamics.n_steps == 10 and recipe.n_frames == 1 + 3 + 1
    assert SimulationRecipe().dynamics.t_max == 50.0  # the default duration, set without mutation
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        recipe.dynamics.dt = 1.0  # type: ignore[misc]
    with pytest.raises(RecipeError, match="dynamics.steps"):
        load_recipe(SimulationRecipe, updates={"dynamics.steps": 2**60})
    lattice = load_recipe(SimulationRecipe, updates={"lattice.topology": "square", "lattice.shape": [4, 5]}).lattice
    assert lattice.build(0).n == 20 and lattice.size() == (20, 80)


def test_a_kind_on_the_command_line_replaces_the_recipes_file(tmp_path):
    np.save(tmp_path / "theta.npy", np.zeros(8))
    np.save(tmp_path / "omega.npy", np.zeros(8))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[lattice]\ntopology = "ring"\nn = 8\n[initial]\nkind = "file"\nfile = "theta.npy"\n'
                      '[frequencies]\ndist = "file"\nfile = "omega.npy"\n[dynamics]\ncoupling = 1.0\nsteps = 4\n')
    assert invoke("simulate", recipe, "--out", tmp_path / "a.h5").exit_code == 0
    result = invoke("simulate", recipe, "--init", "random", "--freq-dist", "gaussian", "--out", tmp_path / "b.h5")
    assert result.exit_code == 0, result.output


def test_the_memory_estimate_knows_every_integrator():
    from lotsim.config import SimulationRecipe
    from lotsim.dynamics.core import METHODS
    from lotsim.memory import STAGES, estimate_memory

    assert set(STAGES) == set(METHODS)
    for method in METHODS:
        estimate_memory(SimulationRecipe.model_validate({"dynamics": {"integrator": method}}))
