"""Copy depth: exact depths and distances on constructed sequences, the bucketed breakdown, the
analysis of a trained model (its total equals the held-out loss) and ``lotsim analyze copy-depth``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lotsim.analysis.copy_depth import (
    DEPTH_LABELS,
    DISTANCE_LABELS,
    CopyDepthTable,
    analyze_copy_depth,
    copy_depths,
    plot_copy_depth,
)
from lotsim.cli import app


def _split(sequence):
    s = torch.tensor([sequence])
    return s[:, :-1], s[:, 1:]


def test_planted_copy_has_known_depths_and_distance():
    prefix = list(range(20))  # distinct tokens: no accidental match
    idx, targets = _split(prefix + [100] + prefix[:10])
    depth, distance = copy_depths(idx, targets)
    # positions 21..29 read prefix[0..8] of the copy and predict prefix[1..9]: depth k + 1, 21 back
    assert depth[0].tolist() == [0] * 21 + list(range(1, 10))
    assert distance[0].tolist() == [0] * 21 + [21] * 9
    table = CopyDepthTable()
    table.add(torch.ones_like(idx, dtype=torch.float), depth, distance, torch.ones_like(idx, dtype=torch.bool))
    counts = {row["bucket"]: row["count"] for row in table.to_dict()["depth"]}
    assert counts == {"0": 21, "1": 1, "2-3": 2, "4-7": 4, "8-15": 2, "16-31": 0, "32+": 0}
    cells = {(c["depth"], c["distance"]): c["count"] for c in table.to_dict()["depth_distance"]}
    assert cells[("4-7", "16-63")] == 4 and sum(cells.values()) == 9


def test_longest_match_wins_and_ties_go_to_the_nearest_occurrence():
    # "a b c X | b c X" then "a b c ?" : at the last c, "a b c" matched 8 back (depth 3), "b c" 4 back (depth 2)
    a, b, c, x, y = 1, 2, 3, 4, 5
    idx, targets = _split([a, b, c, x, y, b, c, x, a, b, c, x])
    depth, distance = copy_depths(idx, targets)
    assert depth[0, -1] == 3 and distance[0, -1] == 8
    idx, targets = _split([a, b, x, a, b, x, a, b, x])  # periodic: the nearest occurrence, 3 back
    depth, distance = copy_depths(idx, targets)
    assert depth[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5] and distance[0].tolist() == [0, 0, 0, 3, 3, 3, 3, 3]


def test_constant_sequence_and_ignored_targets():
    idx = torch.zeros(2, 40, dtype=torch.long)
    targets = torch.zeros_like(idx)
    targets[1] = -100  # ignored targets never match a token
    depth, distance = copy_depths(idx, targets)
    assert depth[0].tolist() == list(range(40)) and (distance[0, 1:] == 1).all()
    assert (depth[1] == 0).all() and (distance[1] == 0).all()
    scored = targets != -100
    table = CopyDepthTable()
    table.add(torch.arange(80, dtype=torch.float).view(2, 40), depth, distance, scored)
    rows = {r["bucket"]: r for r in table.to_dict()["depth"]}
    assert rows["32+"]["count"] == 8 and rows["32+"]["loss_mean"] == pytest.approx(np.mean(range(32, 40)))
    assert table.to_dict()["scored_tokens"] == 40


def test_depths_match_a_brute_force_reference_on_random_sequences():
    rng = np.random.default_rng(0)
    seq = torch.as_tensor(rng.integers(0, 3, size=(3, 65)))
    idx, targets = seq[:, :-1], seq[:, 1:]
    depth, distance = copy_depths(idx, targets)
    for row in range(3):
        x, y = idx[row].tolist(), targets[row].tolist()
        for t in range(len(x)):
            best, where = 0, 0
            for j in range(t - 1, -1, -1):  # nearest first: ties keep the nearest
                if x[j + 1] != y[t]:
                    continue
                d = 0
                while j - d >= 0 and x[j - d] == x[t - d]:
                    d += 1
                if d > best:
                    best, where = d, t - j
            assert (depth[row, t], distance[row, t]) == (best, where), (row, t)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from lotsim.train import load_training_recipe, train

    folder = tmp_path_factory.mktemp("copy_depth")
    text = folder / "text.txt"
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "the end."]
    text.write_text(" ".join(rng.choice(words, size=2000)) + "\n")
    recipe = load_training_recipe(None, ['task.kind="char_lm"', f'task.path="{text}"', "task.seq_len=32",
                                         "model.d_model=16", "model.n_heads=4", "train.steps=6", "train.batch_size=4",
                                         "train.eval_every=3", "train.eval_batches=2", "train.test_batches=3",
                                         "train.telemetry_every=0", "train.warmup_steps=1",
                                         "output.tensorboard=false"])
    train(recipe, folder / "run")
    return folder / "run"


def test_analysis_of_a_trained_model_sums_to_its_held_out_loss(trained_run):
    from lotsim.train import evaluate_checkpoint

    result = analyze_copy_depth(trained_run, split="test")
    reference = evaluate_checkpoint(trained_run, "test")
    assert result["scored_tokens"] == reference["scored_tokens"]
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert [r["bucket"] for r in result["depth"]] == DEPTH_LABELS and result["distance_buckets"] == DISTANCE_LABELS
    assert sum(r["count"] for r in result["depth"]) == result["scored_tokens"]
    assert result["depth"][1]["count"] > 0  # repeated words: copy events exist
    path = plot_copy_depth({"a": result}, trained_run / "cd.png")
    assert path.stat().st_size > 0


def test_analyze_copy_depth_cli(trained_run, tmp_path):
    runner = CliRunner()
    figure = str(tmp_path / "c.png")
    result = runner.invoke(app, ["analyze", "copy-depth", str(trained_run), "--json", "--plot", figure])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["split"] == "validation" and summary["plots"] == [str(tmp_path / "c.png")]
    assert (tmp_path / "c.png").is_file()
    table = runner.invoke(app, ["analyze", "copy-depth", str(trained_run / "checkpoints" / "best.pt"), "--split",
                                "test", "--batches", "1"], terminal_width=200)
    assert table.exit_code == 0 and "32+" in table.stdout
    bad = runner.invoke(app, ["analyze", "copy-depth", str(trained_run), "--split", "train"])
    assert bad.exit_code == 2 and "--split 'train'" in bad.output
    none = runner.invoke(app, ["analyze", "copy-depth", str(trained_run), "--batches", "0"])
    assert none.exit_code == 2 and "max_batches=0" in none.output
    missing = runner.invoke(app, ["analyze", "copy-depth", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
