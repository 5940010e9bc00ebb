"""`lotsim train`, `lotsim eval` and `lotsim analyze run` through typer's CliRunner: a tiny run end to end,
the run folder's contents, --json, resume, and one-line user errors with exit code 2."""

from __future__ import annotations

import json

import h5py
import pytest

from tests.conftest import invoke

TINY = ["--set", "task.length=4", "--set", "task.n_symbols=6", "--set", "model.d_model=16", "--set", "model.n_heads=4",
        "--steps", "6", "--set", "train.batch_size=4", "--set", "train.eval_every=3", "--set", "train.eval_batches=2",
        "--set", "train.test_batches=2", "--set", "train.telemetry_every=2", "--set", "train.telemetry_sequences=2",
        "--set", "train.warmup_steps=1", "--set", "train.log_every=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", *TINY, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_dir"] == str(out) and summary["finished"] and summary["steps"] == 6
    assert {"loss", "token_accuracy", "exact_match", "sync_order"} <= set(summary["test"])
    assert summary["test"]["split"] == "test"
    return out


def test_run_folder_contents(run_dir):
    for name in ("recipe.resolved.toml", "metrics.jsonl", "metrics.json", "telemetry.h5", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in lines if r["split"] == "validation"] == [3, 6]
    assert all("layer_00/order_parameter" in r for r in lines if r["split"] == "telemetry")
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["split"] == "test" and final["attention"] == "lattice"
    assert final["recipe_name"] == "copy_reverse_lattice"
    with h5py.File(run_dir / "telemetry.h5") as f:
        assert list(f["particles/layer_00/phase/step"][()]) == [0, 2, 4, 6]
        assert f["particles/layer_00/phase/value"].shape == (4, 4, 2 * 8)  # frames, heads, probe tokens (H5MD)
        assert f["observables/layer_01/order_parameter/value"].shape == (4, 16)
        assert "task" in f["parameters"].attrs["recipe_toml"]


def test_eval_writes_its_own_file(run_dir):
    result = invoke("eval", run_dir, "--split", "validation", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["split"] == "validation" and metrics["checkpoint"].endswith("best.pt")
    assert {"loss", "token_accuracy", "exact_match", "sync_order", "sync_order_per_layer"} <= set(metrics)
    assert set(metrics["sync_order_per_layer"]) == {"layer_00", "layer_01"}
    assert json.loads((run_dir / "eval-validation.json").read_text()) == metrics
    table = invoke("eval", run_dir / "checkpoints" / "last.pt", "--batches", "1", "--out", run_dir / "e.json")
    assert table.exit_code == 0 and "exact_match" in table.stdout
    assert json.loads((run_dir / "e.json").read_text())["batches"] == 1


def test_analyze_run_plot_and_json(run_dir):
    result = invoke("analyze", "run", run_dir, "--json", "--plot")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    layer = summary["layers"]["layer_00"]
    assert layer["steps"] == [0, 2, 4, 6] and layer["heads"] == 4
    assert all(0 <= r <= 1 for r in layer["order_parameter"])
    assert len(layer["head_local_order"]) == 4 and len(layer["head_local_order"][0]) == 4
    assert summary["validation"]["steps"] == [3, 6]
    assert (run_dir / "plots" / "sync_order.png").stat().st_size > 1000
    assert (run_dir / "plots" / "sync_order.json").is_file()


def test_resume_a_stopped_run_from_the_cli(tmp_path):
    out = tmp_path / "run"
    first = invoke("train", *TINY, "--set", "train.stop_at=3", "--out", out, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["finished"] is False
    again = invoke("train", *TINY, "--out", out)
    assert again.exit_code == 2 and "--resume" in again.stderr
    rest = invoke("train", "--resume", out, "--json")
    assert rest.exit_code == 0, rest.output
    assert json.loads(rest.stdout)["steps"] == 6


@pytest.mark.parametrize("args, needle", [
    (["train", "--set", "train.lerning_rate=1"], "train.lerning_rate"),
    (["train", "missing.toml"], "missing.toml"),
    (["train", "--set", "model.n_heads=3"], "n_heads=3"),
    (["train", "--resume", "no/such/run"], "no checkpoints/last.pt"),
    (["eval", "no/such/checkpoint.pt"], "does not exist"),
    (["eval", ".", "--split", "train"], "never the training split"),
    (["compare", "--arms", "vanilla,warp"], "warp"),
    (["compare", "--arms", "vanilla:no-oscillator"], "vanilla allows: none"),
    (["compare", "--lr-sweep", "fast"], "--lr-sweep"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, needle):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_analyze_run_without_telemetry_is_a_user_error(tmp_path):
    result = invoke("analyze", "run", tmp_path)
    assert result.exit_code == 2 and "telemetry.h5" in result.stderr


def test_eval_with_interventions_changes_the_metrics_and_refuses_unknown_names(run_dir):
    base = json.loads(invoke("eval", run_dir, "--split", "validation", "--json", "--overwrite").stdout)
    forced = invoke("eval", run_dir, "--split", "validation", "--intervene", "gain=5", "--json", "--overwrite")
    assert forced.exit_code == 0, forced.output
    forced = json.loads(forced.stdout)
    assert forced["interventions"] == ["gain=5"] and forced["loss"] != base["loss"]
    bad = invoke("eval", run_dir, "--intervene", "nonsense=1")
    assert bad.exit_code == 2 and "nonsense" in bad.stderr
