"""The Task protocol, split bookkeeping and the masked metrics every task shares.

A task hands the training loop batches of ``(idx, targets)``, both (b, t) int64: ``idx`` is what
the causal model reads, ``targets[:, i]`` the token it must predict after reading ``idx[:, :i+1]``,
or :data:`IGNORE_INDEX` (-100) where nothing is predictable (the model's cross-entropy and every
metric skip those positions; the prior prototype scored unpredictable positions).

Batches are addressed by an index, not drawn from hidden state: ``batch(split, batch_size, index)``
is a pure function of the task's seed, the split and the index. The training loop's data position
is therefore one integer, resuming is exact, and every arm of a comparison sees the same data order.

Splits (``train``, ``validation``, ``test``) are disjoint by construction: synthetic tasks assign
every possible sequence to one split by a hash of its tokens (90/5/5 buckets) and draw each split
from its own seed stream; text tasks cut disjoint contiguous ranges.

Legend: ``b`` batch, ``t`` tokens, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

IGNORE_INDEX = -100
Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# percent buckets of the sequence hash owned by each split (synthetic tasks)
SPLIT_BUCKETS = {"train": (0, 90), "validation": (90, 95), "test": (95, 100)}
_SPLIT_CODE = {"train": 1, "validation": 2, "test": 3}


@runtime_checkable
class Task(Protocol):
    """What the training loop needs from a task.

    Attributes:
        name: a short name (used in reports).
        vocab_size: token ids are in ``[0, vocab_size)``.
        seq_len: length t of every ``idx`` / ``targets`` row.
    """

    name: str
    vocab_size: int
    seq_len: int

    def batch(self, split: str, batch_size: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``index``-th batch of a split: ``(idx, targets)``, both (b, t) int64 on the CPU.

        Must be deterministic in (split, batch_size, index); held-out splits must never share a
        sequence with ``train``.
        """
        ...

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics of one batch from logits (b, t, v) and targets (b, t), predictable positions only."""
        ...


Vocabulary = dict  # {"kind": "char" | "byte" | "tokens", "itos": list[str] | None, "join": str}


def token_vocabulary(itos: list[str], join: str) -> Vocabulary:
    """A vocabulary of named tokens; ``join`` is the string between decoded tokens ("" or " ")."""
    return {"kind": "tokens", "itos": list(itos), "join": join}


class BaseTask:
    """Convenience base: default :meth:`metrics` (loss, token accuracy, exact match) and
    :meth:`num_batches` (None: a synthetic split never runs out). Subclass it or just follow
    :class:`Task`; the training loop accepts either."""

    name = "task"
    vocab_size: int
    seq_len: int

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Masked metrics (see :func:`masked_metrics`)."""
        return masked_metrics(logits, targets)

    def num_batches(self, split: str, batch_size: int) -> int | None:
        """How many distinct batches a split holds (None: unlimited)."""
        return None

    def vocabulary(self) -> Vocabulary | None:
        """Token names, so a saved or exported model can read and write text: ``{"kind": "char"|"byte"|
        "tokens", "itos": [...] or None, "join": str}`` (``join`` goes between decoded tokens), or
        None (token ids only). Stored in every checkpoint; optional for your own tasks."""
        return None


def check_split(split: str) -> str:
    """Return ``split`` or raise ValueError naming the allowed ones."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not allowed; use one of {', '.join(SPLITS)}")
    return split


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one batch: independent per (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[check_split(split)], int(index)]))


def sequence_bucket(rows: np.ndarray) -> np.ndarray:
    """A hash of each row's tokens in ``[0, 100)`` (FNV-1a, then a splitmix64 finaliser).

    Args:
        rows: (n, L) non-negative integers.

    Returns:
        (n,) int64 buckets; equal rows get equal buckets, so buckets partition the sequence space.
    """
    rows = np.asarray(rows, dtype=np.uint64)
    h = np.full(rows.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows.shape[1]):
            h = (h ^ rows[:, j]) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return (h % np.uint64(100)).astype(np.int64)


def in_split(rows: np.ndarray, split: str) -> np.ndarray:
    """(n,) bool: which rows (n, L) belong to ``split`` by :func:`sequence_bucket`."""
    lo, hi = SPLIT_BUCKETS[check_split(split)]
    bucket = sequence_bucket(rows)
    return (bucket >= lo) & (bucket < hi)


def sample_split(draw, split: str, n: int, rng: np.random.Generator, max_rounds: int = 200) -> np.ndarray:
    """Rejection-sample ``n`` rows belonging to ``split``.

    Args:
        draw: ``draw(rng, m) -> (m, L)`` candidate rows (the key the split hash is taken on).
        split: which split the rows must belong to.
        n: rows wanted.
        rng: the batch's stream.

    Returns:
        (n, L) rows, all in ``split``.
    """
    lo, hi = SPLIT_BUCKETS[check_split(split)]
    share = (hi - lo) / 100
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        m = max(16, math.ceil((n - have) / share * 1.3))
        rows = draw(rng, m)
        rows = rows[in_split(rows, split)]
        kept.append(rows)
        have += len(rows)
        if have >= n:
            return np.concatenate(kept)[:n]
    raise RuntimeError(f"could not draw {n} sequences of split {split!r}; is the sequence space too small?")


def masked_metrics(logits: torch.Tensor, targets: torch.Tensor, exact_match: bool = True) -> dict[str, float]:
    """Loss and accuracies over predictable positions only.

    Args:
        logits: (b, t, v).
        targets: (b, t) with :data:`IGNORE_INDEX` at unscored positions.
        exact_match: also report the share of rows whose every scored position is right
            (rows with no scored position are left out of it).

    Returns:
        ``loss`` (mean cross-entropy, nats), ``token_accuracy`` and, if asked, ``exact_match``.
    """
    logits = logits.detach().float()
    mask = targets != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the batch has no scored position (every target is ignore_index)")
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    correct = (logits.argmax(-1) == targets) & mask  # (b, t)
    out = {"loss": float(loss) / n, "token_accuracy": float(correct.sum()) / n}
    if exact_match:
        scored_rows = mask.any(-1)
        row_ok = (correct | ~mask).all(-1) & scored_rows
        out["exact_match"] = float(row_ok.sum()) / max(int(scored_rows.sum()), 1)
    return out


def to_batch(sequences: np.ndarray, scored_from: int | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token pairs from whole sequences.

    Args:
        sequences: (b, t + 1) integers.
        scored_from: first scored input position (an int) or a (t,) bool mask of scored positions.

    Returns:
        ``idx = sequences[:, :-1]`` and ``targets = sequences[:, 1:]`` with unscored positions set to
        :data:`IGNORE_INDEX`, both (b, t) int64.
    """
    seq = torch.as_tensor(np.ascontiguousarray(sequences), dtype=torch.int64)
    idx, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    if isinstance(scored_from, int):
        targets[:, :scored_from] = IGNORE_INDEX
    else:
        targets[:, ~torch.as_tensor(scored_from, dtype=torch.bool)] = IGNORE_INDEX
    return idx, targets
