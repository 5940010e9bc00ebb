"""The run folder of ``lotsim train``: its layout, the checks before a run writes into it, and the
logs it keeps.

Layout::

    recipe.resolved.toml   metrics.jsonl   metrics.json   checkpoints/{last,best}.pt   tb/   telemetry.h5

A fresh run refuses a folder that holds any of these unless told to overwrite (then they are
removed first, so nothing of the earlier run mixes with the new one); a resume names the way
forward when there is nothing to resume.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lotsim.train.checkpoint import LAST, load_checkpoint

RECIPE_FILE, METRICS_LOG, REPORT = "recipe.resolved.toml", "metrics.jsonl", "metrics.json"
# what a run writes into its folder: refused when present unless overwrite (then removed first)
RUN_FILES = (RECIPE_FILE, METRICS_LOG, REPORT, "checkpoints", "tb", "telemetry.h5")


def default_run_dir(recipe) -> Path:
    """``<output.dir>/<name>/<output.run or a timestamp>``."""
    run = recipe.output.run or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(recipe.output.dir) / recipe.name / run


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; a resumed run first drops lines after its step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        self._handle = open(path, "a")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, allow_nan=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


TENSORBOARD_MISSING = ("TensorBoard logging skipped: the tensorboard package is not installed "
                       "(pip install 'lotsim[tensorboard]', or set output.tensorboard = false)")


def open_tensorboard(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the caller says so once
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def check_run_folder(run_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse a fresh run in a folder that holds files a run writes, unless ``overwrite``.

    Raises:
        ValueError: one line naming the files and the way forward (``--resume`` when there is a
            checkpoint to continue, ``--overwrite`` otherwise).
    """
    run_dir = Path(run_dir)
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present or overwrite:
        return
    if (run_dir / "checkpoints" / LAST).is_file():
        raise ValueError(f"run folder {str(run_dir)!r} already holds a run; continue it with --resume {run_dir}, "
                         f"or replace it with --overwrite, or choose another --out")
    raise ValueError(f"run folder {str(run_dir)!r} already holds {', '.join(present)} (a run stopped before its "
                     f"first checkpoint, or other files); replace them with --overwrite or choose another --out")


def clear_run_folder(run_dir: Path) -> None:
    """Remove what an earlier run wrote (``overwrite``), so nothing of it mixes with the new run."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def resume_checkpoint(run_dir: Path, allow_code: bool) -> dict[str, Any]:
    """The checkpoint a resume continues from, or one line naming the way forward."""
    last = run_dir / "checkpoints" / LAST
    if last.is_file():
        return load_checkpoint(last, allow_code=allow_code)
    if (run_dir / RECIPE_FILE).is_file():
        raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: it stopped before its first checkpoint "
                                f"(no checkpoints/{LAST}); start it again with: lotsim train "
                                f"{run_dir / RECIPE_FILE} --out {run_dir} --overwrite")
    raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: no checkpoints/{LAST} in it")
