"""Tasks: disjoint deterministic splits, scoring only predictable positions, metrics on known
predictions, the text task's splits and BPC, and a user task plugged in from a recipe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lotsim.tasks import (
    IGNORE_INDEX,
    AssociativeRecall,
    BaseTask,
    CopyReverse,
    CustomTaskOptions,
    TextTask,
    build_custom_task,
    in_split,
    masked_metrics,
    sequence_bucket,
)
from lotsim.tasks import text as text_module


def rows_of(task, split, batches=40, batch_size=64):
    seen = set()
    for i in range(batches):
        idx, targets = task.batch(split, batch_size, i)
        seen.update(map(tuple, torch.cat([idx, targets[:, -1:]], 1).tolist()))
    return seen


@pytest.mark.parametrize("task", [CopyReverse(length=4, n_symbols=6, seed=3),
                                  AssociativeRecall(n_pairs=3, n_queries=2, n_keys=4, n_values=4, seed=3)],
                         ids=["copy_reverse", "associative_recall"])
def test_synthetic_splits_are_disjoint_deterministic_and_differ_by_index(task):
    # small alphabets on purpose: 40 x 64 draws per split would collide often if splits were not disjoint
    train, val, test = (rows_of(task, s) for s in ("train", "validation", "test"))
    assert train and val and test
    assert not train & val and not train & test and not val & test
    a, b = task.batch("validation", 8, 5), task.batch("validation", 8, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(task.batch("train", 8, 0)[0], task.batch("train", 8, 1)[0])
    # another data seed draws other sequences from the same (content-defined) split
    other = type(task)(**{**_kwargs(task), "seed": 4})
    assert not torch.equal(other.batch("train", 8, 0)[0], task.batch("train", 8, 0)[0])


def _kwargs(task):
    if isinstance(task, CopyReverse):
        return {"length": task.length, "n_symbols": task.n_symbols}
    return {"n_pairs": task.n_pairs, "n_queries": task.n_queries, "n_keys": task.n_keys, "n_values": task.n_values}


def test_sequence_buckets_partition_by_content():
    rows = np.random.default_rng(0).integers(0, 10, size=(20000, 6))
    bucket = sequence_bucket(rows)
    assert bucket.min() >= 0 and bucket.max() < 100
    assert np.array_equal(bucket, sequence_bucket(rows.copy()))
    shares = [in_split(rows, s).mean() for s in ("train", "validation", "test")]
    assert np.allclose(shares, [0.90, 0.05, 0.05], atol=0.01)


def test_copy_reverse_scores_exactly_the_reversed_half():
    task = CopyReverse(length=5, n_symbols=7)
    idx, targets = task.batch("train", 16, 0)
    assert idx.shape == targets.shape == (16, 10) and idx.dtype == torch.int64
    assert task.vocab_size == 8 and task.seq_len == 10
    assert (targets[:, :5] == IGNORE_INDEX).all() and (targets[:, 5:] != IGNORE_INDEX).all()
    assert (idx[:, 5] == task.separator).all()
    assert torch.equal(targets[:, 5:], idx[:, :5].flip(1))  # the reversal of the first half
    # each scored target is the NEXT input token: never the token read at its own position
    assert torch.equal(targets[:, 5:-1], idx[:, 6:])


def test_associative_recall_answers_are_the_queried_values():
    task = AssociativeRecall(n_pairs=5, n_queries=3, n_keys=9, n_values=6)
    idx, targets = task.batch("test", 32, 2)
    n = 5
    scored = targets != IGNORE_INDEX
    assert scored.sum(1).eq(3).all() and scored[:, : 2 * n + 1].sum() == 0
    for row_idx, row_t in zip(idx.tolist(), targets.tolist()):
        keys, values = row_idx[0 : 2 * n : 2], row_idx[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(9 <= v < 15 for v in values)
        assert row_idx[2 * n] == task.separator
        for pos in range(2 * n + 1, task.seq_len, 2):
            query, answer = row_idx[pos], row_t[pos]
            assert answer == values[keys.index(query)]


def test_associative_recall_options_are_checked():
    with pytest.raises(ValueError, match="n_queries=4 must be <= n_pairs=2"):
        AssociativeRecall(n_pairs=2, n_queries=4)


def test_too_small_a_sequence_space_is_refused():
    with pytest.raises(ValueError, match="only 9 distinct sequences"):
        CopyReverse(length=2, n_symbols=3)


def test_metrics_on_hand_made_predictions():
    targets = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 0, 0]])
    logits = torch.full((2, 3, 3), -10.0)
    # row 0: both scored positions right; row 1: first right, second wrong
    logits[0, 1, 1] = logits[0, 2, 2] = logits[1, 1, 0] = logits[1, 2, 1] = 10.0
    logits[:, 0, 2] = 10.0  # an unscored position predicting anything is ignored
    m = masked_metrics(logits, targets)
    assert m["token_accuracy"] == pytest.approx(3 / 4)
    assert m["exact_match"] == pytest.approx(1 / 2)
    uniform = masked_metrics(torch.zeros(2, 3, 3), targets)
    assert uniform["loss"] == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="no scored position"):
        masked_metrics(logits, torch.full((2, 3), IGNORE_INDEX))


@pytest.fixture
def text_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["lattice", "oscillator", "phase", "sync", "héad"]  # a non-ASCII character on purpose
    text = " ".join(rng.choice(words, size=3000)) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_text_task_contiguous_disjoint_splits_and_bpc(text_file):
    path, text = text_file
    task = TextTask(path, level="char", seq_len=32)
    assert task.vocab_size == len(set(text))
    assert task.decode(task.tokens[:40]) == text[:40]
    n = len(text)
    assert task.ranges == {"train": (0, int(0.9 * n)), "validation": (int(0.9 * n), int(0.95 * n)),
                           "test": (int(0.95 * n), n)}
    # held-out windows tile the split in order, every position scored
    idx, targets = task.batch("test", 4, 0)
    lo = task.ranges["test"][0]
    assert torch.equal(idx[0], torch.as_tensor(task.tokens[lo : lo + 32].astype(np.int64)))
    assert torch.equal(idx[1], torch.as_tensor(task.tokens[lo + 32 : lo + 64].astype(np.int64)))
    assert torch.equal(targets[0], torch.as_tensor(task.tokens[lo + 1 : lo + 33].astype(np.int64)))
    windows = (task.ranges["test"][1] - lo - 1) // 32
    assert task.num_batches("test", 4) == math.ceil(windows / 4) and task.num_batches("train", 4) is None
    with pytest.raises(IndexError):
        task.batch("test", 4, task.num_batches("test", 4))
    # training windows stay inside the train range
    tr_idx, tr_t = task.batch("train", 64, 3)
    starts = [_find(task.tokens, row) for row in tr_idx.tolist()[:5]]
    assert all(0 <= s <= task.ranges["train"][1] - 33 for s in starts if s is not None)
    uniform = task.metrics(torch.zeros(4, 32, task.vocab_size), targets)
    assert uniform["bpc"] == pytest.approx(math.log2(task.vocab_size))


def _find(tokens, row):
    row = np.asarray(row)
    for s in range(len(tokens) - len(row)):
        if tokens[s] == row[0] and np.array_equal(tokens[s : s + len(row)], row):
            return s
    return None


def test_byte_level_and_enwik8_split(tmp_path, monkeypatch):
    path = tmp_path / "enwik8"
    path.write_bytes(bytes(range(256)) * 4)
    monkeypatch.setattr(text_module, "ENWIK8_SPLIT", (800, 100, 100))
    task = TextTask(path, level="byte", seq_len=16)
    assert task.vocab_size == 256 and task.split_kind == "enwik8"
    assert task.ranges == {"train": (0, 800), "validation": (800, 900), "test": (900, 1000)}
    assert text_module.is_enwik8(path)


def test_text_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TextTask(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("abc" * 20)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        TextTask(short, seq_len=16)


class PalindromeTask(BaseTask):
    """A user task for the plug-in test: write the first half mirrored (palindromes)."""

    def __init__(self, half: int = 4, symbols: int = 5, seed: int = 0):
        self.half, self.symbols, self.seed = half, symbols, seed
        self.vocab_size, self.seq_len = symbols, 2 * half - 2

    def batch(self, split, batch_size, index):
        from lotsim.tasks import sample_split, split_rng

        x = sample_split(lambda r, m: r.integers(0, self.symbols, (m, self.half)), split, batch_size,
                         split_rng(self.seed, split, index))
        seq = torch.as_tensor(np.concatenate([x, x[:, -2::-1]], 1))
        targets = seq[:, 1:].clone()
        targets[:, : self.half - 1] = IGNORE_INDEX
        return seq[:, :-1], targets


def test_user_task_plugged_in_by_target():
    target = f"{__name__}:PalindromeTask"
    task = build_custom_task(CustomTaskOptions(target=target, half=5))
    assert isinstance(task, PalindromeTask) and task.seq_len == 8
    idx, targets = task.batch("train", 3, 0)
    assert idx.shape == (3, 8) and (targets[:, :4] == IGNORE_INDEX).all() and (targets[:, 4:] >= 0).all()
    assert "exact_match" in task.metrics(torch.zeros(3, 8, 5), targets)
    with pytest.raises(ValueError, match="half"):  # a typo names the allowed keys
        build_custom_task(CustomTaskOptions(target=target, hafl=5))
    with pytest.raises(ValueError, match="cannot import module"):
        CustomTaskOptions(target="no_such_package.mod:Task")
    with pytest.raises(ValueError, match="package.module:ClassName"):
        CustomTaskOptions(target="no_colon")


SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="the Tiny Shakespeare corpus is not next to the repository")
def test_tiny_shakespeare_when_present():
    task = TextTask(SHAKESPEARE, level="char", seq_len=256)
    assert task.vocab_size == 65 and task.split_kind == "contiguous"
    n = len(task.tokens)
    assert task.ranges["test"] == (int(0.95 * n), n)
    assert task.decode(task.batch("validation", 1, 0)[0][0, :5]) == task.decode(task.tokens[int(0.9 * n):][:5])
