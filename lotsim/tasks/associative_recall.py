"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology").

Sequence: ``k_1 v_1 … k_N v_N SEP q_1 a_1 … q_M a_M``: N distinct keys from ``[0, n_keys)``, each
with a value from ``[n_keys, n_keys + n_values)``; then M queries, distinct keys drawn from the N
pairs, each followed by its value. ``SEP = n_keys + n_values``. Only the M answer positions are
scored (input q_j predicts a_j); keys, values and queries are random, hence unpredictable.

Metrics: ``token_accuracy`` over the answers, ``exact_match`` (all M answers of a sequence right),
``loss``. Chance: token accuracy 1 / n_values.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from lotsim.config import Section
from lotsim.tasks.base import BaseTask, Vocabulary, sample_split, split_rng, to_batch, token_vocabulary


class AssociativeRecallOptions(Section):
    """``[task]`` keys of ``kind = "associative_recall"``.

    Attributes:
        n_pairs: N key-value pairs per sequence.
        n_queries: M queries (<= N; distinct keys).
        n_keys: key alphabet (>= N).
        n_values: value alphabet.
        seed: data seed.
    """

    kind: Literal["associative_recall"] = "associative_recall"
    n_pairs: Annotated[int, Field(ge=1)] = 8
    n_queries: Annotated[int, Field(ge=1)] = 4
    n_keys: Annotated[int, Field(ge=1)] = 16
    n_values: Annotated[int, Field(ge=2)] = 16
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self):
        if self.n_queries > self.n_pairs:
            raise ValueError(f"n_queries={self.n_queries} must be <= n_pairs={self.n_pairs} (queries are distinct)")
        if self.n_keys < self.n_pairs:
            raise ValueError(f"n_keys={self.n_keys} must be >= n_pairs={self.n_pairs} (keys are distinct)")
        return self


class AssociativeRecall(BaseTask):
    """Multi-query associative recall (see the module docstring)."""

    name = "associative_recall"
    Options = AssociativeRecallOptions

    def __init__(self, n_pairs: int = 8, n_queries: int = 4, n_keys: int = 16, n_values: int = 16, seed: int = 0):
        options = AssociativeRecallOptions(n_pairs=n_pairs, n_queries=n_queries, n_keys=n_keys,
                                           n_values=n_values, seed=seed)  # same checks as a recipe
        self.n_pairs, self.n_queries, self.n_keys, self.n_values = n_pairs, n_queries, n_keys, n_values
        self.seed = options.seed
        self.separator = n_keys + n_values
        self.vocab_size = n_keys + n_values + 1
        self.seq_len = 2 * n_pairs + 2 * n_queries

    @classmethod
    def from_options(cls, options: AssociativeRecallOptions) -> AssociativeRecall:
        return cls(options.n_pairs, options.n_queries, options.n_keys, options.n_values, options.seed)

    def vocabulary(self) -> Vocabulary:
        """Keys ``k0..``, values ``v0..`` and the separator ``"|"``, space-separated."""
        return self.vocabulary_of(self)

    @staticmethod
    def vocabulary_of(options: AssociativeRecallOptions | AssociativeRecall) -> Vocabulary:
        """The vocabulary from the options alone (anything with ``n_keys`` and ``n_values``)."""
        keys, values = int(options.n_keys), int(options.n_values)
        return token_vocabulary([f"k{i}" for i in range(keys)] + [f"v{i}" for i in range(values)] + ["|"], " ")

    def _draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """Candidate sequences (m, 2N + 1 + 2M)."""
        n, q = self.n_pairs, self.n_queries
        keys = np.argsort(rng.random((m, self.n_keys)), axis=1)[:, :n]  # distinct keys per row
        values = rng.integers(self.n_keys, self.n_keys + self.n_values, size=(m, n))
        which = np.argsort(rng.random((m, n)), axis=1)[:, :q]  # distinct pairs to query
        queries = np.take_along_axis(keys, which, axis=1)
        answers = np.take_along_axis(values, which, axis=1)
        context = np.stack([keys, values], axis=2).reshape(m, 2 * n)
        asked = np.stack([queries, answers], axis=2).reshape(m, 2 * q)
        return np.concatenate([context, np.full((m, 1), self.separator), asked], axis=1)

    def batch(self, split: str, batch_size: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, targets), each (b, 2N + 2M); only the answers are scored."""
        rows = sample_split(self._draw, split, batch_size, split_rng(self.seed, split, index))
        scored = np.zeros(self.seq_len, dtype=bool)
        scored[2 * self.n_pairs + 1::2] = True  # input q_j (after SEP) predicts a_j
        return to_batch(rows, scored_from=scored)
