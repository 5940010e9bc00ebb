"""Character- or byte-level language modelling from a text file.

Splits are contiguous and disjoint: the standard 90M / 5M / 5M bytes when the file is enwik8
(detected by its name ``enwik8`` or its size of exactly 10^8 bytes), otherwise the first 90% /
next 5% / last 5% of the tokens. ``level = "char"`` maps each distinct character of the file
(decoded as UTF-8) to an id (vocabulary sorted, built from the whole file as nanoGPT does);
``level = "byte"`` uses the 256 byte values.

Training batches are random windows of the train range (their starts drawn from the batch's own
seed stream); held-out batches walk the split's non-overlapping windows in order, so a full
evaluation covers every held-out token once (each window predicted from its own start: no
context crosses a window boundary). Every position is predictable, so every position is scored.

Metrics: ``loss`` (nats per token), ``bpc`` = loss / ln 2 (bits per character, or per byte),
``token_accuracy``.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from lotsim.config import Section
from lotsim.tasks.base import BaseTask, Vocabulary, check_split, masked_metrics, split_rng

ENWIK8_BYTES = 100_000_000
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)


class TextOptions(Section):
    """``[task]`` keys of ``kind = "char_lm"``.

    Attributes:
        path: the text file (relative paths are relative to the working directory; the resolved
            recipe stores the absolute path, so a run folder works from any directory).
        level: ``char`` (distinct characters of the file) or ``byte`` (256 values).
        seq_len: tokens per training window.
        split: ``auto`` (enwik8 -> 90M/5M/5M, else contiguous 90/5/5), ``enwik8`` or ``contiguous``.
        seed: data seed (the training windows' order).
    """

    kind: Literal["char_lm"] = "char_lm"
    path: str = "data/input.txt"
    level: Literal["char", "byte"] = "char"
    seq_len: Annotated[int, Field(ge=1)] = 128
    split: Literal["auto", "enwik8", "contiguous"] = "auto"
    seed: int = 0

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).is_file():
            raise ValueError(f"text file {value!r} does not exist (set task.path to your corpus)")
        return str(Path(value).resolve())


@functools.lru_cache(maxsize=4)
def _load(path: str, level: str, size: int, mtime: float) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Token ids of a file and the character vocabulary (None for bytes); cached per file version."""
    raw = Path(path).read_bytes()
    if not raw:
        raise ValueError(f"text file {path!r} is empty; set task.path to a corpus with text in it")
    if level == "byte":
        return np.frombuffer(raw, dtype=np.uint8), None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         f"use task.level = \"byte\"") from None
    chars = sorted(set(text))
    if len(chars) <= 256:
        table = np.zeros(max(map(ord, chars)) + 1, dtype=np.uint8)
        table[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.uint8)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return table[codes], tuple(chars)
    lookup = {c: i for i, c in enumerate(chars)}
    return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text)), tuple(chars)


def load_text(path: str | Path, level: str = "char") -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Token ids (n,) and the character vocabulary (None at byte level) of a text file."""
    path = str(path)
    if not Path(path).is_file():
        raise ValueError(f"text file {path!r} does not exist")
    stat = os.stat(path)
    return _load(path, level, stat.st_size, stat.st_mtime)


def vocabulary_of(chars: tuple[str, ...] | None, level: str) -> Vocabulary:
    """The vocabulary of a text task: its characters, or bytes."""
    if level == "byte":
        return {"kind": "byte", "itos": None, "join": ""}
    return {"kind": "char", "itos": list(chars), "join": ""}


def is_enwik8(path: str | Path) -> bool:
    """enwik8 is recognised by its name or its size (exactly 10^8 bytes)."""
    path = Path(path)
    return path.name.startswith("enwik8") or path.stat().st_size == ENWIK8_BYTES


class TextTask(BaseTask):
    """Character/byte-level language modelling (see the module docstring).

    Args:
        path: the text file.
        level: ``char`` or ``byte``.
        seq_len: window length.
        split: ``auto``, ``enwik8`` or ``contiguous``.
        seed: data seed.
    """

    name = "char_lm"
    Options = TextOptions

    def __init__(self, path: str | Path, level: str = "char", seq_len: int = 128, split: str = "auto",
                 seed: int = 0):
        self.path, self.level, self.seq_len, self.seed = str(path), level, seq_len, seed
        self.tokens, self.chars = load_text(path, level)
        self.vocab_size = 256 if level == "byte" else len(self.chars)
        n = len(self.tokens)
        self.split_kind = ("enwik8" if is_enwik8(path) else "contiguous") if split == "auto" else split
        if self.split_kind == "enwik8":
            if n < sum(ENWIK8_SPLIT):
                raise ValueError(f"split 'enwik8' needs {sum(ENWIK8_SPLIT)} tokens; {self.path!r} has {n}")
            a, b, _ = ENWIK8_SPLIT
            bounds = (0, a, a + b, a + b + ENWIK8_SPLIT[2])
        else:
            bounds = (0, int(n * 0.90), int(n * 0.95), n)
        self.ranges = {s: (bounds[i], bounds[i + 1]) for i, s in enumerate(("train", "validation", "test"))}
        for s, (lo, hi) in self.ranges.items():
            if hi - lo < seq_len + 1:
                raise ValueError(f"{self.path!r}: the {s} split has {hi - lo} tokens, fewer than "
                                 f"seq_len + 1 = {seq_len + 1}; use a longer text or a shorter task.seq_len")

    @classmethod
    def from_options(cls, options: TextOptions) -> TextTask:
        return cls(options.path, options.level, options.seq_len, options.split, options.seed)

    @staticmethod
    def shape_of(options: TextOptions) -> tuple[int, int]:
        """(vocab_size, seq_len) without building windows."""
        if options.level == "byte":
            return 256, options.seq_len
        return len(load_text(options.path, "char")[1]), options.seq_len

    def vocabulary(self) -> Vocabulary:
        """The file's sorted characters (``char``) or ``{"kind": "byte"}`` (ids are UTF-8 bytes)."""
        return vocabulary_of(self.chars, self.level)

    def decode(self, ids) -> str:
        """Token ids back to text."""
        ids = [int(i) for i in ids]
        if self.level == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def _windows(self, split: str) -> int:
        lo, hi = self.ranges[split]
        return (hi - lo - 1) // self.seq_len

    def num_batches(self, split: str, batch_size: int) -> int | None:
        """Held-out splits: batches needed to cover every window once; train: unlimited."""
        if check_split(split) == "train":
            return None
        return math.ceil(self._windows(split) / batch_size)

    def batch(self, split: str, batch_size: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, targets) (b, seq_len); the last held-out batch may be shorter."""
        lo, hi = self.ranges[check_split(split)]
        t = self.seq_len
        if split == "train":
            starts = lo + split_rng(self.seed, split, index).integers(0, hi - lo - t, size=batch_size)
        else:
            windows = self._windows(split)
            first = index * batch_size
            if not 0 <= first < windows:
                raise IndexError(f"{split} batch {index} is past the split's {windows} windows")
            starts = lo + t * np.arange(first, min(first + batch_size, windows))
        rows = self.tokens[starts[:, None] + np.arange(t + 1)]  # (b, t + 1)
        seq = torch.as_tensor(rows.astype(np.int64))
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """loss, bpc = loss / ln 2, token_accuracy (every position is scored)."""
        out = masked_metrics(logits, targets, exact_match=False)
        out["bpc"] = out["loss"] / math.log(2)
        return out
