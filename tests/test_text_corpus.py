"""Directory corpora for the char/byte LM task: whole-file splits in a deterministic order, the
Python standard library as the default code corpus, and the corpus recorded by a run."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lotsim.tasks.text import PYTHON_STDLIB, TextOptions, TextTask, corpus_files, describe_corpus, split_files
from lotsim.train import load_training_recipe


@pytest.fixture
def code_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for i in range(40):  # distinct contents: every file can be found in the token stream
        body = "".join(f"def f{i}_{k}(x):\n    return x * {int(rng.integers(100))}  # é\n" for k in range(5))
        (root / f"mod{i:02d}.py").write_text(body, encoding="utf-8")
    (root / "pkg" / "inner.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("not code\n")
    return root


def test_files_are_sorted_and_globbed(code_dir):
    files = corpus_files(code_dir, "*.py")
    assert [f.name for f in files] == [f"mod{i:02d}.py" for i in range(40)]  # top level only, sorted
    assert (code_dir / "pkg" / "inner.py") in corpus_files(code_dir, "**/*.py")
    with pytest.raises(ValueError, match="no file matching task.glob '\\*.rs'"):
        corpus_files(code_dir, "*.rs")


@pytest.mark.parametrize("level", ["byte", "char"])
def test_splits_are_whole_files(code_dir, level):
    task = TextTask(code_dir, level=level, seq_len=16)
    splits = split_files(code_dir)
    assert all(splits.values()) and sorted(sum(splits.values(), [])) == corpus_files(code_dir)
    assert task.split_kind == "files"
    for split, files in splits.items():  # each split is exactly its files, concatenated in sorted order
        lo, hi = task.ranges[split]
        assert task.decode(task.tokens[lo:hi]) == "".join(f.read_text(encoding="utf-8") for f in files)
        assert files == sorted(files)
    assert task.ranges["train"][1] == task.ranges["validation"][0]
    assert task.ranges["test"][1] == len(task.tokens)
    assert split_files(code_dir) == splits  # deterministic
    n = {s: len(v) for s, v in splits.items()}
    assert n["train"] > n["validation"] >= 1 and n["test"] >= 1


def test_corpus_description_and_options(code_dir):
    d = describe_corpus(code_dir, "*.py")
    assert d["kind"] == "directory" and d["files"] == 40 and d["split_files"]["train"] + 2 <= 40
    assert d["bytes"] == sum(f.stat().st_size for f in corpus_files(code_dir))
    (code_dir / "mod00.py").write_text("changed\n")
    assert describe_corpus(code_dir, "*.py")["sha256"] != d["sha256"]
    with pytest.raises(ValueError, match="a directory corpus is split by whole files"):
        TextOptions(path=str(code_dir), split="contiguous")
    with pytest.raises(ValueError, match="no file matching"):
        TextOptions(path=str(code_dir), glob="*.rs")
    one = describe_corpus(code_dir / "notes.txt")
    assert one["kind"] == "file" and one["files"] == 1


def test_python_stdlib_is_the_default_code_corpus():
    options = TextOptions(path=PYTHON_STDLIB, level="byte")
    stdlib = sysconfig.get_paths()["stdlib"]
    assert options.path == stdlib  # the resolved folder is what a run records
    files = corpus_files(stdlib, "*.py")
    assert len(files) > 50 and all(f.parent == files[0].parent for f in files)  # top level: no site-packages
    recipe = load_training_recipe(Path(__file__).resolve().parents[1] / "recipes" / "code_lm.toml")
    assert recipe.task.path == stdlib and recipe.task.level == "byte" and recipe.task.glob == "*.py"


def test_a_run_records_its_corpus(code_dir, tmp_path):
    from lotsim.train import train

    recipe = load_training_recipe(None, ['task.kind="char_lm"', f'task.path="{code_dir}"', 'task.level="byte"',
                                         "task.seq_len=16", "model.d_model=16", "model.n_heads=4", "train.steps=2",
                                         "train.batch_size=2", "train.eval_every=2", "train.eval_batches=1",
                                         "train.test_batches=1", "train.telemetry_every=0", "train.warmup_steps=0",
                                         "output.tensorboard=false"])
    train(recipe, tmp_path / "run")
    corpus = json.loads((tmp_path / "run" / "metrics.json").read_text())["corpus"]
    assert corpus["files"] == 40 and corpus["sha256"] == describe_corpus(code_dir, "*.py")["sha256"]
    assert corpus["split"] == "files" and set(corpus["tokens"]) == {"train", "validation", "test"}
