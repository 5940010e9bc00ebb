"""`lotsim simulate` through typer's CliRunner: options, JSON, files, resume, blow-up, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from lotsim.io import open_trajectory
from tests.conftest import invoke

SMALL = ["--topology", "square", "--shape", "8x8", "--coupling", "0:2:3", "--steps", "60", "--save-every", "5",
         "--normalization", "degree"]


def run_json(tmp_path, *args, name="run.h5"):
    out = tmp_path / name
    result = invoke("simulate", *args, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_version_and_help_are_fast_and_do_not_import_torch():
    code = "import sys; from lotsim.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("lotsim ")


def test_json_summary_and_h5md_file(tmp_path):
    summary, out = run_json(tmp_path, *SMALL, "--replicas", "2")
    assert summary["n"] == 64 and summary["replicas"] == 6 and summary["steps"] == 60
    assert summary["coupling"] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0] and summary["seed"] == [0, 1, 0, 1, 0, 1]
    assert len(summary["r_final"]) == 6 and all(0 <= r <= 1 for r in summary["r_mean"])
    with open_trajectory(out) as traj:
        phase = traj.phase
        assert phase.shape == (13, 6, 64)  # frames at steps 0, 5, ..., 60
        assert list(traj.steps) == list(range(0, 61, 5))
        assert np.allclose(traj.times, np.arange(0, 61, 5) * 0.05)
        r = traj.observable("order_parameter")[()]
        assert np.allclose(r[-1], summary["r_final"])
        assert traj.parameters["recipe_toml"].startswith("name = ")
        assert np.array_equal(traj.replica_data("coupling"), summary["coupling"])
    with h5py.File(out) as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert f["parameters"].attrs["lotsim_version"]
    assert (out.parent / f"{out.stem}.recipe.toml").is_file()


def test_frames_agree_with_the_stored_order_parameter(tmp_path):
    _, out = run_json(tmp_path, *SMALL)
    with open_trajectory(out) as traj:
        theta = traj.phase[()]
        r = traj.observable("order_parameter")[()]
    assert np.allclose(np.abs(np.exp(1j * theta).mean(-1)), r, atol=1e-12)


def test_batched_sweep_equals_runs_one_by_one(tmp_path):
    base = ["--topology", "ring", "--n", "32", "--steps", "40", "--save-every", "10", "--freq-dist", "gaussian",
            "--normalization", "none", "--backend", "torch"]
    _, batched = run_json(tmp_path, *base, "--coupling", "0.5,1.5", name="b.h5")
    for i, k in enumerate([0.5, 1.5]):
        _, single = run_json(tmp_path, *base, "--coupling", str(k), name=f"s{i}.h5")
        with open_trajectory(batched) as a, open_trajectory(single) as b:
            assert np.array_equal(a.phase[:, i], b.phase[:, 0])


def test_same_seed_gives_the_same_file_bit_for_bit(tmp_path):
    _, a = run_json(tmp_path, *SMALL, "--noise", "0.1", "--integrator", "heun", name="a.h5")
    _, b = run_json(tmp_path, *SMALL, "--noise", "0.1", "--integrator", "heun", name="b.h5")
    assert a.read_bytes() == b.read_bytes()
    _, c = run_json(tmp_path, *SMALL, "--noise", "0.1", "--integrator", "heun", "--seed", "1", name="c.h5")
    with open_trajectory(a) as fa, open_trajectory(c) as fc:
        assert not np.array_equal(fa.phase[-1], fc.phase[-1])


def _run_until_killed(out, steps, kill_at_step):
    """Run a simulation in a child process that SIGKILLs itself after ``kill_at_step``."""
    code = f"""
import os
from lotsim.config import SimulationRecipe, load_recipe
from lotsim.simulation import run_simulation
recipe = load_recipe(SimulationRecipe, updates={{"lattice.topology": "ring", "lattice.n": 64, "dynamics.steps": {steps},
    "dynamics.coupling": 1.0, "dynamics.noise": 0.05, "dynamics.integrator": "heun", "output.save_every": 2,
    "dynamics.backend": "torch"}})
def progress(step, total):
    if step >= {kill_at_step}:
        os.kill(os.getpid(), 9)
run_simulation(recipe, {str(out)!r}, progress=progress)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()


def test_killed_run_is_readable_and_resume_is_bit_identical(tmp_path):
    from lotsim.config import SimulationRecipe, load_recipe
    from lotsim.simulation import run_simulation

    steps = 3000  # 1501 frames of 64 float64: several chunks, so the kill lands between checkpoints
    killed = tmp_path / "killed.h5"
    _run_until_killed(killed, steps, kill_at_step=2100)
    with open_trajectory(killed) as traj:
        frames = traj.n_frames
        assert 0 < frames < steps // 2 + 1
        assert np.all(np.isfinite(traj.phase[()]))

    recipe = load_recipe(SimulationRecipe, updates={
        "lattice.topology": "ring", "lattice.n": 64, "dynamics.steps": steps, "dynamics.coupling": 1.0,
        "dynamics.noise": 0.05, "dynamics.integrator": "heun", "output.save_every": 2, "dynamics.backend": "torch"})
    run_simulation(recipe, killed, resume=True)
    straight = tmp_path / "straight.h5"
    run_simulation(recipe, straight)
    with open_trajectory(killed) as a, open_trajectory(straight) as b:
        assert np.array_equal(a.steps, b.steps)
        assert np.array_equal(a.phase[()], b.phase[()])
        assert np.array_equal(a.observable("order_parameter")[()], b.observable("order_parameter")[()])


def test_resume_through_the_cli_refuses_a_missing_file(tmp_path):
    result = invoke("simulate", *SMALL, "--out", tmp_path / "nothing.h5", "--resume")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_existing_output_needs_overwrite(tmp_path):
    _, out = run_json(tmp_path, *SMALL)
    result = invoke("simulate", *SMALL, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert invoke("simulate", *SMALL, "--out", out, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    "options",
    [
        ["--topology", "ring", "--n", "20", "--init", "twisted", "--twist", "2", "--integrator", "euler"],
        ["--topology", "triangular", "--shape", "4x6", "--open", "--weights", "exp", "--lattice-constant", "2"],
        ["--topology", "hexagonal", "--shape", "3x4", "--frustration", "0.3", "--harmonics", "1,0.5"],
        ["--topology", "square", "--shape", "8x8", "--init", "vortex", "--inertia", "0.5", "--dtype", "float32"],
        ["--topology", "small-world", "--n", "40", "--freq-dist", "uniform", "--freq-sampling", "random"],
        ["--topology", "complete", "--n", "50", "--freq-dist", "gaussian", "--freq-width", "0.2", "--dt", "0.1"],
        ["--topology", "erdos-renyi", "--n", "40", "--noise", "0.2", "--integrator", "heun", "--compression", "gzip"],
        ["--topology", "hypercubic", "--shape", "4x4x4", "--init", "sync", "--backend", "torch"],
        ["--topology", "random-regular", "--n", "20", "--freq-dist", "constant", "--freq-mean", "1.0"],
    ],
)
def test_option_groups_run(tmp_path, options):
    summary, out = run_json(tmp_path, *options, "--steps", "20", "--save-every", "10", "--coupling", "1.0")
    assert all(np.isfinite(summary["r_final"]))
    with open_trajectory(out) as traj:
        assert traj.n_frames == 3


def test_coupling_range_flag_builds_and_stores_the_nonlocal_graph(tmp_path):
    summary, out = run_json(tmp_path, "--topology", "ring", "--n", "30", "--coupling-range", "3", "--weights", "exp",
                            "--lattice-constant", "2", "--steps", "10", "--save-every", "10", "--coupling", "1.0")
    assert summary["lattice"] == "ring n=30 range 3"
    with open_trajectory(out) as traj:
        senders, receivers = traj.edges[0].T
        weights = traj.edges[1]
    d = np.abs(senders - receivers)
    d = np.minimum(d, 30 - d)
    assert senders.shape[0] == 30 * 6 and set(d.tolist()) == {1, 2, 3}
    assert np.allclose(weights, np.exp(-d / 2.0))


def test_recipe_file_with_set_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "demo"\n[lattice]\ntopology = "ring"\nn = 16\n[dynamics]\nsteps = 10\n'
                      'coupling = 2.0\n')
    summary, out = run_json(tmp_path, recipe, "--set", "dynamics.coupling=0.5", "--set", "lattice.n=24")
    assert summary["n"] == 24 and summary["coupling"] == [0.5]


def test_file_inputs_frequencies_initial_state_and_edges(tmp_path):
    np.save(tmp_path / "omega.npy", np.linspace(-1, 1, 6))
    np.save(tmp_path / "theta.npy", np.zeros(6))
    (tmp_path / "edges.txt").write_text("0 1 1.0\n1 2 1.0\n2 3 1.0\n3 4 1.0\n4 5 1.0\n5 0 1.0\n")
    summary, out = run_json(tmp_path, "--topology", "edgelist", "--lattice-file", tmp_path / "edges.txt",
                            "--freq-dist", "file", "--freq-file", tmp_path / "omega.npy", "--init",
                            tmp_path / "theta.npy", "--steps", "10", "--coupling", "1")
    with open_trajectory(out) as traj:
        assert np.array_equal(traj.phase[0, 0], np.zeros(6))
        assert np.allclose(traj.node_data("natural_frequency")[0], np.linspace(-1, 1, 6))
    # continue from the previous run's last state
    summary2, out2 = run_json(tmp_path, "--topology", "edgelist", "--lattice-file", tmp_path / "edges.txt",
                              "--freq-dist", "file", "--freq-file", tmp_path / "omega.npy", "--init", out,
                              "--steps", "10", "--coupling", "1", name="next.h5")
    with open_trajectory(out) as a, open_trajectory(out2) as b:
        assert np.array_equal(a.phase[-1], b.phase[0])


def test_blow_up_stops_with_a_dt_hint_and_a_readable_file(tmp_path):
    out = tmp_path / "boom.h5"
    result = invoke("simulate", "--topology", "ring", "--n", "16", "--inertia", "0.01", "--dt", "1.0", "--steps",
                    "4000", "--save-every", "10", "--coupling", "1", "--out", out)
    assert result.exit_code == 1
    assert "smaller" in result.stderr or "--dt" in result.stderr
    with open_trajectory(out) as traj:
        assert traj.n_frames >= 1
        assert np.all(np.isfinite(traj.phase[()]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topology", "hex", "--n", "4"], "lattice.topology"),
        (["--topology", "square", "--shape", "4x4", "--n", "10"], "does not match"),
        (["--dt", "-0.1"], "dynamics.dt"),
        (["--steps", "0"], "dynamics.steps"),
        (["--integrator", "rk5"], "dynamics.integrator"),
        (["--normalization", "mean"], "dynamics.normalization"),
        (["--coupling", "1:2:x"], "coupling"),
        (["--shape", "ax3", "--topology", "square"], "shape"),
        (["--set", "dynamics.copling=2"], "did you mean 'coupling'"),
        (["--freq-dist", "file"], "frequencies.file"),
        (["--init", "/nonexistent/phases.npy"], "does not exist"),
        (["--noise", "0.1", "--integrator", "rk4"], "heun"),
        (["--device", "cuda"], "cuda"),
        (["/nonexistent/recipe.toml"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    steps = [] if "--steps" in args else ["--steps", "5"]
    result = invoke("simulate", *args, *steps, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_resume_refuses_a_different_recipe(tmp_path):
    _, out = run_json(tmp_path, *SMALL)
    result = invoke("simulate", *SMALL[:-2], "--normalization", "none", "--out", out, "--resume")
    assert result.exit_code == 2 and "different recipe" in result.stderr


def test_recipe_file_paths_are_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "omega.npy", np.zeros(5))
    (folder / "edges.txt").write_text("0 1 1.0\n1 2 1.0\n2 3 1.0\n3 4 1.0\n")
    (folder / "sim.toml").write_text('[lattice]\ntopology = "edgelist"\nfile = "edges.txt"\ndirected = true\n'
                                    '[frequencies]\ndist = "file"\nfile = "omega.npy"\n[dynamics]\nsteps = 5\n'
                                    'coupling = 1.0\nnormalization = "none"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else than the recipe's folder
    summary, _ = run_json(tmp_path, folder / "sim.toml")
    assert summary["n"] == 5


def test_a_trained_head_lattice_simulates(tmp_path):
    from lotsim.model import LOTModel, ModelConfig, write_simulation_inputs

    model = LOTModel(ModelConfig(vocab_size=11, seq_len=16, d_model=32, n_layers=1, n_heads=4,
                                 attention="lattice"))
    recipe = write_simulation_inputs(model, 0, tmp_path / "layer0", steps=50)
    summary, out = run_json(tmp_path, recipe)
    assert summary["n"] == 4 and np.all(np.isfinite(summary["r_final"]))


# ------------------------------------------------------------------ frame blocks, checkpoints, signals


def _ring_recipe(**dynamics):
    from lotsim.config import SimulationRecipe, load_recipe

    dyn = {"coupling": 1.0, "steps": 1000, "backend": "numba", **dynamics.pop("dynamics", {})}
    out = {"save_every": 1, **dynamics.pop("output", {})}
    return load_recipe(SimulationRecipe, None, [], {"lattice": {"topology": "ring", "n": 64}, "dynamics": dyn,
                                                    "output": out, **dynamics})


def test_checkpoints_follow_the_work_budget(tmp_path, monkeypatch):
    import lotsim.simulation as sim
    from lotsim.io import TrajectoryWriter

    steps: list[int] = []
    original = TrajectoryWriter.write_state

    def spy(self, theta, *, step, **kwargs):
        steps.append(step)
        original(self, theta, step=step, **kwargs)

    monkeypatch.setattr(TrajectoryWriter, "write_state", spy)
    recipe = _ring_recipe(dynamics={"steps": 2000})  # 64 float64 nodes: 512 frames per chunk
    cases = [(1, [0, 511, 1023, 1535, 2000]),  # tiny budget: after every chunk, as the runner used to
             (64 * 1100, [0, 1535, 2000]),  # first chunk end with >= 1100 steps since the last checkpoint
             (sim.CHECKPOINT_OSC_STEPS, [0, 2000])]
    for budget, expected in cases:
        monkeypatch.setattr(sim, "CHECKPOINT_OSC_STEPS", budget)
        steps.clear()
        sim.run_simulation(recipe, tmp_path / f"c{budget}.h5")
        assert steps == expected, budget
        with open_trajectory(tmp_path / f"c{budget}.h5") as traj:
            assert list(traj.steps) == list(range(2001))
    assert (tmp_path / "c1.h5").stat().st_size > 0


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_frame_blocks_equal_frame_by_frame_recording(tmp_path, backend):
    """The runner's blocks store what integrating and recording one frame at a time stores, bit for bit."""
    import torch

    from lotsim.dynamics import make_integrator, order_parameter
    from lotsim.simulation import build_system, run_simulation

    recipe = _ring_recipe(dynamics={"steps": 1201, "backend": backend, "noise": 0.05, "integrator": "heun"},
                          output={"save_every": 3, "precision": "float32"}, replicas=2)
    run_simulation(recipe, tmp_path / "run.h5")
    _, system, theta0, _, _ = build_system(recipe)
    dyn = recipe.dynamics
    integ = make_integrator(system, backend=backend, method=dyn.integrator, dt=dyn.dt, seed=recipe.seed)
    state = integ.init_fn(torch.as_tensor(theta0))
    rows = []
    while True:
        r, psi = order_parameter(state.theta)
        rows.append((state.step, state.step * dyn.dt, state.theta.numpy().astype(np.float32),
                     r.double().numpy(), psi.double().numpy()))
        if state.step == dyn.n_steps:
            break
        state = integ.step_fn(state, min(3 - state.step % 3, dyn.n_steps - state.step))
    with open_trajectory(tmp_path / "run.h5") as traj:
        assert np.array_equal(traj.steps, [row[0] for row in rows])
        assert np.array_equal(traj.times, [row[1] for row in rows])
        assert np.array_equal(traj.phase[()], np.stack([row[2] for row in rows]))
        assert np.array_equal(traj.observable("order_parameter")[()], np.stack([row[3] for row in rows]))
        assert np.array_equal(traj.observable("mean_phase")[()], np.stack([row[4] for row in rows]))
    assert len(rows) == 402 and rows[-1][0] == 1201


def test_blow_up_inside_a_block_keeps_every_good_frame_and_names_the_first_bad_step(tmp_path):
    import torch

    from lotsim.config import SimulationRecipe, load_recipe
    from lotsim.dynamics import make_integrator
    from lotsim.io import read_state
    from lotsim.simulation import SimulationBlowUp, build_system, run_simulation

    recipe = load_recipe(SimulationRecipe, None, [], {
        "lattice": {"topology": "ring", "n": 16}, "output": {"save_every": 10},
        "dynamics": {"coupling": 1.0, "inertia": 0.01, "dt": 1.0, "steps": 4000, "backend": "numba"}})
    _, system, theta0, _, _ = build_system(recipe)
    integ = make_integrator(system, backend="numba", method="rk4", dt=1.0)
    state = integ.init_fn(torch.as_tensor(theta0))
    while torch.isfinite(state.theta).all():
        state = integ.step_fn(state, 10)
    bad = state.step  # the first save point with NaN/inf phases; far below one chunk (2048 frames)
    assert 10 < bad < 4000
    with pytest.raises(SimulationBlowUp, match=f"by step {bad} .*every frame up to step {bad - 10}"):
        run_simulation(recipe, tmp_path / "boom.h5")
    with open_trajectory(tmp_path / "boom.h5") as traj:
        assert list(traj.steps) == list(range(0, bad, 10))
        assert np.all(np.isfinite(traj.phase[()]))
    assert read_state(tmp_path / "boom.h5").step == bad - 10


def test_sigterm_checkpoints_and_resume_is_bit_identical(tmp_path):
    out = tmp_path / "term.h5"
    code = f"""
import os, signal
from tests.test_simulate_cli import _ring_recipe
from lotsim.simulation import SimulationInterrupted, run_simulation
def progress(step, total):
    if step == 700:
        os.kill(os.getpid(), signal.SIGTERM)
try:
    run_simulation(_ring_recipe(dynamics={{"noise": 0.05, "integrator": "heun"}}), {str(out)!r}, progress=progress)
except SimulationInterrupted as err:
    print(err)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "interrupted at step 700" in proc.stdout, proc.stderr
    from lotsim.io import read_state
    from lotsim.simulation import run_simulation

    assert read_state(out).step == 700
    with open_trajectory(out) as traj:
        assert traj.n_frames == 701
    recipe = _ring_recipe(dynamics={"noise": 0.05, "integrator": "heun"})
    run_simulation(recipe, out, resume=True)
    run_simulation(recipe, tmp_path / "straight.h5")
    with open_trajectory(out) as a, open_trajectory(tmp_path / "straight.h5") as b:
        assert np.array_equal(a.steps, b.steps)
        assert np.array_equal(a.phase[()], b.phase[()])
        assert np.array_equal(a.observable("mean_phase")[()], b.observable("mean_phase")[()])


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_init_from_a_run_carries_the_velocities_of_inertial_dynamics(tmp_path, backend):
    """--init RUN.h5 continues phases AND velocities: half a run, then the other half, equals the whole."""
    import lotsim.simulation as sim
    from lotsim.io import read_state

    def recipe(steps, **initial):
        return _ring_recipe(dynamics={"steps": steps, "backend": backend, "inertia": 0.7, "coupling": 2.0},
                            output={"save_every": 50}, frequencies={"dist": "gaussian"}, replicas=2,
                            **({"initial": initial} if initial else {}))

    sim.run_simulation(recipe(400), tmp_path / "whole.h5")
    sim.run_simulation(recipe(200), tmp_path / "first.h5")
    assert np.abs(read_state(tmp_path / "first.h5").velocity).max() > 0.1  # a moving state to carry
    sim.run_simulation(recipe(200, kind="file", file=str(tmp_path / "first.h5")), tmp_path / "second.h5")
    whole, second = read_state(tmp_path / "whole.h5"), read_state(tmp_path / "second.h5")
    np.testing.assert_allclose(second.theta, whole.theta, rtol=0, atol=1e-9)
    np.testing.assert_allclose(second.velocity, whole.velocity, rtol=0, atol=1e-9)
    with open_trajectory(tmp_path / "first.h5") as a, open_trajectory(tmp_path / "second.h5") as b:
        assert np.array_equal(a.phase[-1], b.phase[0])


def _simulate_process(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "lotsim", "simulate", "--topology", "ring", "--n", "64",
                             "--steps", "400", "--out", str(out), *extra],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_simulates_on_one_output_one_wins_the_other_says_one_line(tmp_path):
    out = tmp_path / "same.h5"
    procs = [_simulate_process(out), _simulate_process(out)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser and len(loser.strip().splitlines()) == 1 and "same.h5" in loser, loser
    with open_trajectory(out) as traj:
        assert traj.n_frames == 41  # every 10th of 400 steps


def test_overwrite_refuses_a_file_a_running_simulate_is_writing(tmp_path):
    out = tmp_path / "busy.h5"
    runner_proc = _simulate_process(out, "--steps", "400000", "--save-every", "100")
    try:
        for _ in range(600):  # until the running job has created its file
            if out.exists() and out.stat().st_size > 0:
                break
            runner_proc.poll()
            assert runner_proc.returncode is None, runner_proc.stderr.read()
            time.sleep(0.1)
        size = out.stat().st_size
        result = invoke("simulate", "--topology", "ring", "--n", "8", "--steps", "5", "--out", out, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "another process is writing" in result.output and "Traceback" not in result.output
        assert out.stat().st_size >= size  # untouched: never truncated
    finally:
        runner_proc.terminate()  # SIGTERM: the running job checkpoints and stops
        runner_proc.wait(timeout=120)
    with open_trajectory(out) as traj:  # the running job's file stays whole and resumable
        assert traj.n_frames >= 1


def test_runs_sharing_a_folder_keep_their_own_resolved_recipe(tmp_path):
    from typer.testing import CliRunner

    from lotsim.cli import app

    for name, coupling in (("a", "0.5"), ("b", "1.5")):
        args = ["simulate", "--topology", "ring", "--n", "16", "--coupling", coupling, "--t-max", "1",
                "--out", str(tmp_path / f"{name}.h5")]
        assert CliRunner().invoke(app, args).exit_code == 0
    assert "coupling = 0.5" in (tmp_path / "a.recipe.toml").read_text()
    assert "coupling = 1.5" in (tmp_path / "b.recipe.toml").read_text()
