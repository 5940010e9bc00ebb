"""Checkpoints we own: one dict, written atomically.

Contents (``torch.save``)::

    format, version          "lotsim-train-checkpoint", 1
    model                    state_dict of the bare model (never the DDP wrapper)
    optimizer, scheduler     their state_dicts
    step                     optimiser steps done
    data_index               micro-batches consumed per process (batches are index-addressed)
    rng                      per process: {python, numpy, torch, cuda}
    best                     {"metric", "value", "step"} of the best validation so far
    recipe                   the resolved recipe, TOML text
    world_size, lotsim_version, git_commit, wall_time_s

Writes go to ``<name>.tmp`` then ``os.replace`` (atomic on POSIX): a crash mid-write leaves the
previous checkpoint intact. ``last.pt`` is written every ``train.checkpoint_every`` steps, at the
end and on Ctrl-C; ``best.pt`` whenever the validation ``best_metric`` improves.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT, VERSION = "lotsim-train-checkpoint", 1
LAST, BEST = "last.pt", "best.pt"


def rng_state() -> dict[str, Any]:
    """This process's random states: python, numpy (global), torch (CPU) and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: the file is not a lotsim training checkpoint (one line).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a lotsim training checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state['version']}; this lotsim reads <= {VERSION}")
    return state
