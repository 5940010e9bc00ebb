"""``lotsim eval``: a checkpoint's metrics on a held-out split -> eval-<split>[-intervened].json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lotsim.cli._common import fail, metrics_table, print_json, stderr, stdout, user_errors


def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, or a run folder (its best.pt, else "
                                               "last.pt).", show_default=False)],
    split: Annotated[str, typer.Option(help="validation or test.")] = "test",
    batches: Annotated[int | None, typer.Option(help="Batches to evaluate (default: train.test_batches, or the "
                                                "whole split where it is finite).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch (default: the recipe's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:<i>.")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Output file (default <run folder>/eval-<split>.json, "
                                             "eval-<split>-intervened.json with --intervene).")] = None,
    intervene: Annotated[list[str] | None, typer.Option(help="Force an oscillator quantity at inference: "
                                                        "[LAYERS.]NAME=VALUE, e.g. coupling=0 or 1.gain=0. "
                                                        "Repeatable.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key of the checkpoint's recipe, "
                                                   "e.g. task.path=corpus.txt (TOML value syntax). "
                                                   "Repeatable.")] = None,
    allow_code: Annotated[bool, typer.Option(help="Trust the checkpoint: read it even if it needs full "
                                             "unpickling and import the custom task its recipe names.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Evaluate a checkpoint on a held-out split: loss, BPC (text tasks), token accuracy, exact match
    (where it applies) and, for oscillator arms, the mean sync order overall and per layer.

    The results go to a new file beside the run (never the metrics.json training wrote)."""
    if split not in ("validation", "test"):
        raise fail(f"--split {split!r} is not allowed; use validation or test (never the training split)")
    if batches is not None and batches < 1:
        raise fail(f"--batches {batches} must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise fail(f"--batch-size {batch_size} must be >= 1")
    from lotsim.train.checkpoint import resolve_checkpoint
    from lotsim.train.evaluate import evaluate_checkpoint
    from lotsim.train.recipe import check_device

    with user_errors():
        check_device(device, "cpu, cuda or cuda:<i>")
        if out is not None and out.exists() and not overwrite:
            raise fail(f"{str(out)!r} already exists; replace it with --overwrite or choose another --out")
        if out is None:
            out = default_out(resolve_checkpoint(checkpoint), split, bool(intervene))
            if out.exists() and not overwrite:
                raise fail(f"{str(out)!r} already exists; replace it with --overwrite or choose another --out")
        metrics = evaluate_checkpoint(checkpoint, split, max_batches=batches, batch_size=batch_size, device=device,
                                      intervene=intervene, overrides=set_ or [], allow_code=allow_code)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    if json_:
        print_json(metrics)
        return
    forced = f", interventions {', '.join(intervene)}" if intervene else ""
    table = metrics_table(escape(f"{metrics['recipe_name']} ({metrics['attention']}), step {metrics['step']}: "
                                 f"{split} split{forced}"), metrics)
    stdout.print(table)
    stderr.print(f"metrics: [bold]{out}[/bold]", highlight=False)


def default_out(checkpoint: Path, split: str, intervened: bool = False) -> Path:
    """``<run folder>/eval-<split>[-intervened].json`` for a checkpoint in ``<run folder>/checkpoints``."""
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / f"eval-{split}{'-intervened' if intervened else ''}.json"
