"""`lotsim analyze` through typer's CliRunner: known answers, --json contracts, plots, bad input,
streaming, partial files, and (slow) K_c of a complete-graph Lorentzian sweep."""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

import lotsim
from lotsim.analysis.order import analyze_order
from lotsim.io import Trajectory, TrajectoryWriter, open_trajectory
from tests.conftest import assert_one_line_error as one_line_error
from tests.conftest import invoke


def simulate(path, *args):
    result = invoke("simulate", *args, "--out", path, "--json")
    assert result.exit_code == 0, result.output
    return path


def analyze_json(*args) -> dict:
    result = invoke("analyze", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object on stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    const = ["--freq-dist", "constant", "--normalization", "none", "--coupling", "1"]
    return {
        "twisted": simulate(d / "twisted.h5", "--topology", "ring", "--n", "64", "--init", "twisted", "--twist", "2",
                            *const, "--steps", "100", "--save-every", "10"),
        "vortex": simulate(d / "vortex.h5", "--topology", "square", "--shape", "16x16", "--open", "--init", "vortex",
                           *const, "--steps", "60", "--save-every", "10"),
        "sync": simulate(d / "sync.h5", "--topology", "complete", "--n", "64", "--init", "sync", *const,
                         "--steps", "40", "--save-every", "10"),
        "free": simulate(d / "free.h5", "--topology", "ring", "--n", "32", "--freq-dist", "gaussian", "--coupling", "0",
                         "--steps", "100", "--save-every", "10", "--replicas", "2"),
        "sweep": simulate(d / "sweep.h5", "--topology", "complete", "--n", "100", "--coupling", "0:2:5", "--replicas",
                          "2", "--steps", "100", "--dt", "0.1", "--save-every", "5"),
        "tri": simulate(d / "tri.h5", "--topology", "triangular", "--shape", "6x8", "--open", "--init", "vortex",
                        *const, "--steps", "20", "--save-every", "10"),
    }


def synthetic(path, theta: np.ndarray, *, recipe: str = "", times=None) -> str:
    """An H5MD file with given phases [frame, replica, node] (no simulator involved)."""
    frames, replicas, nodes = theta.shape
    times = np.arange(frames, dtype=float) if times is None else times
    with TrajectoryWriter(path, overwrite=True, recipe_toml=recipe) as w:
        w.add_particles("oscillators", n_replicas=replicas, n_nodes=nodes, dtype=np.float64,
                        replica_data={"coupling": np.ones(replicas), "seed": np.arange(replicas)})
        w.append("oscillators", np.arange(frames), times, theta)
    return path


# ------------------------------------------------------------------------------------------- order


def test_order_json_keys_and_types(runs):
    out = analyze_json("order", runs["twisted"])
    assert {"file", "lattice", "n", "n_frames", "t_final", "time", "transient_rule", "frequency_method", "lock_tol",
            "max_harmonic", "theory", "theory_reason", "replicas", "warnings"} <= set(out)
    row = out["replicas"][0]
    for key, kind in [("replica", int), ("coupling", float), ("seed", int), ("r_mean", float), ("r_sd", float),
                      ("r_final", float), ("psi_final", float), ("chi", float), ("local_order_mean", float),
                      ("omega_eff_mean", float), ("omega_eff_sd", float), ("locked_fraction", float),
                      ("n_locked_clusters", int), ("clusters", list), ("r_harmonics_mean", list),
                      ("transient", dict), ("window", dict), ("potential", dict), ("series", dict)]:
        assert isinstance(row[key], kind), key
    assert len(row["r_harmonics_mean"]) == 4 and len(row["series"]["r"]) == out["n_frames"]
    assert row["potential"]["defined"] and row["potential"]["monotone_expected"]
    # a q = 2 twisted ring with identical frequencies: r = 0, every oscillator locked, perfect local order
    assert row["r_mean"] == pytest.approx(0.0, abs=1e-9) and row["locked_fraction"] == 1.0
    assert row["local_order_mean"] == pytest.approx(math.cos(2 * math.pi * 2 / 64))


def test_order_of_a_synchronised_state(runs):
    out = analyze_json("order", runs["sync"], "--max-harmonic", "2", "--transient", "0.5")
    row = out["replicas"][0]
    assert row["r_mean"] == pytest.approx(1.0) and row["r_harmonics_mean"] == pytest.approx([1.0, 1.0])
    assert row["n_locked_clusters"] == 1 and row["clusters"][0]["size"] == 64 and row["locked_fraction"] == 1.0
    assert row["transient"] == {"time": 0.5, "frame": 1, "detected": False}
    assert row["chi"] == pytest.approx(0.0, abs=1e-9)
    assert row["potential"]["final"] == pytest.approx(-0.5 * 64 * 63)  # -(1/2) sum_ij K A_ij, K = 1, "none"


def test_uncoupled_effective_frequencies_equal_natural_frequencies(runs):
    report = analyze_order(runs["free"], frequency_method="fit")
    assert np.allclose(report.omega_eff, report.omega, atol=1e-9, rtol=0)
    report = analyze_order(runs["free"], frequency_method="endpoints", replica=1)
    assert report.replicas == [1] and np.allclose(report.omega_eff, report.omega, atol=1e-9, rtol=0)
    assert report.potential is not None and not report.potential_monotone_expected


def test_two_antiphase_clusters_and_uniform_phases_from_synthetic_files(tmp_path):
    theta = np.concatenate([np.zeros(10), np.full(10, math.pi)])[None, None] + 0.3 * np.arange(6)[:, None, None]
    out = analyze_json("order", synthetic(tmp_path / "two.h5", theta), "--max-harmonic", "2")
    row = out["replicas"][0]
    assert row["r_mean"] == pytest.approx(0.0, abs=1e-12) and row["r_harmonics_mean"][1] == pytest.approx(1.0)
    assert row["locked_fraction"] == 1.0  # both clusters rotate together at 0.3
    assert row["potential"]["defined"] is False and "recipe" in row["potential"]["reason"]
    rng = np.random.default_rng(0)
    uniform = synthetic(tmp_path / "uniform.h5", rng.uniform(0, 2 * math.pi, (400, 1, 25)))
    r = np.array(analyze_json("order", uniform, "--transient", "0")["replicas"][0]["series"]["r"])
    assert np.mean(r**2) == pytest.approx(1 / 25, rel=0.15)


def test_order_plot_writes_pngs_next_to_the_file(runs):
    out = analyze_json("order", runs["twisted"], "--plot", "--svg")
    names = sorted(p.rsplit("/", 1)[-1] for p in out["plots"])
    assert names == ["twisted_frequency_profile.png", "twisted_frequency_profile.svg", "twisted_order.png",
                     "twisted_order.svg", "twisted_potential.png", "twisted_potential.svg"]
    for path in out["plots"]:
        assert str(runs["twisted"].parent / "plots") in path
        if path.endswith(".png"):
            assert (runs["twisted"].parent / "plots" / path.rsplit("/", 1)[-1]).stat().st_size > 20_000
    assert out["lotsim_version"] == lotsim.__version__


def test_plots_record_what_made_them(runs):
    from PIL import Image

    out = analyze_json("order", runs["twisted"], "--plot", "--svg")
    png, svg = (next(p for p in out["plots"] if p.endswith(f"_order.{ext}")) for ext in ("png", "svg"))
    text = Image.open(png).text
    assert text["Software"] == f"lotsim {lotsim.__version__}" and text["Source"] == str(runs["twisted"].resolve())
    assert "order" in text["Description"]
    assert f"lotsim {lotsim.__version__}" in Path(svg).read_text() and str(runs["twisted"].resolve()) in Path(
        svg).read_text()


def test_order_table_without_json(runs):
    result = invoke("analyze", "order", runs["sync"])
    assert result.exit_code == 0 and "locked" in result.stdout and "1.0000" in result.stdout


# -------------------------------------------------------------------------------------- transition


def test_transition_json_keys_plot_and_theory(runs, tmp_path):
    out = analyze_json("transition", runs["sweep"], "--plot", "--out", tmp_path, "--n-boot", "200")
    for key in ("couplings", "r_mean", "r_low", "r_high", "chi_mean", "n_seeds"):
        assert isinstance(out[key], list) and len(out[key]) == 5, key
    assert out["couplings"] == [0.0, 0.5, 1.0, 1.5, 2.0] and out["n_seeds"] == [2] * 5
    assert all(lo <= m <= hi for lo, m, hi in zip(out["r_low"], out["r_mean"], out["r_high"]))
    assert isinstance(out["kc_estimate"], float) and isinstance(out["kc_uncertainty"], float)
    assert out["kc_theory"] == 1.0 and len(out["r_theory"]) == 5 and out["theory_reason"] is None
    assert set(out["kc_susceptibility"]) >= {"kc", "sd", "ci95"} and out["adiabatic"] is None
    assert (tmp_path / "sweep_transition.png").stat().st_size > 20_000


def test_transition_combines_sharded_sweeps(runs, tmp_path):
    a = simulate(tmp_path / "a.h5", "--topology", "complete", "--n", "100", "--coupling", "0,1", "--steps", "40")
    b = simulate(tmp_path / "b.h5", "--topology", "complete", "--n", "100", "--coupling", "2", "--steps", "40")
    out = analyze_json("transition", a, b)
    assert out["couplings"] == [0.0, 1.0, 2.0] and out["n_seeds"] == [1, 1, 1] and len(out["files"]) == 2
    # --shard i/n splits the couplings x seeds grid (here through the seeds of K = 1): same result as one run
    grid = ["--topology", "complete", "--n", "60", "--coupling", "0:2:3", "--replicas", "3", "--steps", "40"]
    shards = [simulate(tmp_path / f"s{i}.h5", *grid, "--shard", f"{i}/2") for i in range(2)]
    whole = analyze_json("transition", simulate(tmp_path / "whole.h5", *grid))
    combined = analyze_json("transition", *shards)
    assert combined["n_seeds"] == [3, 3, 3] and combined["warnings"] == []
    assert combined["r_mean"] == whole["r_mean"] and combined["kc_estimate"] == whole["kc_estimate"]


def test_transition_adiabatic_sweeps(tmp_path):
    run = simulate(tmp_path / "s.h5", "--topology", "complete", "--n", "40", "--coupling", "0:2:3", "--steps", "40")
    out = analyze_json("transition", run, "--adiabatic", "--adiabatic-steps", "20")
    ad = out["adiabatic"]
    assert ad["couplings"] == [0.0, 1.0, 2.0] and ad["steps_per_coupling"] == 20
    assert len(ad["forward"]) == len(ad["backward"]) == 3 and all(0 <= r <= 1 for r in ad["forward"] + ad["backward"])


def test_transition_needs_a_sweep(runs):
    one_line_error(invoke("analyze", "transition", runs["sync"]), "at least 3 couplings")


@pytest.mark.slow
def test_kc_of_a_complete_graph_lorentzian_sweep_is_two_gamma(tmp_path):
    run = simulate(tmp_path / "lorentz.h5", "--topology", "complete", "--n", "500", "--freq-dist", "lorentzian",
                   "--freq-width", "0.5", "--coupling", "0:2.4:13", "--replicas", "2", "--t-max", "80", "--dt", "0.1",
                   "--save-every", "5")
    out = analyze_json("transition", run)
    assert out["kc_theory"] == 1.0
    assert out["kc_estimate"] == pytest.approx(1.0, rel=0.10)
    assert out["kc_susceptibility"]["kc"] == pytest.approx(1.0, rel=0.25)
    above = np.array(out["couplings"]) >= 1.6
    assert np.allclose(np.array(out["r_mean"])[above], np.array(out["r_theory"])[above], atol=0.03)


# ---------------------------------------------------------------------------------- snapshot/movie


@pytest.mark.parametrize(("name", "kind"), [("twisted", "line"), ("vortex", "image"), ("tri", "scatter"),
                                            ("sync", "circle")])
def test_snapshot_draws_every_lattice_kind(runs, tmp_path, name, kind):
    target = tmp_path / f"{name}.png"
    out = analyze_json("snapshot", runs[name], "--frame", "-1", "--out", target)
    assert out["kind"] == kind and out["plots"] == [str(target)] and target.stat().st_size > 15_000


def test_spacetime_and_default_plot_folder(runs):
    out = analyze_json("snapshot", runs["twisted"], "--spacetime")
    path = runs["twisted"].parent / "plots" / "twisted_spacetime_r0.png"
    assert out["plots"] == [str(path)] and path.stat().st_size > 15_000


def test_movie_writes_a_gif(runs, tmp_path):
    target = tmp_path / "m.gif"
    out = analyze_json("movie", runs["vortex"], "--out", target, "--max-frames", "3", "--fps", "5")
    assert out["frames"] == 3 and out["output"] == str(target) and target.stat().st_size > 20_000
    from PIL import Image

    assert Image.open(target).n_frames == 3


@pytest.mark.skipif(shutil.which("ffmpeg") is not None, reason="ffmpeg is installed")
def test_movie_mp4_without_ffmpeg_suggests_gif(runs, tmp_path):
    pytest.importorskip("matplotlib")
    try:
        import imageio_ffmpeg  # noqa: F401
        pytest.skip("imageio-ffmpeg provides ffmpeg")
    except ImportError:
        pass
    one_line_error(invoke("analyze", "movie", runs["vortex"], "--out", tmp_path / "m.mp4"), ".gif")


# ----------------------------------------------------------------------------------------- defects


def test_defects_winding_number_of_a_twisted_ring(runs):
    out = analyze_json("defects", runs["twisted"], "--plot")
    assert out["kind"] == "ring" and out["n_faces"] is None
    row = out["replicas"][0]
    assert row["winding_initial"] == row["winding_final"] == 2 and row["winding_changes"] == 0
    assert row["series"]["winding"] == [2] * out["n_frames"]
    assert (runs["twisted"].parent / "plots" / "twisted_defects.png").stat().st_size > 20_000


def test_defects_single_vortex_on_a_grid(runs):
    out = analyze_json("defects", runs["vortex"], "--plot")
    assert out["kind"] == "plaquette" and out["n_faces"] == 15 * 15
    row = out["replicas"][0]
    assert row["vortices_initial"] == row["vortices_final"] == 1
    assert row["antivortices_initial"] == row["antivortices_final"] == 0 and row["net_charge_final"] == 1
    assert row["density_final"] == pytest.approx(1 / 225)
    assert len(row["series"]["vortices"]) == len(out["time"]) == out["n_frames"]
    out = analyze_json("defects", runs["tri"])
    assert out["replicas"][0]["vortices_final"] == 1 and out["replicas"][0]["antivortices_final"] == 0


# --------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    one_line_error(invoke("analyze", "order", tmp_path / "missing.h5"), "no such file")
    one_line_error(invoke("analyze", "order", text), "not an HDF5 file")
    one_line_error(invoke("analyze", "defects", plain), "not an H5MD trajectory")
    one_line_error(invoke("analyze", "defects", runs["sync"]), "complete graph")
    one_line_error(invoke("analyze", "snapshot", runs["vortex"], "--frame", "99"), "--frame 99 is out of range")
    one_line_error(invoke("analyze", "order", runs["vortex"], "--replica", "3"), "--replica 3 is out of range")
    one_line_error(invoke("analyze", "order", runs["vortex"], "--transient", "1e6"), "beyond the last frame")
    one_line_error(invoke("analyze", "movie", runs["vortex"], "--out", tmp_path / "m.avi"), ".gif or .mp4")
    one_line_error(invoke("analyze", "order", runs["vortex"], "--frequency-method", "slope"), "fit or endpoints")


# ---------------------------------------------------------------------------- streaming and partial


def test_streaming_uses_iter_frames_and_equals_the_in_memory_result(runs, monkeypatch):
    calls = []
    original = Trajectory.iter_frames

    def spy(self, group=None, chunk_frames=None):
        calls.append(chunk_frames)
        return original(self, group, chunk_frames)

    monkeypatch.setattr(Trajectory, "iter_frames", spy)
    small = analyze_order(runs["free"], chunk_frames=2, transient=2.0)
    whole = analyze_order(runs["free"], transient=2.0)
    assert calls == [2, None]
    with open_trajectory(runs["free"]) as traj:
        theta, times = traj.phase[()], traj.times
    for report in (small, whole):
        assert np.allclose(report.r, np.abs(np.exp(1j * theta).mean(-1)), atol=1e-12)
        assert np.allclose(report.omega_eff, np.stack([np.polyfit(times[4:], theta[4:, k], 1)[0] for k in range(2)]),
                           atol=1e-9)
        assert np.allclose(report.potential, small.potential)


def test_memory_stays_flat_in_frames(tmp_path):
    rng = np.random.default_rng(0)

    def peak(frames: int) -> int:
        path = synthetic(tmp_path / f"m{frames}.h5", rng.uniform(0, 6, (frames, 1, 256)))
        tracemalloc.start()
        analyze_order(path, chunk_frames=64, transient=0.0)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(500), peak(4000)
    full = 4000 * 256 * 8  # the whole phase array of the large file, 8 MB
    assert large < full / 4 and large < 2 * small


def test_partial_file_is_analysed_up_to_its_last_frame_with_a_warning(runs, tmp_path):
    partial = tmp_path / "partial.h5"
    shutil.copy(runs["twisted"], partial)
    with h5py.File(partial, "r+") as f:  # what a run killed after its 6th frame leaves
        for name in ("particles/oscillators/phase/value", "particles/oscillators/phase/step",
                     "particles/oscillators/phase/time", "observables/order_parameter/value",
                     "observables/mean_phase/value"):
            f[name].resize(6, axis=0)
    result = invoke("analyze", "order", partial, "--json")
    assert result.exit_code == 0 and "holds 6 of 11 frames" in result.stderr
    out = json.loads(result.stdout)
    assert out["n_frames"] == 6 and out["warnings"] and out["t_final"] == pytest.approx(2.5)


def test_wrapped_phase_files_are_unwrapped_between_frames(tmp_path):
    times = np.linspace(0, 10, 101)
    omega = np.array([0.5, -1.5, 2.0])
    wrapped = np.mod(omega[None, None] * times[:, None, None], 2 * math.pi)
    path = tmp_path / "wrapped.h5"
    with TrajectoryWriter(path, unwrapped=False) as w:
        w.add_particles("oscillators", n_replicas=1, n_nodes=3, dtype=np.float64)
        w.append("oscillators", np.arange(times.size), times, wrapped)
    report = analyze_order(path, chunk_frames=7, transient=0.0)
    assert np.allclose(report.omega_eff[0], omega, atol=1e-9)
    assert any("wrapped phases" in w for w in report.warnings)


@pytest.mark.parametrize(("args", "reason"), [
    (["--topology", "ring", "--frustration", "0.3"], "frustration"),
    (["--topology", "chain", "--normalization", "degree"], "not symmetric"),
])
def test_potential_is_refused_for_non_gradient_systems(tmp_path, args, reason):
    run = simulate(tmp_path / "p.h5", *args, "--n", "12", "--coupling", "1", "--steps", "10")
    pot = analyze_json("order", run)["replicas"][0]["potential"]
    assert pot["defined"] is False and reason in pot["reason"]
    assert analyze_json("order", run)["replicas"][0]["series"]["potential"] is None


def test_the_analysis_library_imports_no_cli_plotting_or_torch():
    import subprocess
    import sys

    code = ("import sys, lotsim.analysis, lotsim.observables; "
            "bad = {'typer', 'rich', 'matplotlib', 'torch'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
