"""``lotsim analyze run RUN_DIR``: a training run's phase telemetry (sync order over training).

Register on the analyze sub-app with ``analyze_app.command("run")(run)``. ``--plot``, ``--svg`` and
``--out`` mean what they mean for every ``lotsim analyze`` command: write figures into ``plots/``
next to the input (here: inside the run folder), or into ``--out DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import print_json, print_table, stderr, user_errors


def run(
    run_dir: Annotated[Path, typer.Argument(help="A lotsim train run folder (holding telemetry.h5).",
                                            show_default=False)],
    plot: Annotated[bool, typer.Option("--plot", help="Write figures (PNG) into plots/ in the run folder, "
                                       "or --out.")] = False,
    svg: Annotated[bool, typer.Option("--svg", help="Also write SVG figures.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the figures (default: plots/ in the run "
                                             "folder).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Sync order over training, per layer and per head, from a run's phase telemetry; with --plot a
    figure (sync order per layer, per-head local order, training and validation loss) and its data
    (sync_order.json beside it)."""
    from lotsim.analysis.telemetry import plot_run_telemetry, run_telemetry

    with user_errors():
        summary = run_telemetry(run_dir)
    if plot or svg:
        folder = out if out is not None else Path(summary["run_dir"]) / "plots"
        summary["plots"] = [str(plot_run_telemetry(summary, folder / f"sync_order.{fmt}"))
                            for fmt in (("png", "svg") if svg else ("png",))]
        (folder / "sync_order.json").write_text(json.dumps(summary) + "\n")  # the figure's data, sidecar
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
    print_table(table)
    for path in summary.get("plots", []):
        stderr.print(f"plot: [bold]{path}[/bold]", highlight=False)
