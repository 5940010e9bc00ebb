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
from lotsim.train.compare import arm_recipes, difference, parse_arms, run_comparison

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
