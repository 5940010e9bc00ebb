"""Copy-reverse: read x_1..x_L and a separator, then write x_L..x_1.

Sequence (length 2L + 1): ``x_1 … x_L SEP x_L … x_1`` with symbols in ``[0, n_symbols)`` and
``SEP = n_symbols``. The model reads the first 2L tokens; only the L positions that predict the
reversed half are scored (the first half is random, hence unpredictable, and the separator is
trivial). The target at input position L + j is x_{L-j}, which sits at input position L - 1 - j:
never at or after the position that predicts it, so a causal model cannot peek.

Metrics: ``exact_match`` (every reversed token of a sequence right), ``token_accuracy`` (over the
reversed half), ``loss``. Chance level: token accuracy 1 / n_symbols, exact match n_symbols^-L.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from lotsim.config import Section
from lotsim.tasks.base import BaseTask, Vocabulary, sample_split, split_rng, to_batch, token_vocabulary


class CopyReverseOptions(Section):
    """``[task]`` keys of ``kind = "copy_reverse"``.

    Attributes:
        length: L, symbols to reverse.
        n_symbols: alphabet size (the vocabulary is n_symbols + 1 with the separator).
        seed: data seed: every split's stream and the training order derive from it.
    """

    kind: Literal["copy_reverse"] = "copy_reverse"
    length: Annotated[int, Field(ge=2, le=512)] = 12
    n_symbols: Annotated[int, Field(ge=2)] = 10
    seed: int = 0


class CopyReverse(BaseTask):
    """The copy-reverse task (see the module docstring).

    Args:
        length: L.
        n_symbols: alphabet size.
        seed: data seed.
    """

    name = "copy_reverse"
    Options = CopyReverseOptions

    def __init__(self, length: int = 12, n_symbols: int = 10, seed: int = 0):
        if n_symbols**length < 400:
            raise ValueError(f"copy_reverse with length={length}, n_symbols={n_symbols} has only "
                             f"{n_symbols**length} distinct sequences: too few for disjoint splits")
        self.length, self.n_symbols, self.seed = length, n_symbols, seed
        self.separator = n_symbols
        self.vocab_size = n_symbols + 1
        self.seq_len = 2 * length

    @classmethod
    def from_options(cls, options: CopyReverseOptions) -> CopyReverse:
        return cls(options.length, options.n_symbols, options.seed)

    def vocabulary(self) -> Vocabulary:
        """Symbols ``"0".."n-1"`` and the separator ``"|"`` (space-separated beyond 10 symbols)."""
        return self.vocabulary_of(self)

    @staticmethod
    def vocabulary_of(options: CopyReverseOptions | CopyReverse) -> Vocabulary:
        """The vocabulary from the options alone (anything with ``n_symbols``)."""
        n = int(options.n_symbols)
        return token_vocabulary([str(i) for i in range(n)] + ["|"], "" if n <= 10 else " ")

    def sequences(self, split: str, batch_size: int, index: int) -> np.ndarray:
        """The first halves x (b, L) of a batch."""
        rng = split_rng(self.seed, split, index)
        return sample_split(lambda r, m: r.integers(0, self.n_symbols, size=(m, self.length)), split,
                            batch_size, rng)

    def batch(self, split: str, batch_size: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, targets), each (b, 2L); targets scored on the reversed half only."""
        x = self.sequences(split, batch_size, index)
        sep = np.full((batch_size, 1), self.separator)
        return to_batch(np.concatenate([x, sep, x[:, ::-1]], axis=1), scored_from=self.length)
