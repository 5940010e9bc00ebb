"""A training run's phase telemetry: sync order over training, per layer and per head.

Reads ``RUN_DIR/telemetry.h5`` (written by :mod:`lotsim.train.telemetry`: one particles group per
layer, replica = probe token, node = head) and ``RUN_DIR/metrics.jsonl`` (training and validation
loss curves).

Per layer and frame (training step):

* ``order_parameter``: mean over probe tokens of r = |mean_h exp(i theta_h)| (sync across the
  head lattice), with its standard deviation over tokens;
* ``head_local_order``: per head, the mean over tokens of the local order parameter (the head and
  its lattice neighbours), when the attention reports it;
* ``head_token_coherence``: per head, |mean over probe tokens of exp(i theta_h)| (how much one
  head's phase agrees across tokens; near 1 means the phase term carries no information).

This module imports numpy/h5py (and matplotlib only inside :func:`plot_run_telemetry`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lotsim.io import open_trajectory
from lotsim.observables import order_parameter

TELEMETRY_FILE = "telemetry.h5"


def run_telemetry(run_dir: str | Path) -> dict[str, Any]:
    """Sync order over training of a run folder.

    Args:
        run_dir: a ``lotsim train`` run folder (or its ``telemetry.h5`` directly).

    Returns:
        ``{"run_dir", "telemetry", "layers": {name: {"steps", "order_parameter",
        "order_parameter_sd", "head_token_coherence", "head_local_order" (or None), "heads",
        "final_order_parameter"}}, "validation": {"steps", "loss"}, "train": {"steps", "loss"}, "seed",
        "lotsim_version",
        "git_commit", "recipe"}``; lists of floats, JSON-ready.

    Raises:
        ValueError: no telemetry file, or one without phase groups (one line).
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / TELEMETRY_FILE
    folder = path.parent
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no {TELEMETRY_FILE}: the run wrote no phase telemetry "
                         f"(vanilla attention, or train.telemetry_every = 0)")
    layers: dict[str, Any] = {}
    with open_trajectory(path) as traj:
        provenance = {key: traj.parameters.get(key) for key in ("seed", "lotsim_version", "git_commit")}
        provenance["recipe"] = traj.recipe_toml
        groups = [g for g in traj.groups if g.startswith("layer_")]
        if not groups:
            raise ValueError(f"{str(path)!r} holds no layer_* phase groups")
        for group in groups:
            steps = traj.group(group).steps
            phase = traj.group(group).phase[()]  # (frame, token, head)
            r = traj.observable("order_parameter", group)[()]  # (frame, token)
            names = traj.group(group).observable_names
            local = traj.observable("local_order_parameter", group)[()] if "local_order_parameter" in names else None
            coherence = order_parameter(np.moveaxis(phase, 1, -1))[0]  # (frame, head): r over tokens
            layers[group] = {
                "steps": steps.tolist(),
                "order_parameter": r.mean(axis=1).tolist(),
                "order_parameter_sd": r.std(axis=1).tolist(),
                "head_token_coherence": coherence.tolist(),
                "head_local_order": local.mean(axis=1).tolist() if local is not None else None,
                "heads": int(phase.shape[2]),
                "final_order_parameter": float(r[-1].mean()),
            }
    return {"run_dir": str(folder), "telemetry": str(path), "layers": layers, **_losses(folder), **provenance}


def _losses(folder: Path) -> dict[str, dict[str, list]]:
    """``{"validation": {"steps", "loss"}, "train": {"steps", "loss"}}`` from ``metrics.jsonl``."""
    curves: dict[str, dict[str, list]] = {"validation": {"steps": [], "loss": []}, "train": {"steps": [], "loss": []}}
    log = folder / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            curve = curves.get(record.get("split"))
            if curve is not None and "loss" in record:
                curve["steps"].append(record["step"])
                curve["loss"].append(record["loss"])
    return curves


def plot_run_telemetry(summary: dict[str, Any], path: str | Path) -> Path:
    """Sync order over training (per layer), per-head local order, and the training and validation
    loss on a log scale.

    Args:
        summary: :func:`run_telemetry`'s result.
        path: the image to write (png/pdf/svg).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = summary["layers"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, data) in enumerate(layers.items()):
        c = colors[i % len(colors)]
        steps, r, sd = np.array(data["steps"]), np.array(data["order_parameter"]), np.array(data["order_parameter_sd"])
        axes[0].plot(steps, r, color=c, label=name)
        axes[0].fill_between(steps, r - sd, r + sd, color=c, alpha=0.15)
        per_head = data["head_local_order"] or data["head_token_coherence"]
        axes[1].plot(steps, np.array(per_head), color=c, lw=0.8, alpha=0.8)
        axes[1].plot([], [], color=c, label=name)
    axes[0].set(xlabel="training step", ylabel="order parameter r (across heads)", ylim=(0, 1.02),
                title="sync order per layer (mean ± sd over probe tokens)")
    first = next(iter(layers.values()))
    which = "local order parameter" if first["head_local_order"] is not None else "coherence across tokens"
    axes[1].set(xlabel="training step", ylabel=which, ylim=(0, 1.02), title=f"per head: {which}")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    train, val = summary.get("train") or {"steps": []}, summary["validation"]
    if train["steps"]:
        axes[2].plot(train["steps"], train["loss"], color="0.55", lw=0.8, label="train (logged steps)")
    if val["steps"]:
        axes[2].plot(val["steps"], val["loss"], marker="o", ms=3, color="C0", label="validation")
    if train["steps"] or val["steps"]:
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=8)
    axes[2].set(xlabel="training step", ylabel="loss (nats per token, log scale)", title="training and validation loss")
    fig.suptitle(summary["run_dir"], fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from lotsim.analysis.plots import provenance

    fig.savefig(path, dpi=120, metadata=provenance([summary["run_dir"]], "run telemetry", path.suffix.lstrip(".")))
    plt.close(fig)
    return path
