"""``lotsim eval``: a checkpoint's metrics on a held-out split -> metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import fail, metrics_table, print_json, stderr, stdout, user_errors


def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, or a run folder (its best.pt, else "
                                               "last.pt).", show_default=False)],
    split: Annotated[str, typer.Option(help="validation or test.")] = "test",
    batches: Annotated[int | None, typer.Option(help="Batches to evaluate (default: train.test_batches, or the "
                                                "whole split where it is finite).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch (default: the recipe's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:<i>.")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Output file (default <run folder>/metrics.json for the test "
                                             "split, metrics.<split>.json otherwise).")] = None,
    intervene: Annotated[list[str] | None, typer.Option(help="Force an oscillator quantity at inference: "
                                                        "[LAYERS.]NAME=VALUE, e.g. coupling=0 or 1.gain=0. "
                                                        "Repeatable.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Evaluate a checkpoint on a held-out split: loss, BPC (text tasks), token accuracy, exact match
    (where it applies) and, for oscillator arms, the mean sync order overall and per layer."""
    if split not in ("validation", "test"):
        raise fail(f"--split {split!r} is not allowed; use validation or test (never the training split)")
    if batches is not None and batches < 1:
        raise fail(f"--batches {batches} must be >= 1")
    from lotsim.train.evaluate import evaluate_checkpoint

    with user_errors():
        metrics = evaluate_checkpoint(checkpoint, split, max_batches=batches, batch_size=batch_size, device=device,
                                      intervene=intervene)
    path = out if out is not None else _default_out(Path(metrics["checkpoint"]), split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    if json_:
        print_json(metrics)
        return
    table = metrics_table(f"{metrics['recipe_name']} ({metrics['attention']}), step {metrics['step']}: {split} split",
                          metrics)
    stdout.print(table)
    stderr.print(f"metrics: [bold]{path}[/bold]", highlight=False)


def _default_out(checkpoint: Path, split: str) -> Path:
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / ("metrics.json" if split == "test" else f"metrics.{split}.json")
