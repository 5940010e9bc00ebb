"""``lotsim analyze head-lattice``: a trained layer's head lattice -> a recipe that lotsim simulate runs."""

from __future__ import annotations

import json

import tomli_w
import torch
from typer.testing import CliRunner

from lotsim.cli import app
from lotsim.model import LOTModel, ModelConfig
from lotsim.train.checkpoint import save_checkpoint

runner = CliRunner()


def run_folder(tmp_path, attention: str = "lattice"):
    torch.manual_seed(0)
    model = LOTModel(ModelConfig(vocab_size=11, seq_len=8, d_model=16, n_layers=2, n_heads=4, attention=attention))
    recipe = {"name": "tiny", "seed": 0, "task": {"kind": "copy_reverse", "length": 4},
              "model": model.config.model_dump(mode="json", exclude_none=True)}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt",
                    {"model": model.state_dict(), "recipe": tomli_w.dumps(recipe), "step": 3})
    return tmp_path / "run"


def test_export_a_head_lattice_and_simulate_it(tmp_path):
    run = run_folder(tmp_path)
    result = runner.invoke(app, ["analyze", "head-lattice", str(run), "--layer", "1", "--steps", "40", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    folder = run / "head_lattice_layer1"
    assert summary["recipe"] == str(folder / "simulate.toml") and all(map(lambda p: (folder / p).is_file(),
                                                                          ("edges.txt", "omega.npy")))
    simulated = runner.invoke(app, ["simulate", summary["recipe"], "--out", str(tmp_path / "heads.h5"), "--json"])
    assert simulated.exit_code == 0, simulated.output
    assert json.loads(simulated.stdout)["n"] == 4 and json.loads(simulated.stdout)["steps"] == 40
    again = runner.invoke(app, ["analyze", "head-lattice", str(run), "--layer", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert runner.invoke(app, ["analyze", "head-lattice", str(run), "--layer", "1", "--overwrite"]).exit_code == 0


def test_head_lattice_user_errors_are_one_line(tmp_path):
    for args, needle in [(["--layer", "7"], "--layer 7"), (["--steps", "0"], "--steps")]:
        result = runner.invoke(app, ["analyze", "head-lattice", str(run_folder(tmp_path / needle[2:6])), *args])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr
    vanilla = runner.invoke(app, ["analyze", "head-lattice", str(run_folder(tmp_path / "v", "vanilla"))])
    assert vanilla.exit_code == 2 and len(vanilla.stderr.strip().splitlines()) == 1, vanilla.stderr
