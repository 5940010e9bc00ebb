"""``lotsim analyze run RUN_DIR``: a training run's phase telemetry (sync order over training), and
``lotsim analyze head-lattice``: a trained layer's head lattice as a ``lotsim simulate`` recipe.

Registered on the analyze sub-app by :mod:`lotsim.cli`. ``--plot``, ``--svg`` and ``--out`` mean
what they mean for every ``lotsim analyze`` command: write figures into ``plots/`` next to the
input (here: inside the run folder), or into ``--out DIR``.
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


def head_lattice(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file or run folder (best.pt, else last.pt).",
                                               show_default=False)],
    layer: Annotated[int, typer.Option(help="Layer whose head lattice to export (a lattice attention).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for simulate.toml, edges.txt and omega.npy (default: "
                                             "head_lattice_layer<L>/ in the run folder).", show_default=False)]
    = None,
    steps: Annotated[int, typer.Option(help="Integration steps written into the recipe.")] = 2000,
    save_every: Annotated[int, typer.Option(help="Output stride written into the recipe.")] = 10,
    overwrite: Annotated[bool, typer.Option(help="Replace files already in --out.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Export a trained layer's head lattice (learned frequencies, couplings and lattice constants) as
    a lotsim simulate recipe, so the learned oscillators can be simulated and analysed as physics."""
    from lotsim.cli._common import fail

    if steps < 1 or save_every < 1:
        raise fail(f"--steps ({steps}) and --save-every ({save_every}) must be >= 1")
    from lotsim.api import load_model
    from lotsim.model.simulation import EDGES_FILE, OMEGA_FILE, RECIPE_FILE, write_simulation_inputs

    with user_errors():
        trained = load_model(checkpoint)
        folder = out if out is not None else _run_folder(trained.path) / f"head_lattice_layer{layer}"
        names = (RECIPE_FILE, EDGES_FILE, OMEGA_FILE)
        existing = [name for name in names if (folder / name).exists()]
        if existing and not overwrite:
            raise ValueError(f"{str(folder)!r} already holds {', '.join(existing)}; pass --overwrite to replace them")
        n_layers = trained.model.config.n_layers
        if not 0 <= layer < n_layers:
            raise ValueError(f"--layer {layer} is out of range; the model has layers 0..{n_layers - 1}")
        recipe = write_simulation_inputs(trained.model, layer, folder, steps=steps, save_every=save_every)
    summary = {"checkpoint": str(trained.path), "layer": layer, "recipe": str(recipe),
               "files": [str(folder / name) for name in names],
               "simulate": f"lotsim simulate {recipe}"}
    if json_:
        print_json(summary)
        return
    stderr.print(f"recipe: [bold]{recipe}[/bold]; simulate it with: lotsim simulate {recipe}", highlight=False)


def _run_folder(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
