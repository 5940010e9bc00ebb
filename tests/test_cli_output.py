"""What the command line prints: tables that never break a number, the run folder printed once."""

from __future__ import annotations

import importlib
import io
import re

from rich.console import Console
from typer.testing import CliRunner

import lotsim
from lotsim.cli import _common, app

train_cli = importlib.import_module("lotsim.cli.train")  # the module (lotsim.cli.train is also the command)

runner = CliRunner()


def test_analyze_tables_keep_every_number_whole_on_a_narrow_terminal(tmp_path, monkeypatch):
    path = tmp_path / "sweep.h5"
    lotsim.simulate(out=path, topology="ring", n=12, coupling=[0.123456, 2.5], steps=40,
                    frequencies={"dist": "gaussian", "width": 0.3})
    narrow = Console(file=io.StringIO(), width=40)
    monkeypatch.setattr(_common, "stdout", narrow)
    result = runner.invoke(app, ["analyze", "order", str(path)])
    assert result.exit_code == 0, result.output
    text = narrow.file.getvalue()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "…" not in text
    cells = [cell.strip() for cell in rows[0].strip("│").split("│")]
    assert cells[1] == "0.1235" and all(re.fullmatch(r"-?[0-9.e+-]*|n/a", c) for c in cells), cells
    assert narrow.width == 40  # the console is left as it was


def test_training_prints_the_run_folder_once(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(train_cli, "stderr", Console(file=buffer, width=200))
    monkeypatch.setattr(train_cli, "stdout", Console(file=io.StringIO(), width=200))
    progress = train_cli._Progress(enabled=True)
    progress({"event": "start", "run_dir": "outputs/x/1", "parameters": {"total": 10, "non_embedding": 5},
              "tokens_per_step": 64, "device": "cpu", "world_size": 1, "steps": 2, "start_step": 0})
    test = {"loss": 1.0, "sequences": 4, "step": 2}
    recipe = type("Recipe", (), {"name": "tiny"})()
    train_cli._print_result({"test": test, "steps": 2, "wall_time_s": 1.0, "tokens_per_s": 10.0,
                             "run_dir": "outputs/x/1"}, recipe)
    assert buffer.getvalue().count("outputs/x/1") == 1


COMMANDS = (["simulate"], ["sweep"], ["train"], ["eval"], ["export"], ["generate"], ["compare"],
            ["analyze", "order"], ["analyze", "defects"], ["analyze", "run"], ["analyze", "copy-depth"],
            ["analyze", "head-lattice"])


def test_no_command_shows_a_type_beside_a_flag():
    for command in COMMANDS:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)
        assert "--help" in result.stdout
        assert "<bool>" not in result.stdout, command
