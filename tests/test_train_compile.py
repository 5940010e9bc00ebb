"""``train.compile``: the training steps through ``torch.compile`` learn what the eager steps learn.

Slow (a CPU compilation takes tens of seconds); the speed it buys is measured by
benchmarks/bench_train.py, never asserted here.
"""

from __future__ import annotations

import pytest
import torch

from lotsim.train import load_training_recipe, train

TINY = ["task.length=4", "task.n_symbols=6", "model.d_model=16", "model.n_heads=4", "model.n_layers=1",
        "model.attention=vanilla", "train.steps=3", "train.batch_size=4", "train.eval_every=3",
        "train.eval_batches=1", "train.test_batches=1", "train.warmup_steps=1", "train.telemetry_every=0",
        "output.tensorboard=false"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = train(load_training_recipe(None, TINY), tmp_path / "eager")
    compiled = train(load_training_recipe(None, [*TINY, "train.compile=true"]), tmp_path / "compiled")
    assert compiled.finished and set(compiled.train_losses) == {1, 2, 3}
    for step, loss in eager.train_losses.items():
        assert compiled.train_losses[step] == pytest.approx(loss, rel=1e-4)
    for (name, p), q in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert not name.startswith("_orig_mod")
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_compile_is_a_recipe_option_off_by_default():
    assert load_training_recipe(None, TINY).train.compile is False
    assert load_training_recipe(None, [*TINY, "train.compile=true"]).train.compile is True
