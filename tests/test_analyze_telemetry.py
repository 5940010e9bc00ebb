"""`lotsim analyze order|snapshot|defects --group layer_NN` on a training run's telemetry.h5."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lotsim.cli import app

runner = CliRunner()
TINY = ["--set", "task.length=4", "--set", "task.n_symbols=6", "--set", "model.d_model=16", "--set", "model.n_heads=4",
        "--steps", "4", "--set", "train.batch_size=4", "--set", "train.eval_every=4", "--set", "train.eval_batches=1",
        "--set", "train.test_batches=1", "--set", "train.telemetry_every=2", "--set", "train.telemetry_sequences=2",
        "--set", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory):
    out = tmp_path_factory.mktemp("telemetry") / "run"
    result = runner.invoke(app, ["train", *TINY, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out / "telemetry.h5"


def test_order_of_one_layer(telemetry):
    result = runner.invoke(app, ["analyze", "order", str(telemetry), "--group", "layer_01", "--replica", "2",
                                 "--plot", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["group"] == "layer_01" and summary["n"] == 4 and summary["n_frames"] == 3  # steps 0, 2, 4
    assert 0 <= summary["replicas"][0]["r_final"] <= 1
    assert summary["plots"][0].endswith("telemetry_layer_01_order.png")


def test_snapshot_draws_the_head_lattice(telemetry):
    result = runner.invoke(app, ["analyze", "snapshot", str(telemetry), "--group", "layer_00", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "scatter" and summary["plots"][0].endswith("telemetry_layer_00_snapshot_r0_f2.png")


def test_an_unknown_group_is_one_line(telemetry):
    result = runner.invoke(app, ["analyze", "order", str(telemetry), "--group", "layer_07"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer_07" in lines[0] and "layer_00, layer_01" in lines[0], result.stderr
