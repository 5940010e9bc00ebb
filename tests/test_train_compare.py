"""`lotsim compare`: parameter matching, shared seeds and data, lr selection on validation, the
statistics against scipy, ablation arms, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

import lotsim
from lotsim.cli import app
from lotsim.train import load_checkpoint, load_training_recipe
from lotsim.train.compare import arm_recipes, parse_arms, run_comparison
from lotsim.train.compare_report import difference

TINY = ["task.length=4", "task.n_symbols=6", "model.d_model=16", "model.n_heads=4", "train.steps=4",
        "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.test_batches=2",
        "train.telemetry_every=0", "train.warmup_steps=1", "output.tensorboard=false"]


def test_difference_matches_scipy_paired_and_welch():
    a, b = [3.12, 3.08, 3.15, 3.10, 3.05], [3.18, 3.16, 3.21, 3.12, 3.19]
    d = difference(a, b)
    rel, welch = stats.ttest_rel(a, b), stats.ttest_ind(a, b, equal_var=False)
    assert d["mean_difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["paired"]["p"] == pytest.approx(rel.pvalue) and d["welch"]["p"] == pytest.approx(welch.pvalue)
    assert d["paired"]["ci"] == pytest.approx(list(rel.confidence_interval()))
    assert d["welch"]["ci"] == pytest.approx([-0.125, -0.019], abs=1e-3)  # scipy Welch CI
    assert d["welch"]["df"] == pytest.approx(7.91, abs=0.01)
    same = difference([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])  # no spread: no p, a degenerate CI
    assert same["paired"]["p"] is None and same["paired"]["ci"] == [0.0, 0.0]


def test_arms_are_parameter_matched_and_ablations_configured():
    base = load_training_recipe(None, TINY)
    arms = parse_arms("vanilla,lattice,lattice:no-oscillator,lattice:frozen-phases,lattice:no-coupling")
    recipes, params = arm_recipes(base, arms)
    lattice = params["lattice"]["total"]
    for name, p in params.items():
        assert abs(p["total"] - lattice) <= 0.02 * lattice, name
        assert p["non_embedding"] < p["total"]
    assert recipes["vanilla"].model.attention == "vanilla" and recipes["vanilla"].model.attention_options == {}
    assert recipes["vanilla"].model.d_ff != recipes["lattice"].model.d_ff  # sized up to match
    assert recipes["lattice:no-oscillator"].model.options().gain_init == 0.0
    assert "blocks.*.attn.gain" in recipes["lattice:no-oscillator"].train.freeze
    assert {"blocks.*.attn.omega", "blocks.*.attn.phase.weight"} <= set(recipes["lattice:frozen-phases"].train.freeze)
    assert recipes["lattice:no-coupling"].model.options().coupling_init == 0.0


def test_every_variant_declares_its_own_ablations():
    base = load_training_recipe(None, TINY)
    recipes, _ = arm_recipes(base, parse_arms("vanilla,pma:no-oscillator,fsn:no-delay"))
    assert recipes["pma:no-oscillator"].model.options().gate_init == 0.0
    assert "blocks.*.attn.gate" in recipes["pma:no-oscillator"].train.freeze
    with pytest.raises(ValueError, match="vanilla allows: none"):
        parse_arms("vanilla:no-oscillator")
    with pytest.raises(ValueError, match="unknown ablation 'bogus'"):
        parse_arms("lattice:bogus")


def test_comparison_runs_every_arm_lr_and_seed_and_reports(tmp_path):
    base = load_training_recipe(None, TINY)
    arms = parse_arms("vanilla,lattice,lattice:no-oscillator")
    events = []
    report = run_comparison(base, arms, [0, 1], tmp_path, lrs=[1e-3, 3e-3], callback=events.append)
    assert sum(e["event"] == "run_done" for e in events) == 3 * 2 * 2
    assert report["baseline"] == "vanilla" and report["seeds"] == [0, 1]
    lattice = report["arms"]["lattice"]
    assert lattice["lr"] in (1e-3, 3e-3) and set(lattice["lr_sweep"]) == {"0.001", "0.003"}
    best = min(lattice["lr_sweep"], key=lattice["lr_sweep"].get)  # chosen on VALIDATION loss
    assert float(best) == lattice["lr"]
    for metric in ("loss", "token_accuracy", "exact_match"):
        m = lattice["metrics"][metric]
        assert m["n"] == 2 and len(m["values"]) == 2 and "paired" in m["vs_baseline"] and "welch" in m["vs_baseline"]
        assert m["mean"] == pytest.approx(np.mean(m["values"]))
    assert "sync_order" in lattice["metrics"] and "sync_order" not in report["arms"]["vanilla"]["metrics"]
    assert "vs_baseline" not in report["arms"]["vanilla"]["metrics"]["loss"]
    for name in ("report.json", "report.md", "comparison.png", "recipe.base.toml"):
        assert (tmp_path / name).is_file(), name
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["arms"].keys() == report["arms"].keys() and stored["lotsim_version"] == lotsim.__version__
    assert "paired" in (tmp_path / "report.md").read_text()
    # the same seed of two arms saw the same data: identical first validation batch, same init seed
    run = tmp_path / "runs" / "lattice:no-oscillator" / f"lr{lattice['lr']:g}" / "seed1" / "checkpoints" / "last.pt"
    state = load_checkpoint(run)
    assert all(torch.all(v == 0) for k, v in state["model"].items() if k.endswith("attn.gain"))  # stays off
    # finished runs are reused: a second call trains nothing
    again = []
    run_comparison(base, arms, [0, 1], tmp_path, lrs=[1e-3, 3e-3], callback=again.append, plot=False)
    assert not any(e["event"] == "train" for e in again)


def test_compare_cli_json(tmp_path):
    args = ["compare", "--arms", "vanilla,lattice", "--seeds", "2", "--out", str(tmp_path), "--json"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["arms"]) == {"vanilla", "lattice"} and report["arms"]["lattice"]["metrics"]["loss"]["n"] == 2
    assert report["arms"]["vanilla"]["parameters"]["relative_to_reference"] == pytest.approx(0, abs=0.02)


def test_parallel_jobs_give_the_same_report_as_one_at_a_time(tmp_path):
    base = load_training_recipe(None, TINY)  # train.threads = 1: the same arithmetic in every process
    arms = parse_arms("vanilla,lattice")
    serial = run_comparison(base, arms, [0, 1], tmp_path / "serial", plot=False)
    events = []
    parallel = run_comparison(base, arms, [0, 1], tmp_path / "parallel", plot=False, jobs=2, callback=events.append)
    for arm in ("vanilla", "lattice"):
        for metric, summary in serial["arms"][arm]["metrics"].items():
            assert parallel["arms"][arm]["metrics"][metric]["values"] == summary["values"], (arm, metric)
    done = [e for e in events if e["event"] == "run_done"]
    assert sorted(e["index"] for e in done) == [1, 2, 3, 4] and done[-1]["total"] == 4
    with pytest.raises(ValueError, match="jobs=0"):
        run_comparison(base, arms, [0], tmp_path / "bad", jobs=0)


def test_an_interrupted_worker_reports_where_to_resume():
    import pickle

    from lotsim.train.loop import TrainingInterrupted

    err = pickle.loads(pickle.dumps(TrainingInterrupted("runs/x", 7)))
    assert (err.run_dir, err.step) == ("runs/x", 7) and "step 7" in str(err)


def test_tuning_sweeps_each_arm_on_validation_then_runs_its_best_rate(tmp_path, monkeypatch):
    from lotsim.tasks.copy_reverse import CopyReverse

    phase, seen = {"now": None}, []
    original = CopyReverse.batch

    def spy(self, split, batch_size, index):
        seen.append((phase["now"], split))
        return original(self, split, batch_size, index)

    monkeypatch.setattr(CopyReverse, "batch", spy)

    def on_event(event):
        if event["event"] == "run":
            phase["now"] = event["phase"]

    base = load_training_recipe(None, TINY)
    arms = parse_arms("vanilla,lattice")
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    report = run_comparison(base, arms, [0, 1], tmp_path, lrs=lrs, tune=True, tune_steps=2, callback=on_event,
                            plot=False)
    assert ("tune", "validation") in seen and ("tune", "train") in seen
    assert ("tune", "test") not in seen  # the test split is never used for tuning
    assert ("full", "test") in seen
    tuning = report["tuning"]
    assert tuning["steps"] == 2 and tuning["seed"] == 0 and tuning["lrs"] == lrs
    for arm in ("vanilla", "lattice"):
        scores = tuning["validation"][arm]
        assert set(scores) == {str(lr) for lr in lrs}
        assert report["arms"][arm]["lr"] == float(min(scores, key=scores.get)) == tuning["chosen"][arm]
        for lr in lrs:  # one short, validation-only run per arm and rate, on the first seed
            run = tmp_path / "tune" / "steps2" / arm / f"lr{lr:g}" / "seed0"
            assert (run / "tuning.json").is_file() and not (run / "metrics.json").exists()
            assert json.loads((run / "tuning.json").read_text())["steps"] == 2
        full = sorted(p.name for p in (tmp_path / "runs" / arm).iterdir())
        assert full == [f"lr{report['arms'][arm]['lr']:g}"]  # the full runs use the chosen rate only
        assert report["arms"][arm]["metrics"]["loss"]["n"] == 2
    assert "Learning-rate sweep: validation after 2 steps, seed 0" in (tmp_path / "report.md").read_text()
    again = []  # resumable: a rerun trains nothing
    run_comparison(base, arms, [0, 1], tmp_path, lrs=lrs, tune=True, tune_steps=2, callback=again.append,
                   plot=False)
    assert not any(e["event"] == "train" for e in again)
    with pytest.raises(ValueError, match="tune_steps=5"):
        run_comparison(base, arms, [0], tmp_path / "bad", tune=True, tune_steps=5)


def test_tuning_recipe_keeps_the_schedule_shape():
    from lotsim.train.compare import TUNE_LRS, tuning_recipe

    base = load_training_recipe(None, ["train.steps=1000", "train.warmup_steps=100", "train.eval_every=500"])
    short = tuning_recipe(base, 250)
    assert (short.train.steps, short.train.warmup_steps, short.train.eval_every) == (250, 25, 250)
    assert len(TUNE_LRS) >= 4 and np.allclose(np.diff(np.log10(TUNE_LRS)), 0.5, atol=0.03)  # half a decade apart


def test_holm_adjustment_and_simultaneous_intervals():
    from lotsim.train.compare_report import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == pytest.approx([0.5, None, 0.02])
    a, b = [3.12, 3.08, 3.15, 3.10, 3.05], [3.18, 3.16, 3.21, 3.12, 3.19]
    d = difference(a, b, family_size=3)
    joint = stats.ttest_rel(a, b).confidence_interval(1 - 0.05 / 3)
    assert d["paired"]["ci_simultaneous"] == pytest.approx([joint.low, joint.high])
    assert d["paired"]["ci_simultaneous"][0] < d["paired"]["ci"][0]
    assert d["paired"]["median_difference"] == pytest.approx(np.median(np.subtract(a, b)))


def test_few_seeds_make_a_screen_with_caveats():
    from lotsim.train.compare_report import screen_caveats

    assert screen_caveats(5) == []
    assert len(screen_caveats(3)) == 1 and "screen" in screen_caveats(3)[0]
    assert any("1 degree of freedom" in c for c in screen_caveats(2))


def test_validation_slope_over_the_last_fifth(tmp_path):
    from lotsim.train.compare_report import validation_slope

    lines = [{"step": s, "split": "validation", "loss": 2.0 - 1e-4 * s} for s in range(0, 1001, 100)]
    lines += [{"step": 1000, "split": "train", "loss": 9.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    slope = validation_slope(tmp_path, 1000)
    assert slope["points"] == 3 and slope["window"] == [800, 1000]
    assert slope["slope_per_1k_steps"] == pytest.approx(-0.1) and slope["change_over_window"] == pytest.approx(-0.02)
    assert validation_slope(tmp_path, 10_000)["slope_per_1k_steps"] is None  # no point in the window


def test_report_statistics_and_sync_order_only_where_phases_act(tmp_path):
    base = load_training_recipe(None, TINY + ["train.eval_every=1", "train.steps=10"])
    report = run_comparison(base, parse_arms("vanilla,lattice,lattice:no-oscillator"), [0, 1], tmp_path)
    assert report["grade"] == "screen" and any("1 degree of freedom" in c for c in report["caveats"])
    assert "sync_order" in report["arms"]["lattice"]["metrics"]
    assert "sync_order" not in report["arms"]["lattice:no-oscillator"]["metrics"]  # its phase term is off
    ps = [report["arms"][a]["metrics"]["loss"]["vs_baseline"]["paired"] for a in ("lattice", "lattice:no-oscillator")]
    from lotsim.train.compare_report import holm

    assert [p["p_holm"] for p in ps] == holm([p["p"] for p in ps])
    conv = report["baseline_convergence"]
    assert conv["arm"] == "vanilla" and conv["window"] == [8, 10] and [s["points"] for s in conv["per_seed"]] == [3, 3]
    slopes = [s["slope_per_1k_steps"] for s in conv["per_seed"]]
    assert conv["slope_per_1k_steps_mean"] == pytest.approx(np.mean(slopes))
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Screen") and "Caveat" in text and "p† Holm" in text and "Δ median" in text


def test_comparison_plot_pairs_seeds_and_shows_the_paired_ci(tmp_path, monkeypatch):
    import matplotlib.figure

    from lotsim.train.compare_report import plot_comparison

    captured = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: captured.setdefault("fig", fig))
    a, b = [1.0, 1.1, 1.2], [0.9, 1.05, 1.0]
    report = {"recipe": "r", "steps": 10, "seeds": [0, 1, 2], "grade": "screen", "baseline": "vanilla",
              "metrics": ["loss"],
              "arms": {"vanilla": {"metrics": {"loss": {"values": b, "mean": float(np.mean(b))}}},
                       "lattice": {"metrics": {"loss": {"values": a, "mean": float(np.mean(a)),
                                                        "vs_baseline": difference(a, b)}}}}}
    plot_comparison(report, tmp_path / "c.png")
    top, bottom = captured["fig"].axes[:2]
    assert top.get_ylabel() == "test loss" and bottom.get_ylabel() == "Δ loss vs vanilla"
    dots = [c.get_offsets() for c in top.collections if len(c.get_offsets()) == 2]  # one scatter per seed
    assert len(dots) == 3
    for k, xy in enumerate(dots):  # seed k sits at the same offset in both arms
        assert xy[1, 0] - xy[0, 0] == pytest.approx(1.0)
        assert list(xy[:, 1]) == [b[k], a[k]]
    joined = [line for line in top.get_lines() if len(line.get_xdata()) == 2]
    assert len(joined) == 3  # paired seeds joined across arms
    (bar,) = [c for c in bottom.containers]
    ci = report["arms"]["lattice"]["metrics"]["loss"]["vs_baseline"]["paired"]["ci"]
    segment = bar.lines[2][0].get_segments()[0]
    assert [segment[0][1], segment[1][1]] == pytest.approx(ci)


def test_compare_help_lists_every_variants_ablations():
    from lotsim.cli.compare import ABLATIONS
    from lotsim.model import available_attentions, get_attention

    registry = "; ".join(f"{a}: " + ", ".join(get_attention(a).ablations) for a in available_attentions()
                         if get_attention(a).ablations)
    assert ABLATIONS == registry, "update ABLATIONS in lotsim/cli/compare.py to the registry's ablations"
    result = CliRunner().invoke(app, ["compare", "--help"], terminal_width=400)
    flat = " ".join(result.stdout.split())
    for part in registry.split("; "):
        for ablation in part.split(": ")[1].split(", "):
            assert ablation in flat
    assert "--tune" in flat and "--tune-steps" in flat and "--copy-depth" in flat
    from lotsim.cli.compare import READINGS

    readings = "; ".join(f"{a}: " + ", ".join(get_attention(a).readings) for a in available_attentions()
                         if get_attention(a).readings)
    assert READINGS == readings, "update READINGS in lotsim/cli/compare.py to the registry's readings"
    assert all(r in flat for part in readings.split("; ") for r in part.split(": ")[1].split(", "))


def test_compare_cli_rejects_tune_steps_without_tune():
    result = CliRunner().invoke(app, ["compare", "--tune-steps", "3"])
    assert result.exit_code == 2 and "--tune-steps needs --tune" in result.output


def test_copy_depth_breakdown_per_arm_in_the_report(tmp_path):
    base = load_training_recipe(None, TINY)
    report = run_comparison(base, parse_arms("vanilla,lattice"), [0, 1], tmp_path, copy_depth=True)
    assert (tmp_path / "copy_depth.png").is_file()
    for arm in ("vanilla", "lattice"):
        breakdown = report["copy_depth"][arm]
        assert breakdown["seeds"] == 2 and breakdown["split"] == "test"
        per_seed = [json.loads((tmp_path / "runs" / arm / "lr0.003" / f"seed{s}" / "copy_depth.test.json").read_text())
                    for s in (0, 1)]
        for i, row in enumerate(breakdown["depth"]):
            known = [b["depth"][i]["loss_mean"] for b in per_seed if b["depth"][i]["loss_mean"] is not None]
            assert row["loss_mean"] == (pytest.approx(np.mean(known)) if known else None)
    assert "## Copy depth" in (tmp_path / "report.md").read_text()


def test_a_best_rate_on_the_edge_of_the_sweep_is_flagged():
    from lotsim.train.compare_report import build_report

    base = load_training_recipe(None, TINY)
    row = {"test": {"loss": 1.0}, "validation_best": 1.0, "tokens_per_s": 1.0, "run_dir": "nowhere", "seed": 0}
    runs = {"vanilla": {1e-3: [row], 3e-3: [row]}}
    params = {"vanilla": {"total": 1, "non_embedding": 1, "d_ff": 1, "relative_to_reference": 0.0}}
    report = build_report(base, runs, {"vanilla": 3e-3}, params, "vanilla", [0], [1e-3, 3e-3, 1e-2])
    assert any("vanilla's best rate 0.003" in c for c in report["caveats"]) is False
    report = build_report(base, runs, {"vanilla": 1e-3}, params, "vanilla", [0], [1e-3, 3e-3, 1e-2])
    assert any("vanilla's best rate 0.001 is the sweep's smallest" in c for c in report["caveats"])


@pytest.mark.slow
def test_tuning_in_parallel_jobs_gives_the_serial_report(tmp_path):
    """~90 s on a loaded 2-core machine (spawned workers import torch)."""
    base = load_training_recipe(None, TINY)
    arms = parse_arms("lattice")
    kwargs = {"lrs": [1e-3, 1e-2], "tune": True, "tune_steps": 2, "plot": False}
    serial = run_comparison(base, arms, [0], tmp_path / "serial", **kwargs)
    parallel = run_comparison(base, arms, [0], tmp_path / "parallel", jobs=2, **kwargs)
    assert parallel["tuning"]["validation"] == serial["tuning"]["validation"]
    for arm in ("lattice",):
        assert parallel["arms"][arm]["lr"] == serial["arms"][arm]["lr"]
        assert parallel["arms"][arm]["metrics"]["loss"]["values"] == serial["arms"][arm]["metrics"]["loss"]["values"]


def test_a_diverged_rate_is_never_chosen():
    from lotsim.train.compare import choose_lr

    runs = {1e-2: [{"validation_best": float("nan")}], 1e-3: [{"validation_best": 2.0}],
            3e-3: [{"validation_best": 1.5}, {"validation_best": None}]}
    assert choose_lr(runs, lower_is_better=True) == 1e-3
    assert choose_lr({1e-2: [{"validation_best": float("nan")}], 1e-3: [{"validation_best": 0.2}]}, False) == 1e-3
    assert choose_lr({1e-3: [{"validation_best": 0.2}], 1e-2: [{"validation_best": 0.5}]}, False) == 1e-2


def test_sigterm_to_a_parallel_comparison_stops_every_worker_with_a_checkpoint(tmp_path):
    """``kill PID`` of ``lotsim compare --jobs 2`` (not the process group): no worker keeps training,
    each stopped run has its checkpoint, and a rerun resumes them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cmp"
    sets = [a for s in [*TINY, "train.steps=100000", "train.log_every=1", "train.checkpoint_every=100000",
                        "train.eval_every=100000"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "lotsim", "compare", "--arms", "vanilla,lattice", "--seeds", "1", "--jobs", "2",
           "--out", str(out), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                            "PYTHONPATH": os.pathsep.join(sys.path)})
    logs = [out / "runs" / arm / "lr0.003" / "seed0" / "metrics.jsonl" for arm in ("vanilla", "lattice")]
    deadline = time.monotonic() + 120
    while not all(p.is_file() and p.stat().st_size > 0 for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    sizes = [p.stat().st_size for p in logs]
    time.sleep(2.0)
    assert [p.stat().st_size for p in logs] == sizes, "a worker kept training after the comparison stopped"
    for log in logs:
        assert (log.parent / "checkpoints" / "last.pt").is_file()


def test_an_ablation_runs_at_its_full_arms_tuned_rate_on_fewer_seeds(tmp_path):
    base = load_training_recipe(None, TINY)
    arms = parse_arms("vanilla,lattice,lattice:no-oscillator")
    report = run_comparison(base, arms, [0, 1, 2], tmp_path, lrs=[1e-3, 1e-2], tune=True, tune_steps=2, plot=False,
                            ablation_seeds=2)
    tuning = report["tuning"]
    assert tuning["inherited"] == {"lattice:no-oscillator": "lattice"}
    assert not (tmp_path / "tune" / "steps2" / "lattice:no-oscillator").exists()  # not tuned
    ablation = report["arms"]["lattice:no-oscillator"]
    assert ablation["lr"] == report["arms"]["lattice"]["lr"] and ablation["full_arm"] == "lattice"
    assert ablation["seeds"] == [0, 1] and report["arms"]["lattice"]["seeds"] == [0, 1, 2]
    loss = ablation["metrics"]["loss"]
    full = report["arms"]["lattice"]["metrics"]["loss"]["values"][:2]
    vanilla = report["arms"]["vanilla"]["metrics"]["loss"]["values"][:2]
    # paired over the ablation's own seeds, against its full arm and against the baseline
    assert loss["vs_full"]["paired"]["median_difference"] == pytest.approx(float(np.median(np.subtract(loss["values"],
                                                                                                        full))))
    assert loss["vs_baseline"]["paired"]["median_difference"] == pytest.approx(
        float(np.median(np.subtract(loss["values"], vanilla))))
    assert loss["vs_full"]["n"] == loss["vs_baseline"]["n"] == 2
    text = (tmp_path / "report.md").read_text()
    assert "## Ablations: loss" in text and "(lattice's)" in text
    assert "lattice:no-oscillator's best rate" not in " ".join(report["caveats"])  # not tuned: no edge to flag
    with pytest.raises(ValueError, match="ablation_seeds=4"):
        run_comparison(base, arms, [0, 1, 2], tmp_path / "bad", ablation_seeds=4)


def test_a_reading_is_tuned_like_any_arm():
    (reading,) = parse_arms("torus:qk")
    (ablation,) = parse_arms("torus:no-coupling")
    assert not reading.is_ablation and ablation.is_ablation


def test_the_verdict_script_runs_every_variant_and_its_ablation_on_both_corpora():
    import re
    import subprocess
    from pathlib import Path

    from lotsim.model import available_attentions

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "arena" / "verdict.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    arms = parse_arms(re.search(r"^arms=(\S+)", text, re.M)[1] + "," + re.search(r"^ablations=(\S+)", text, re.M)[1])
    full = {a.attention for a in arms if not a.is_ablation}
    assert full == set(available_attentions())
    assert {a.attention for a in arms if a.is_ablation} == full - {"vanilla"}
    for name in ("arena_char_lm.toml", "arena_code_lm.toml", "enwik8_1m.toml"):
        assert name in text
    code = load_training_recipe(root / "recipes" / "arena_code_lm.toml")  # the stdlib: on every machine
    assert code.task.level == "byte" and code.model.d_model == 128 and code.task.seq_len == 64
