"""What the analysis figures show, read from the matplotlib objects: axis ranges, labels, scales,
the artists drawn. Each test pins one thing a reader of a paper figure relies on."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection

import lotsim
from lotsim.analysis import analyze_defects, analyze_order, analyze_transition, plots
from lotsim.analysis.telemetry import plot_run_telemetry


@pytest.fixture
def figures(monkeypatch):
    """Figures handed to the writer, in order (nothing is written)."""
    captured = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem, *a, **k: captured.append((stem, fig)) or [])
    return captured


def run(path, **keys):
    lotsim.simulate(out=path, **keys)
    return path


def test_sakaguchi_frequency_panel_shows_the_locked_clusters(tmp_path, figures):
    path = run(tmp_path / "sakaguchi.h5", topology="complete", n=60, coupling=[1.0, 4.0], t_max=60, dt=0.1,
               frequencies={"dist": "gaussian", "width": 0.2}, frustration=[1.2])
    report = analyze_order(path, transient=30)
    plots.plot_order(report, tmp_path)
    ax_w = figures[0][1].axes[1]
    lo, hi = ax_w.get_ylim()
    clusters = [f for c in report.clusters for f in c.frequencies]
    assert clusters and min(clusters) < -1.0  # frustration drags the cluster far below the natural frequencies
    assert all(lo <= f <= hi for f in clusters)
    assert ax_w.get_xlim()[1] < 1.0  # the x range stays on the natural frequencies


def test_time_axis_says_units_of_one_over_omega_only_when_omega_has_a_scale(tmp_path, figures):
    identical = run(tmp_path / "identical.h5", topology="ring", n=16, coupling=1.0, steps=40,
                    frequencies={"dist": "constant", "mean": 0.0})
    spread = run(tmp_path / "spread.h5", topology="ring", n=16, coupling=1.0, steps=40,
                 frequencies={"dist": "gaussian", "width": 0.3})
    plots.plot_order(analyze_order(identical), tmp_path)
    plots.plot_order(analyze_order(spread), tmp_path)
    labels = [fig.axes[0].get_xlabel() for stem, fig in figures if stem.endswith("_order")]
    assert labels == ["time t", "time t (units of 1/ω)"]


@pytest.mark.parametrize(("keys", "periodic"), [
    ({"topology": "small-world", "n": 20, "k": 4}, False),
    ({"topology": "ring", "n": 20}, False),
    ({"topology": "square", "shape": (4, 4)}, True),
])
def test_titles_say_periodic_only_on_grids(tmp_path, keys, periodic):
    path = run(tmp_path / "x.h5", coupling=1.0, steps=10, **keys)
    label = analyze_order(path).info.label
    assert ("periodic" in label) == periodic and "open" not in label


def test_defect_density_axis_counts_what_the_json_counts_on_log_log_axes(tmp_path, figures):
    path = run(tmp_path / "coarsening.h5", topology="square", shape=(24, 24), coupling=1.0, normalization="none",
               t_max=30, dt=0.1, save_every=10, frequencies={"dist": "constant"})
    report = analyze_defects(path)
    plots.plot_defects(report, tmp_path)
    fig = figures[0][1]
    ax_d = fig.axes[1]
    assert ax_d.get_xscale() == "log" and ax_d.get_yscale() == "log"
    assert "vortices + antivortices" in ax_d.get_ylabel()
    line = ax_d.lines[0]
    density = report.to_dict()["replicas"][0]["series"]["density"]
    assert line.get_ydata()[-1] == pytest.approx(density[-1])
    both = report.vortices[-1, 0] + report.antivortices[-1, 0]
    assert report.density[-1, 0] == pytest.approx(both / report.n_faces)
    assert not any(getattr(ax, "_functions", None) for ax in fig.axes)  # no one-sign secondary density axis


@pytest.mark.parametrize("topology", ["hexagonal", "triangular"])
def test_bonds_are_drawn_on_hexagonal_and_triangular_snapshots(tmp_path, figures, topology):
    path = run(tmp_path / f"{topology}.h5", topology=topology, shape=(4, 6), coupling=1.0, steps=10)
    plots.plot_snapshot(path)
    ax = figures[0][1].axes[0]
    bonds = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bonds) == 1
    segments = np.asarray(bonds[0].get_segments())
    lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    assert segments.shape[0] > 20 and lengths.max() <= 1.5 * np.median(lengths)  # wrap-around bonds left out


def test_spacetime_diagram_is_in_the_corotating_frame(tmp_path, figures):
    # identical oscillators turning at omega = 7 in sync: a fast common rotation that aliases in the lab frame
    path = run(tmp_path / "rotating.h5", topology="ring", n=32, coupling=1.0, t_max=20, dt=0.05, save_every=3,
               frequencies={"dist": "constant", "mean": 7.0}, initial={"kind": "twisted", "twist": 1})
    result = plots.plot_spacetime(path)
    assert result["frame_frequency"] == pytest.approx(7.0, rel=1e-9)
    image = figures[0][1].axes[0].images[0].get_array()
    assert np.ptp(np.asarray(image), axis=0).max() < 1e-9  # each node's phase is constant in this frame
    assert "co-rotating" in figures[0][1].axes[0].get_title()
    plots.plot_spacetime(path, corotating=False)
    lab = np.asarray(figures[1][1].axes[0].images[0].get_array())
    assert np.ptp(lab, axis=0).max() > 1.0


def test_ring_order_plots_include_the_effective_frequency_profile(tmp_path, figures):
    path = run(tmp_path / "ring.h5", topology="ring", n=24, coupling=[0.5, 3.0], t_max=20,
               frequencies={"dist": "gaussian", "width": 0.3})
    report = analyze_order(path)
    plots.plot_order(report, tmp_path)
    stems = [stem for stem, _ in figures]
    assert stems[-1] == "ring_frequency_profile"
    ax = figures[-1][1].axes[0]
    assert ax.get_xlabel() == "node j" and "effective frequency" in ax.get_ylabel()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), report.omega_eff[0])


def test_inertia_transition_is_not_fitted_as_a_continuous_onset(tmp_path, figures):
    keys = dict(topology="complete", n=40, coupling="0:4:5", t_max=20, dt=0.1,
                frequencies={"dist": "lorentzian", "width": 0.5})
    inertial = run(tmp_path / "inertia.h5", inertia=1.0, **keys)
    plain = run(tmp_path / "plain.h5", **keys)
    first = analyze_transition([inertial], n_boot=20)
    summary = first.to_dict()
    assert summary["kc_estimate"] is None and "inertia" in summary["first_order"]
    plots.plot_transition(first, tmp_path)
    plots.plot_transition(analyze_transition([plain], n_boot=20), tmp_path)
    labels = [[line.get_label() for line in fig.axes[0].lines] for _, fig in figures]
    assert not any(lab.startswith(("K_c fit", "onset fit")) for lab in labels[0])
    assert any(lab.startswith("K_c fit") for lab in labels[1])
    assert "first order" in figures[0][1].axes[0].get_title()


def test_a_hysteretic_adiabatic_sweep_is_first_order(tmp_path):
    path = run(tmp_path / "plain.h5", topology="complete", n=40, coupling="0:4:5", t_max=10)
    report = analyze_transition([path], n_boot=20)
    report.adiabatic = {"couplings": report.couplings.tolist(), "forward": [0.1, 0.1, 0.1, 0.9, 0.9],
                        "backward": [0.1, 0.9, 0.9, 0.9, 0.9]}
    assert "hysteresis" in report.first_order
    report.adiabatic["backward"] = report.adiabatic["forward"]
    assert report.first_order is None


def test_training_plot_has_train_and_validation_loss_on_a_log_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", lambda fig: closed.append(fig))
    layer = {"steps": [0, 10], "order_parameter": [0.2, 0.4], "order_parameter_sd": [0.1, 0.1],
             "head_token_coherence": [[0.5, 0.5], [0.6, 0.6]], "head_local_order": None, "heads": 2,
             "final_order_parameter": 0.4}
    summary = {"run_dir": str(tmp_path), "layers": {"layer_00": layer},
               "validation": {"steps": [10], "loss": [1.5]}, "train": {"steps": [5, 10], "loss": [2.3, 1.4]}}
    plot_run_telemetry(summary, tmp_path / "x.png")
    ax = closed[0].axes[2]
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.lines] == ["train (logged steps)", "validation"]
