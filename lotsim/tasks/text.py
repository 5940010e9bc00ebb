"""Character- or byte-level language modelling from a text file or a directory of files (e.g. code).

**A file.** Splits are contiguous and disjoint: the standard 90M / 5M / 5M bytes when the file is
enwik8 (detected by its name ``enwik8`` or its size of exactly 10^8 bytes), otherwise the first 90% /
next 5% / last 5% of the tokens.

**A directory** (``task.path`` a folder, ``task.glob`` the files to read, default ``*.py``; ``**/*.py``
recurses): a corpus of whole files. The files are listed in sorted order of their relative paths;
each file goes to exactly one split, so no file straddles train/validation/test. Membership is
decided by a hash of the relative path (files ordered by SHA-256 of the path, then cut at 90% / 95%
of the bytes at file boundaries), so the splits mix the corpus instead of handing the alphabet's tail
to test, and the assignment is the same on every machine. Each split is its files concatenated in
sorted path order. ``task.path = "<python-stdlib>"`` names the Python standard library of the
running interpreter (``sysconfig.get_paths()["stdlib"]``; with ``*.py``: its top-level modules,
no site-packages), real code present on every machine; the resolved path is what the run records.

``level = "char"`` maps each distinct character (decoded as UTF-8) to an id (vocabulary sorted, built
from the whole corpus as nanoGPT does); ``level = "byte"`` uses the 256 byte values, the natural choice
for code and for any corpus whose characters are not all known in advance.

Training batches are random windows of the train range (their starts drawn from the batch's own
seed stream); held-out batches walk the split's non-overlapping windows in order, so a full
evaluation covers every held-out token once (each window predicted from its own start: no
context crosses a window boundary). Every position is predictable, so every position is scored.

Metrics: ``loss`` (nats per token), ``bpc`` = loss / ln 2 (bits per character, or per byte),
``token_accuracy``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from lotsim.config import Section
from lotsim.tasks.base import BaseTask, check_split, masked_metrics, split_rng

ENWIK8_BYTES = 100_000_000
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
PYTHON_STDLIB = "<python-stdlib>"  # task.path naming the running Python's standard library folder
SPLIT_FRACTIONS = (0.90, 0.95)  # cumulative train / train + validation shares


class TextOptions(Section):
    """``[task]`` keys of ``kind = "char_lm"``.

    Attributes:
        path: the text file, or a directory of files (relative paths are relative to the working
            directory; in a recipe file, to the recipe's folder); ``"<python-stdlib>"``: the Python
            standard library's folder.
        glob: the files of a directory corpus (``*.py``: top level; ``**/*.py``: recursive).
        level: ``char`` (distinct characters of the corpus) or ``byte`` (256 values).
        seq_len: tokens per training window.
        split: ``auto`` (enwik8 -> 90M/5M/5M, else contiguous 90/5/5; a directory: by whole files),
            ``enwik8`` or ``contiguous``.
        seed: data seed (the training windows' order).
    """

    kind: Literal["char_lm"] = "char_lm"
    path: str = "data/input.txt"
    glob: str = "*.py"
    level: Literal["char", "byte"] = "char"
    seq_len: Annotated[int, Field(ge=1)] = 128
    split: Literal["auto", "enwik8", "contiguous"] = "auto"
    seed: int = 0

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str) -> str:
        if Path(value).name == PYTHON_STDLIB:
            return sysconfig.get_paths()["stdlib"]
        if not Path(value).exists():
            raise ValueError(f"text file {value!r} does not exist (set task.path to your corpus)")
        return value

    @model_validator(mode="after")
    def _has_files(self) -> TextOptions:
        if Path(self.path).is_dir():
            corpus_files(self.path, self.glob)  # raises when nothing matches
            if self.split != "auto":
                raise ValueError(f"split {self.split!r} is for a single file; a directory corpus is split by "
                                 "whole files (split = \"auto\")")
        return self


def corpus_files(path: str | Path, glob: str = "*.py") -> list[Path]:
    """The files of a directory corpus, sorted by their path relative to ``path``.

    Raises:
        ValueError: no file matches (one line).
    """
    root = Path(path)
    files = sorted((p for p in root.glob(glob) if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"task.path {str(path)!r} is a directory with no file matching task.glob {glob!r}")
    return files


def split_files(path: str | Path, glob: str = "*.py") -> dict[str, list[Path]]:
    """Whole-file splits of a directory corpus (see the module docstring); each list in sorted order."""
    root = Path(path)
    files = corpus_files(root, glob)
    by_hash = sorted(files, key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())
    sizes = np.array([p.stat().st_size for p in by_hash], dtype=np.int64)
    starts = (np.cumsum(sizes) - sizes) / max(1, int(sizes.sum()))  # share of the bytes before each file
    which = np.searchsorted(np.array(SPLIT_FRACTIONS), starts, side="right")  # 0 train, 1 validation, 2 test
    order = {p: i for i, p in enumerate(files)}
    return {split: sorted((p for p, w in zip(by_hash, which) if w == k), key=order.__getitem__)
            for k, split in enumerate(("train", "validation", "test"))}


def describe_corpus(path: str | Path, glob: str | None = "*.py") -> dict[str, Any]:
    """What a run read: absolute path, kind, glob, file count (per split for a directory), bytes and
    a SHA-256 over the files (a directory: each file's relative path and contents, in sorted order)."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    if path.is_dir():
        splits = split_files(path, glob or "*.py")
        files = corpus_files(path, glob or "*.py")
        for f in files:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        return {"path": str(path), "kind": "directory", "glob": glob, "files": len(files),
                "split_files": {s: len(v) for s, v in splits.items()}, "bytes": sum(f.stat().st_size for f in files),
                "sha256": digest.hexdigest()}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return {"path": str(path), "kind": "file", "glob": None, "files": 1, "bytes": path.stat().st_size,
            "sha256": digest.hexdigest()}


def _tokenize(parts: list[bytes], level: str, source: str) -> tuple[np.ndarray, tuple[str, ...] | None, list[int]]:
    """Token ids of the concatenated ``parts``, the character vocabulary (None for bytes) and the
    token offset where each part starts (plus the end)."""
    if level == "byte":
        raw = b"".join(parts)
        return np.frombuffer(raw, dtype=np.uint8), None, np.cumsum([0, *map(len, parts)]).tolist()
    try:
        texts = [part.decode("utf-8") for part in parts]
    except UnicodeDecodeError as err:
        raise ValueError(f"{source!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         f"use task.level = \"byte\"") from None
    text = "".join(texts)
    offsets = np.cumsum([0, *map(len, texts)]).tolist()
    chars = sorted(set(text))
    if len(chars) <= 256:
        table = np.zeros(max(map(ord, chars)) + 1, dtype=np.uint8)
        table[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.uint8)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return table[codes], tuple(chars), offsets
    lookup = {c: i for i, c in enumerate(chars)}
    return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text)), tuple(chars), offsets


@functools.lru_cache(maxsize=4)
def _load(path: str, glob: str, level: str, signature: tuple) -> tuple[np.ndarray, tuple[str, ...] | None, list[int]]:
    """Cached per corpus version (``signature``: each file's size and mtime)."""
    if not Path(path).is_dir():
        return _tokenize([Path(path).read_bytes()], level, path)
    splits = split_files(path, glob)
    parts = [b"".join(f.read_bytes() for f in splits[s]) for s in ("train", "validation", "test")]
    return _tokenize(parts, level, path)


def load_corpus(path: str | Path, level: str = "char", glob: str = "*.py"
                ) -> tuple[np.ndarray, tuple[str, ...] | None, list[int]]:
    """Token ids (n,), the character vocabulary (None at byte level) and the split offsets of a
    corpus: ``[0, n]`` for a file, ``[0, train end, validation end, n]`` for a directory."""
    path = str(path)
    if Path(path).is_dir():
        files = corpus_files(path, glob)
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise ValueError(f"text file {path!r} does not exist")
    signature = tuple((str(f), os.stat(f).st_size, os.stat(f).st_mtime) for f in files)
    return _load(path, glob, level, signature)


def load_text(path: str | Path, level: str = "char", glob: str = "*.py") -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Token ids (n,) and the character vocabulary (None at byte level) of a file or directory corpus."""
    tokens, chars, _ = load_corpus(path, level, glob)
    return tokens, chars


def is_enwik8(path: str | Path) -> bool:
    """enwik8 is recognised by its name or its size (exactly 10^8 bytes)."""
    path = Path(path)
    return path.is_file() and (path.name.startswith("enwik8") or path.stat().st_size == ENWIK8_BYTES)


class TextTask(BaseTask):
    """Character/byte-level language modelling (see the module docstring).

    Args:
        path: the text file or directory.
        level: ``char`` or ``byte``.
        seq_len: window length.
        split: ``auto``, ``enwik8`` or ``contiguous``.
        seed: data seed.
        glob: the files of a directory corpus.
    """

    name = "char_lm"
    Options = TextOptions

    def __init__(self, path: str | Path, level: str = "char", seq_len: int = 128, split: str = "auto",
                 seed: int = 0, glob: str = "*.py"):
        self.path, self.level, self.seq_len, self.seed, self.glob = str(path), level, seq_len, seed, glob
        self.tokens, self.chars, offsets = load_corpus(path, level, glob)
        self.vocab_size = 256 if level == "byte" else len(self.chars)
        n = len(self.tokens)
        if Path(self.path).is_dir():
            self.split_kind, bounds = "files", tuple(offsets)
        else:
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

    @property
    def corpus(self) -> dict[str, Any]:
        """The resolved corpus (:func:`describe_corpus`) plus the split kind and tokens per split."""
        return {**describe_corpus(self.path, self.glob if Path(self.path).is_dir() else None),
                "split": self.split_kind, "tokens": {s: hi - lo for s, (lo, hi) in self.ranges.items()}}

    @classmethod
    def from_options(cls, options: TextOptions) -> TextTask:
        return cls(options.path, options.level, options.seq_len, options.split, options.seed, options.glob)

    @staticmethod
    def shape_of(options: TextOptions) -> tuple[int, int]:
        """(vocab_size, seq_len) without building windows."""
        if options.level == "byte":
            return 256, options.seq_len
        return len(load_text(options.path, "char", options.glob)[1]), options.seq_len

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
