"""``lotsim analyze run RUN_DIR``: a training run's phase telemetry (sync order over training).

Register on the analyze sub-app with ``analyze_app.command("run")(run)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import print_json, stderr, stdout, user_errors


def run(
    run_dir: Annotated[Path, typer.Argument(help="A lotsim train run folder (holding telemetry.h5).",
                                            show_default=False)],
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write plots/sync_order.png.")] = True,
    out: Annotated[Path | None, typer.Option(help="Plot file (default RUN_DIR/plots/sync_order.png).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Sync order over training, per layer and per head, from a run's phase telemetry; a plot
    (sync order per layer, per-head local order, validation loss) and a table or JSON."""
    from lotsim.analysis.telemetry import plot_run_telemetry, run_telemetry

    with user_errors():
        summary = run_telemetry(run_dir)
    if plot:
        path = out if out is not None else Path(summary["run_dir"]) / "plots" / "sync_order.png"
        summary["plot"] = str(plot_run_telemetry(summary, path))
        path.with_suffix(".json").write_text(json.dumps(summary) + "\n")  # the plot's data, sidecar
    if json_:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"sync order over training: {summary['run_dir']}")
    for column in ("layer", "heads", "first step", "r first", "last step", "r last"):
        table.add_column(column, justify="right")
    for name, data in summary["layers"].items():
        table.add_row(name, str(data["heads"]), str(data["steps"][0]), f"{data['order_parameter'][0]:.4f}",
                      str(data["steps"][-1]), f"{data['order_parameter'][-1]:.4f}")
    stdout.print(table)
    if plot:
        stderr.print(f"plot: [bold]{summary['plot']}[/bold]", highlight=False)
