"""Shared CLI plumbing: consoles, one-line user errors (exit 2), runtime failures (exit 1), JSON."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperCommand, TyperOption

stderr = Console(stderr=True, emoji=False)  # ":b:" in a user value stays ":b:"
stdout = Console(emoji=False)

USAGE_ERROR, RUNTIME_ERROR = 2, 1


class Command(TyperCommand):
    """Every lotsim command: a flag takes no value, so its help shows no ``<bool>`` beside it."""

    def format_help(self, ctx, formatter):
        for param in self.get_params(ctx):
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return super().format_help(ctx, formatter)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` on one line to stderr (the message is shown verbatim, never as markup)."""
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library ValueErrors (bad recipe, bad file, bad option) into one line and exit code 2."""
    from lotsim.config import RecipeError

    try:
        yield
    except (RecipeError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as err:
        raise fail(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def print_json(obj: dict) -> None:
    """Exactly one JSON object on stdout. JSON has no NaN or infinity: such numbers are written as
    null, and a note on stderr says how many (e.g. order parameters of a run whose phases are NaN)."""
    clean, replaced = _finite_json(obj)
    if replaced:
        stderr.print(f"note: {replaced} NaN/inf value(s) written as null in the JSON output", highlight=False)
    sys.stdout.write(json.dumps(clean, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite_json(value) -> tuple[object, int]:
    """``value`` with arrays as lists and NaN/inf as None; also the number of values replaced."""
    if isinstance(value, dict):
        items = [(k, *_finite_json(v)) for k, v in value.items()]
        return {k: v for k, v, _ in items}, sum(n for *_, n in items)
    if isinstance(value, list | tuple):
        items = [_finite_json(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, bool | int | str) or value is None:
        return value, 0
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (None, 1)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _finite_json(value.tolist())
    return str(value), 0


def print_table(table, console: Console | None = None) -> None:
    """Print a rich table (on stdout by default) at its natural width: on a narrow terminal it runs
    past the edge (the terminal wraps whole lines) instead of folding or truncating numbers."""
    from rich.measure import Measurement

    console = console if console is not None else stdout
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def progress_bar(description: str, *fields: str, enabled: bool = True) -> Progress:
    """A rich progress bar on stderr, disabled when stderr is not a terminal (or not ``enabled``);
    ``fields`` are extra text columns after the count, e.g. ``"loss {task.fields[loss]}"``."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(f) for f in fields), TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
                    transient=True, disable=not (enabled and stderr.is_terminal))


def metrics_table(title: str, metrics: dict):
    """A rich table of held-out metrics (loss, BPC, accuracy, exact match, sync order per layer)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("loss", "bpc", "token_accuracy", "exact_match", "sync_order"):
        if isinstance(metrics.get(key), float):
            table.add_row(key, f"{metrics[key]:.4f}")
    for layer, r in (metrics.get("sync_order_per_layer") or {}).items():
        table.add_row(f"sync_order {layer}", f"{r:.4f}")
    table.add_row("sequences", str(metrics["sequences"]))
    return table
