"""The ``lotsim`` command line (Typer). Only this package imports typer/rich; heavy libraries
(torch, matplotlib, onnx, cupy) are imported inside the commands that need them."""

from __future__ import annotations

from typing import Annotated

import typer

from lotsim import __version__
from lotsim.cli._common import Command
from lotsim.cli.analyze import analyze_app
from lotsim.cli.analyze_run import head_lattice
from lotsim.cli.analyze_run import run as analyze_run
from lotsim.cli.compare import compare
from lotsim.cli.eval import eval_
from lotsim.cli.export import export
from lotsim.cli.generate import generate
from lotsim.cli.simulate import RecipeHelp, simulate
from lotsim.cli.sweep import sweep
from lotsim.cli.train import train

app = typer.Typer(
    help="lotsim: Lattice Oscillator Transformers and a fast, tested Kuramoto lattice simulator.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lotsim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool | None, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
) -> None:
    """lotsim: Lattice Oscillator Transformers and a fast, tested Kuramoto lattice simulator."""


app.command(cls=RecipeHelp)(simulate)
app.command(cls=Command)(sweep)
app.command(cls=Command)(train)
app.command(name="eval", cls=Command)(eval_)
app.command(cls=Command)(export)
app.command(cls=Command)(generate)
app.command(cls=Command)(compare)
analyze_app.command("run", cls=Command)(analyze_run)  # training telemetry: sync order over training
analyze_app.command("head-lattice", cls=Command)(head_lattice)  # a trained head lattice -> a simulate recipe
app.add_typer(analyze_app, name="analyze")
