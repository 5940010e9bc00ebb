"""docs/python.md is executable: every ```python block runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_python_docs_examples_run(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "did you mean 'topology'" in out and "K_c = " in out
    assert (tmp_path / "runs" / "sweep.h5").is_file()


def test_the_readme_python_example_runs(monkeypatch, tmp_path):
    """The README's Python block, as printed; its checkpoint placeholder points at a tiny trained run."""
    from lotsim.train import load_training_recipe, train

    monkeypatch.chdir(tmp_path)
    readme = (DOC.parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert '"outputs/<run>"' in block
    recipe = load_training_recipe(None, ["model.d_model=16", "model.n_heads=2", "train.steps=2", "train.batch_size=2",
                                         "train.eval_every=2", "train.eval_batches=1", "train.test_batches=1",
                                         "train.telemetry_every=0", "train.warmup_steps=0",
                                         "output.tensorboard=false"])
    train(recipe, tmp_path / "run")
    namespace: dict = {}
    exec(compile(block.replace('"outputs/<run>"', repr(str(tmp_path / "run"))), "README.md", "exec"), namespace)
    assert namespace["run"].theta.shape[1:] == (1, 64 * 64)
    assert namespace["omega_eff"].shape == (1, 64 * 64) and "node" in namespace["ds"].dims
    assert namespace["model"].model.config.d_model == 16 and namespace["model"].step == 2
