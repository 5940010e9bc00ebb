"""Copy depth: the held-out loss broken down by copy events.

A position t of a window (context ``idx[0..t]``, target ``y_t``) is a *copy event of depth d at
distance δ* when an earlier occurrence of the last d context tokens, ending at j = t − δ ≥ 0, was
followed by the target: ``idx[j-d+1..j] == idx[t-d+1..t]`` and ``idx[j+1] == y_t`` (j + 1 ≤ t, so
the continuation is inside the context). The position's depth is the longest such d over every
earlier j (0: no earlier match of even one token that continued to the target), and its distance
the δ of the nearest occurrence achieving that depth. A model that copies well has low loss on deep
copy events; the FSN paper ("Attention as Frustrated Synchronization") locates its advantage there.

Depths are bucketed 0, 1, 2–3, 4–7, 8–15, 16–31, 32+ and distances 1–3, 4–15, 16–63, 64–255, 256+.
Everything is vectorised over (batch, offset, position): per offset δ the run length of
``idx[t] == idx[t-δ]`` ending at t is ``t − (last mismatch at or before t)``, a cumulative maximum.
Memory is O(t²) per row; rows are processed in chunks of at most 2^22 (row, offset, position) entries.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEPTH_EDGES = (0, 1, 2, 4, 8, 16, 32)  # bucket i holds depths in [edge_i, edge_{i+1})
DISTANCE_EDGES = (1, 4, 16, 64, 256)
_CHUNK_ENTRIES = 1 << 22


def _labels(edges: tuple[int, ...]) -> list[str]:
    out = []
    for lo, hi in zip(edges, edges[1:]):
        out.append(str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
    return out + [f"{edges[-1]}+"]


DEPTH_LABELS = _labels(DEPTH_EDGES)
DISTANCE_LABELS = _labels(DISTANCE_EDGES)


def copy_depths(idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy depth and distance of every position (see the module docstring).

    Args:
        idx: (b, t) context tokens.
        targets: (b, t) the token each position predicts (any value that never occurs in ``idx``,
            e.g. the ignore index, gives depth 0).

    Returns:
        (depth, distance), both (b, t) int64; distance is 0 where depth is 0.
    """
    b, t = idx.shape
    depth = torch.zeros(b, t, dtype=torch.long, device=idx.device)
    distance = torch.zeros_like(depth)
    if t < 2:
        return depth, distance
    pos = torch.arange(t, device=idx.device)
    delta = torch.arange(1, t, device=idx.device)  # offsets back (o,)
    earlier = pos[None, :] - delta[:, None]  # (o, t): j = t - δ, the end of the earlier occurrence
    valid = earlier >= 0
    earlier = earlier.clamp(min=0)
    following = (earlier + 1).clamp(max=t - 1)  # (o, t): j + 1 <= t, the token that followed it
    rows = max(1, _CHUNK_ENTRIES // (t * t))
    for lo in range(0, b, rows):
        x, y = idx[lo:lo + rows], targets[lo:lo + rows]  # (c, t)
        same = (x[:, None, :] == x[:, earlier]) & valid  # (c, o, t): idx[t] == idx[t - δ]
        last_mismatch = torch.where(same, -1, pos).cummax(dim=-1).values
        run = pos - last_mismatch  # matching suffix length ending at (t, t - δ)
        run = run * (y[:, None, :] == x[:, following])  # ... that continued to the target
        best, where = run.max(dim=1)  # first maximum: the nearest occurrence of the longest match
        depth[lo:lo + rows] = best
        distance[lo:lo + rows] = torch.where(best > 0, delta[where], 0)
    return depth, distance


def bucket(values: torch.Tensor, edges: tuple[int, ...]) -> torch.Tensor:
    """Bucket index of each value: i where ``edges[i] <= value < edges[i+1]`` (last bucket open)."""
    return torch.bucketize(values, torch.tensor(edges, device=values.device), right=True) - 1


class CopyDepthTable:
    """Running sums of loss and counts per (depth bucket, distance bucket); distance column 0 holds
    depth-0 positions (no copy), columns 1.. the distance buckets."""

    def __init__(self):
        shape = (len(DEPTH_LABELS), len(DISTANCE_LABELS) + 1)
        self.loss = np.zeros(shape)
        self.count = np.zeros(shape, dtype=np.int64)

    def add(self, losses: torch.Tensor, depth: torch.Tensor, distance: torch.Tensor, scored: torch.Tensor) -> None:
        """Accumulate per-position ``losses`` (b, t) at the ``scored`` (b, t) positions."""
        d = bucket(depth[scored], DEPTH_EDGES)
        k = torch.where(depth[scored] > 0, bucket(distance[scored].clamp(min=1), DISTANCE_EDGES) + 1, 0)
        cell = (d * self.count.shape[1] + k).cpu().numpy()
        self.count += np.bincount(cell, minlength=self.count.size).reshape(self.count.shape)
        self.loss += np.bincount(cell, weights=losses[scored].double().cpu().numpy(),
                                 minlength=self.count.size).reshape(self.count.shape)

    def to_dict(self) -> dict[str, Any]:
        """``depth``: per depth bucket count, fraction and mean loss; ``depth_distance``: the same per
        (depth bucket, distance bucket) for copy events; ``loss`` and ``scored_tokens`` overall."""
        total = int(self.count.sum())

        def cell(loss: float, count: int) -> dict[str, Any]:
            return {"count": int(count), "fraction": count / total if total else None,
                    "loss_mean": loss / count if count else None}

        depth_rows = [{"bucket": label, **cell(self.loss[i].sum(), self.count[i].sum())}
                      for i, label in enumerate(DEPTH_LABELS)]
        pairs = [{"depth": label, "distance": dist, **cell(self.loss[i, j + 1], self.count[i, j + 1])}
                 for i, label in enumerate(DEPTH_LABELS) if i > 0 for j, dist in enumerate(DISTANCE_LABELS)]
        return {"scored_tokens": total, "loss": float(self.loss.sum() / total) if total else None,
                "depth_buckets": DEPTH_LABELS, "distance_buckets": DISTANCE_LABELS,
                "depth": depth_rows, "depth_distance": pairs}


def load_model(checkpoint: str | Path):
    """(model in eval mode, recipe, checkpoint path, step) from a checkpoint file or run folder."""
    from lotsim.train.checkpoint import model_from_checkpoint, read_checkpoint
    from lotsim.train.recipe import recipe_from_toml

    contents = read_checkpoint(checkpoint)
    recipe = recipe_from_toml(contents.recipe)
    return model_from_checkpoint(contents).eval(), recipe, contents.path, int(contents.step or 0)


@torch.no_grad()
def analyze_copy_depth(checkpoint: str | Path, split: str = "validation", *, max_batches: int | None = None,
                       batch_size: int | None = None, device: str | None = None) -> dict[str, Any]:
    """The copy-depth breakdown of a trained model's loss on a held-out split.

    Args:
        checkpoint: a checkpoint file or a run folder (``best.pt``, else ``last.pt``).
        split: ``validation`` (default) or ``test``.
        max_batches: batches to evaluate (default: the recipe's ``test_batches`` / the whole split).
        batch_size: sequences per batch (default: the recipe's held-out batch size).
        device: torch device (default: the recipe's ``train.device``, ``auto`` = cuda if present).

    Returns:
        :meth:`CopyDepthTable.to_dict` plus ``checkpoint``, ``step``, ``attention``, ``split``,
        ``seq_len``, ``batches``.
    """
    from lotsim.tasks import IGNORE_INDEX, build_task, check_split
    from lotsim.train.components import pick_device
    from lotsim.train.evaluate import held_out_batches

    check_split(split)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1")
    model, recipe, path, step = load_model(checkpoint)
    device = pick_device(device or recipe.train.device)
    model.to(device)
    task = build_task(recipe.task)
    size = batch_size or recipe.train.held_out_batch_size
    n_batches = held_out_batches(task, split, size, max_batches if max_batches is not None
                                 else recipe.train.test_batches)
    table = CopyDepthTable()
    for index in range(n_batches):
        idx, targets = task.batch(split, size, index)
        idx, targets = idx.to(device), targets.to(device)
        logits = model(idx).logits.float()
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none").view_as(targets)
        depth, distance = copy_depths(idx, targets)
        table.add(losses, depth, distance, targets != IGNORE_INDEX)
    return {"checkpoint": str(path), "step": step, "attention": recipe.model.attention, "split": split,
            "seq_len": int(idx.shape[1]), "batches": n_batches, **table.to_dict()}


def combine_breakdowns(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds of one arm: per depth bucket the mean (and sd) over seeds of the mean loss, and the count
    per seed (the same data for every seed and arm, so the counts agree)."""
    rows = []
    for i, label in enumerate(DEPTH_LABELS):
        losses = [b["depth"][i]["loss_mean"] for b in per_seed if b["depth"][i]["loss_mean"] is not None]
        rows.append({"bucket": label, "count": per_seed[0]["depth"][i]["count"],
                     "fraction": per_seed[0]["depth"][i]["fraction"],
                     "loss_mean": float(np.mean(losses)) if losses else None,
                     "loss_sd": float(np.std(losses, ddof=1)) if len(losses) > 1 else None})
    return {"seeds": len(per_seed), "split": per_seed[0]["split"], "depth": rows}


def breakdown_markdown(per_arm: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table: one row per arm, one column per depth bucket (mean loss over seeds), and a
    row of the share of scored positions in each bucket."""
    first = next(iter(per_arm.values()))
    lines = ["| arm | " + " | ".join(f"d {label}" for label in DEPTH_LABELS) + " |",
             "|---|" + "---|" * len(DEPTH_LABELS),
             "| share of positions | " + " | ".join(_number(r["fraction"], ".1%") for r in first["depth"]) + " |"]
    for arm, entry in per_arm.items():
        lines.append(f"| {arm} | " + " | ".join(_number(r["loss_mean"], ".4f") for r in entry["depth"]) + " |")
    return lines


def _number(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def plot_copy_depth(results: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Mean loss per depth bucket, one line per model (``results``: label -> analysis or combined
    breakdown), with the share of positions in each bucket as bars on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lotsim.analysis.plots import provenance

    fig, ax = plt.subplots(figsize=(6.0, 3.8), constrained_layout=True)
    x = np.arange(len(DEPTH_LABELS))
    share = ax.twinx()
    first = next(iter(results.values()))
    share.bar(x, [r["fraction"] or 0.0 for r in first["depth"]], color="0.85", width=0.6, zorder=0)
    share.set_ylabel("share of scored positions")
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    for label, result in results.items():
        y = [np.nan if r["loss_mean"] is None else r["loss_mean"] for r in result["depth"]]
        ax.plot(x, y, "o-", label=label)
    ax.set_xticks(x, DEPTH_LABELS)
    ax.set_xlabel("copy depth d (longest earlier match the target continues; 0 = none)")
    ax.set_ylabel(f"mean {first['split']} loss (nats/token)")
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = [r.get("checkpoint", label) for label, r in results.items()]
    fig.savefig(path, dpi=120, metadata=provenance(sources, "copy-depth", path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
