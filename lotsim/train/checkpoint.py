"""Checkpoints we own: one dict of tensors and plain values, written atomically, read safely.

Contents (``torch.save``)::

    format, version          "lotsim-train-checkpoint", 2
    model                    state_dict of the bare model (never the DDP wrapper)
    optimizer, scheduler     their state_dicts
    step                     optimiser steps done
    data_index               micro-batches consumed per process (batches are index-addressed)
    rng                      per process: {python, numpy, torch, cuda}, as tensors, numbers, tuples
    best                     {"metric", "value", "step"} of the best validation so far
    recipe                   the resolved recipe, TOML text
    vocabulary               the task's token names (see lotsim.tasks.Task.vocabulary), or None
    train_time_s, train_tokens   training time and tokens so far (the run's throughput)
    world_size, lotsim_version, git_commit, wall_time_s

Every value is one ``torch.load(..., weights_only=True)`` accepts, so reading a checkpoint never
runs code from it. Version-1 checkpoints (numpy RNG states, which only full unpickling reads) and
files that need full unpickling are refused with one line; ``allow_code=True`` (the CLI's
``--allow-code``) reads a file the user trusts that way and migrates it to plain values in memory.

A checkpoint written before an attention option existed (e.g. ``score`` and ``readout`` of ``torus``
and ``fsn``) is read with the options its weights were trained with, not today's defaults: the
attention's :meth:`~lotsim.model.attention.Attention.migrate_options` completes the stored
``attention_options`` and the stored recipe is updated in memory, with one logged line (stderr unless
logging is configured). Every reader (eval, export, resume) sees the migrated recipe.

One path from a checkpoint to a model: :func:`read_checkpoint` (weights, model config, recipe,
vocabulary) and :func:`model_from_checkpoint`; ``lotsim eval``, ``lotsim export`` and the final
test of every run (``lotsim train``, and the runs ``lotsim compare`` trains or resumes) use them.

Writes go to ``<name>.tmp`` then ``os.replace`` (atomic on POSIX): a crash mid-write leaves the
previous checkpoint intact. ``last.pt`` is written every ``train.checkpoint_every`` steps, at the
end and on Ctrl-C; ``best.pt`` whenever the validation ``best_metric`` improves.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from lotsim.model import LOTModel, ModelConfig, get_attention

FORMAT, VERSION = "lotsim-train-checkpoint", 2
LAST, BEST = "last.pt", "best.pt"
ALLOW_CODE_HINT = "if you trust the file, rerun with --allow-code"
log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's random states: python, numpy (global), torch (CPU) and every CUDA device, as
    plain values and tensors (what a safe ``torch.load`` reads)."""
    return {
        "python": random.getstate(),
        "numpy": _plain_numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _plain_numpy_state(state: tuple) -> tuple:
    """numpy's legacy ``(name, keys ndarray, pos, has_gauss, gauss)`` with the keys as an int64 tensor."""
    name, keys, pos, has_gauss, gauss = state
    return (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict (``path.tmp`` then ``os.replace``).

    Args:
        path: target file, e.g. ``run/checkpoints/last.pt``.
        state: the dict (``format`` and ``version`` are added).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def resolve_checkpoint(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a file or a run folder (``checkpoints/best.pt``, else ``last.pt``).

    Raises:
        FileNotFoundError: one line naming what was looked for.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        order = (prefer, LAST if prefer == BEST else BEST)
        for name in order:
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(f"no checkpoint ({' or '.join(order)}) in {str(folder)!r}")
    raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    allow_code: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Args:
        path: the file.
        map_location: where tensors go.
        allow_code: read a file that needs full unpickling (a version-1 checkpoint), which can run
            code stored in it: only for files the user trusts. The result is migrated to plain values.

    Raises:
        ValueError: not a lotsim training checkpoint, or one that only full unpickling reads (one
            line naming ``--allow-code``).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a pickle of objects: garbage
            raise ValueError(f"{str(path)!r} is not a readable checkpoint (UnpicklingError)") from None
        if not allow_code:
            raise ValueError(f"{str(path)!r} holds objects that only full unpickling reads, which can run code "
                             f"(a checkpoint of lotsim < 0.2, or a crafted file); {ALLOW_CODE_HINT}") from None
        state = _migrate(torch.load(path, map_location=map_location, weights_only=False))
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a lotsim training checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state['version']}; this lotsim reads <= {VERSION}")
    return _migrate_attention_options(state, path)


def _migrate(state: Any) -> Any:
    """A version-1 checkpoint (numpy RNG states) in the version-2 layout (plain values only)."""
    if isinstance(state, dict) and state.get("format") == FORMAT and state.get("version", 0) < VERSION:
        rngs = [None if r is None else {**r, "numpy": _plain_numpy_state(r["numpy"])} for r in state.get("rng", [])]
        state = {**state, "rng": rngs, "version": VERSION}
    return state


def _migrate_attention_options(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` with the stored recipe's ``attention_options`` completed by the attention's
    ``migrate_options`` from the weights (one logged line when that changes them); unchanged when the
    recipe or weights are unreadable (:func:`read_checkpoint` reports those)."""
    try:
        recipe = tomllib.loads(state["recipe"])
        model, weights = recipe["model"], state["model"]
        options = model.get("attention_options", {})
        attention = get_attention(model["attention"])
    except (KeyError, TypeError, AttributeError, ValueError, tomllib.TOMLDecodeError):
        return state
    if not isinstance(options, dict) or not isinstance(weights, Mapping):
        return state
    migrated = attention.migrate_options(options, weights)
    if migrated == options:
        return state
    added = ", ".join(f"{key}={value!r}" for key, value in migrated.items() if options.get(key) != value)
    log.warning("%s: a checkpoint of %r from before some of its options existed; read with %s (what its weights "
                "were trained with)", path, model["attention"], added)
    recipe["model"] = {**model, "attention_options": migrated}
    return {**state, "recipe": tomli_w.dumps(recipe)}


# -------------------------------------------------------------------------------------------------
# One path from a checkpoint to a model


@dataclass
class CheckpointContents:
    """What a checkpoint holds for building a model.

    Attributes:
        path: the file read.
        config: the model config (the ``[model]`` table of the stored recipe).
        state_dict: the model weights.
        recipe: the resolved recipe as TOML text.
        vocabulary: the task's token names (``{"kind", "itos", "join"}``, see
            :meth:`lotsim.tasks.Task.vocabulary`) or None.
        step: optimiser steps done when the checkpoint was written, or None.
        state: the whole checkpoint dict (optimizer, rng, best...).
    """

    path: Path
    config: ModelConfig
    state_dict: Mapping[str, Any]
    recipe: str | None = None
    vocabulary: dict[str, Any] | None = None
    step: int | None = None
    state: Mapping[str, Any] | None = None


def read_checkpoint(checkpoint: str | Path, *, prefer: str = BEST, allow_code: bool = False) -> CheckpointContents:
    """Read a ``lotsim train`` checkpoint (a file, or a run folder: ``best.pt``, else ``last.pt``).

    Only the ``[model]`` table of the stored recipe is validated (so a char-LM checkpoint loads on a
    machine without its corpus, and no task code is imported). The vocabulary is the one stored in
    the checkpoint; a checkpoint written before vocabularies were stored gets the vocabulary of a
    built-in synthetic task from its recipe (never by reading a file the checkpoint names).

    Raises:
        FileNotFoundError: the file (or a checkpoint in the folder) does not exist.
        ValueError: not a lotsim checkpoint, or a stored recipe or config that does not validate (one line).
    """
    from lotsim.tasks import vocabulary_from_recipe

    path = resolve_checkpoint(checkpoint, prefer)
    state = load_checkpoint(path, allow_code=allow_code)
    try:
        recipe_table = tomllib.loads(state["recipe"])
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{str(path)!r} holds no readable recipe ({type(err).__name__}: {err})") from None
    config_dict, weights = recipe_table.get("model"), state.get("model")
    if not isinstance(config_dict, Mapping) or not isinstance(weights, Mapping):
        raise ValueError(f"{str(path)!r} is not a model checkpoint: it needs 'model' weights and a recipe "
                         f"with a [model] table")
    try:
        config = ModelConfig.model_validate(dict(config_dict))
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        lines = [line.strip() for line in str(err).splitlines()[1:3]]
        raise ValueError(f"{str(path)!r}: the stored model config is invalid ({' '.join(lines)})") from None
    vocabulary = state.get("vocabulary") or vocabulary_from_recipe(recipe_table, read_files=False)
    step = state.get("step")
    return CheckpointContents(path=path, config=config, state_dict=weights, recipe=state["recipe"],
                              vocabulary=vocabulary, step=int(step) if isinstance(step, int) else None,
                              state=state)


def model_from_checkpoint(contents: CheckpointContents, config: ModelConfig | None = None,
                          device: str | torch.device = "cpu") -> LOTModel:
    """The eval-mode float32 :class:`~lotsim.model.LOTModel` with the checkpoint's weights.

    Args:
        contents: what :func:`read_checkpoint` returned.
        config: the model config to build (default: the checkpoint's own).
        device: where the model goes.

    Raises:
        ValueError: the weights do not fit the config (one line naming the first mismatches).
    """
    model = LOTModel(config or contents.config)
    try:
        model.load_state_dict(contents.state_dict)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ValueError(f"{str(contents.path)!r}: the weights do not match the model config "
                         f"({detail[:300]})") from None
    return model.float().to(device).eval()
