"""``lotsim simulate``: standalone oscillator dynamics -> H5MD trajectory + summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lotsim.cli._common import RUNTIME_ERROR, Command, fail, print_json, progress_bar, stderr, stdout, user_errors, warn

_LAT, _DYN, _FREQ, _INIT, _OUT = "Lattice", "Dynamics", "Frequencies", "Initial state", "Output"

FLAG_KEYS = {
    "topology": "lattice.topology", "n": "lattice.n", "shape": "lattice.shape", "periodic": "lattice.periodic",
    "weights": "lattice.weights", "lattice_constant": "lattice.lattice_constant", "lattice_file": "lattice.file",
    "coupling_range": "lattice.coupling_range", "coupling": "dynamics.coupling",
    "normalization": "dynamics.normalization", "frustration": "dynamics.frustration",
    "harmonics": "dynamics.harmonics", "noise": "dynamics.noise", "inertia": "dynamics.inertia",
    "integrator": "dynamics.integrator", "dt": "dynamics.dt", "steps": "dynamics.steps", "t_max": "dynamics.t_max",
    "backend": "dynamics.backend", "device": "dynamics.device", "dtype": "dynamics.dtype", "replicas": "replicas",
    "freq_dist": "frequencies.dist", "freq_mean": "frequencies.mean", "freq_width": "frequencies.width",
    "freq_sampling": "frequencies.sampling", "freq_file": "frequencies.file", "twist": "initial.twist",
    "init": "initial.kind", "save_every": "output.save_every", "compression": "output.compression", "seed": "seed",
    "shard": "shard", "rtol": "dynamics.rtol", "atol": "dynamics.atol",
}
"""Each recipe flag's key: the flags are shortcuts for ``--set KEY=value`` (``--init FILE`` also sets
``initial.file``)."""


class RecipeHelp(Command):
    """``--help`` shows each recipe flag's default, read from the recipe model when help is asked for
    (so importing the CLI stays cheap and no default is written twice)."""

    def format_help(self, ctx, formatter):
        from lotsim.config import SimulationRecipe, recipe_keys

        defaults = {key: value for key, value, _ in recipe_keys(SimulationRecipe)}
        saved = [(param, param.default, param.show_default) for param in self.params if param.name in FLAG_KEYS]
        try:
            for param, _, _ in saved:
                default = defaults.get(FLAG_KEYS[param.name])
                if default is not None:
                    param.default, param.show_default = default, True
            return super().format_help(ctx, formatter)
        finally:  # the command object outlives this call (tests invoke it many times)
            for param, default, show in saved:
                param.default, param.show_default = default, show


def _list_keys(value: bool) -> None:
    """``--list-keys``: every recipe key with its default and allowed values, then exit."""
    if not value:
        return
    from rich.table import Table

    from lotsim.config import SimulationRecipe, recipe_keys

    table = Table(title="recipe keys (set any with --set key=value)", box=None)
    for column in ("key", "default", "allowed"):
        table.add_column(column, overflow="fold")
    for key, default, allowed in recipe_keys(SimulationRecipe):
        shown = "" if default is None else json.dumps(default)  # these JSON values are TOML, as --set takes them
        table.add_row(key, escape(shown), escape(allowed))
    stdout.print(table)
    raise typer.Exit()


def _shape(value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        shape = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a shape like 32x32 or 8x8x8") from None
    if not shape:
        raise typer.BadParameter(f"{value!r} is not a shape like 32x32")
    return shape


def _coupling(value: str | None):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value  # a list "1,2,3" or a range "0:4:64", validated by the recipe


def _floats(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


def simulate(
    recipe: Annotated[Path | None, typer.Argument(help="TOML recipe (optional: embedded defaults otherwise).",
                                                  show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value "
                                                   "(TOML value syntax). Repeatable.")] = None,
    topology: Annotated[str | None, typer.Option(help="ring, chain, square, triangular, hexagonal, hypercubic, "
                                                 "complete, small-world, random-regular, erdos-renyi, "
                                                 "edgelist, graphml.", rich_help_panel=_LAT)] = None,
    n: Annotated[int | None, typer.Option("--n", help="Number of nodes.", rich_help_panel=_LAT)] = None,
    shape: Annotated[str | None, typer.Option(help="Grid shape, e.g. 32x32 (rows x cols; hexagonal counts "
                                              "hexagon cells, so 8x8 has 160 nodes open, 128 periodic).",
                                              rich_help_panel=_LAT)] = None,
    periodic: Annotated[bool | None, typer.Option("--periodic/--open", help="Boundary conditions.",
                                                  rich_help_panel=_LAT)] = None,
    weights: Annotated[str | None, typer.Option(help="Edge weights: uniform, exp, power.",
                                                rich_help_panel=_LAT)] = None,
    lattice_constant: Annotated[float | None, typer.Option(help="Length l of exp(-d/l) weights.",
                                                           rich_help_panel=_LAT)] = None,
    coupling_range: Annotated[float | None, typer.Option(help="Couple all pairs within this distance (lattice "
                                                         "units): nonlocal coupling.", rich_help_panel=_LAT)] = None,
    lattice_file: Annotated[str | None, typer.Option(help="Edge-list or GraphML file.", rich_help_panel=_LAT)] = None,
    coupling: Annotated[str | None, typer.Option(help="K: a value, a list 1,2,3 or a range start:stop:count "
                                                 "(one batched run).", rich_help_panel=_DYN)] = None,
    normalization: Annotated[str | None, typer.Option(help="mean-field (K/N), degree (K/k_i) or none (K).",
                                                      rich_help_panel=_DYN)] = None,
    frustration: Annotated[str | None, typer.Option(help="Phase lag alpha (one per harmonic, comma list).",
                                                    rich_help_panel=_DYN)] = None,
    harmonics: Annotated[str | None, typer.Option(help="Harmonic amplitudes h_1,h_2,...",
                                                  rich_help_panel=_DYN)] = None,
    noise: Annotated[float | None, typer.Option(help="Noise intensity D.", rich_help_panel=_DYN)] = None,
    inertia: Annotated[float | None, typer.Option(help="Inertia mu (second-order model).",
                                                  rich_help_panel=_DYN)] = None,
    integrator: Annotated[str | None, typer.Option(help="euler, heun, rk4, or dopri5 / dop853 (adaptive: "
                                                   "--rtol/--atol).", rich_help_panel=_DYN)] = None,
    dt: Annotated[float | None, typer.Option(help="Time step (adaptive integrators: the time grid unit).",
                                             rich_help_panel=_DYN)] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance: integrate with error control (dopri5, or "
                                               "--integrator dop853) instead of fixed steps.",
                                               rich_help_panel=_DYN)] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance (phase error per step) of dopri5/dop853.",
                                               rich_help_panel=_DYN)] = None,
    steps: Annotated[int | None, typer.Option(help="Number of steps.", rich_help_panel=_DYN)] = None,
    t_max: Annotated[float | None, typer.Option(help="Integration time (instead of --steps).",
                                                rich_help_panel=_DYN)] = None,
    replicas: Annotated[int | None, typer.Option(help="Seeds per coupling.", rich_help_panel=_DYN)] = None,
    backend: Annotated[str | None, typer.Option(help="auto, torch, numba or cupy.", rich_help_panel=_DYN)] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:i].", rich_help_panel=_DYN)] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or float64.", rich_help_panel=_DYN)] = None,
    freq_dist: Annotated[str | None, typer.Option(help="constant, gaussian, lorentzian, uniform or file.",
                                                  rich_help_panel=_FREQ)] = None,
    freq_mean: Annotated[float | None, typer.Option(help="Centre of the distribution.",
                                                    rich_help_panel=_FREQ)] = None,
    freq_width: Annotated[float | None, typer.Option(help="std / half-width gamma / half-range.",
                                                     rich_help_panel=_FREQ)] = None,
    freq_sampling: Annotated[str | None, typer.Option(help="random or quantile.", rich_help_panel=_FREQ)] = None,
    freq_file: Annotated[str | None, typer.Option(help="Frequencies file (.npy/.txt).",
                                                  rich_help_panel=_FREQ)] = None,
    init: Annotated[str | None, typer.Option(help="random, sync, twisted, vortex, or a file (.npy/.txt/.h5).",
                                             rich_help_panel=_INIT)] = None,
    twist: Annotated[int | None, typer.Option(help="Winding number q of a twisted state.",
                                              rich_help_panel=_INIT)] = None,
    save_every: Annotated[int | None, typer.Option(help="Store every k-th step.", rich_help_panel=_OUT)] = None,
    compression: Annotated[str | None, typer.Option(help="lzf, gzip or none.", rich_help_panel=_OUT)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of frequencies, phases, graphs and noise.")] = None,
    shard: Annotated[str | None, typer.Option(help="Run only shard i/n of the couplings x seeds grid.",
                                              rich_help_panel=_OUT)] = None,
    out: Annotated[Path | None, typer.Option(help="Output .h5 file (default outputs/<name>/<time>/traj.h5).",
                                             rich_help_panel=_OUT)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.",
                                         rich_help_panel=_OUT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.",
                                            rich_help_panel=_OUT)] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
    list_keys: Annotated[bool, typer.Option("--list-keys", help="List every recipe key with its default and exit.",
                                            callback=_list_keys, is_eager=True)] = False,
) -> None:
    """Simulate Kuramoto oscillators on a lattice and stream the phases to an H5MD file.

    With no arguments it runs the embedded default: a coupling sweep K = 0..3 on a 1000-oscillator
    complete graph with Lorentzian frequencies (gamma = 0.5, so K_c = 1). The options below are
    shortcuts for the most used recipe keys; every key can be set with --set section.key=value, and
    --list-keys prints them all with their defaults.
    """
    from lotsim.config import SimulationRecipe, load_recipe, recipe_to_toml
    from lotsim.lattice import FILE_TOPOLOGIES
    from lotsim.memory import check_memory

    init_kind, init_file = None, None
    if init is not None:
        init_kind, init_file = (init, None) if init in ("random", "sync", "twisted", "vortex") else ("file", init)
    values = dict(locals())
    values.update(shape=_shape(shape), coupling=_coupling(coupling), frustration=_floats(frustration),
                  harmonics=_floats(harmonics), init=init_kind)
    updates = {key: values[name] for name, key in FLAG_KEYS.items() if values[name] is not None}
    # a kind chosen on the command line drops the recipe's file of another kind (a file given without
    # its kind is refused by the recipe: it is never silently ignored)
    if init is not None:
        updates["initial.file"] = init_file
    if freq_dist not in (None, "file") and freq_file is None:
        updates["frequencies.file"] = None
    if topology is not None and topology not in FILE_TOPOLOGIES and lattice_file is None:
        updates["lattice.file"] = None
    if (rtol is not None or atol is not None) and integrator is None:  # tolerances select the adaptive pair
        updates["dynamics.integrator"] = "dopri5"
    # a duration given on the command line replaces the recipe's other duration key
    if steps is not None:
        updates.setdefault("dynamics.t_max", None)
    if t_max is not None:
        updates.setdefault("dynamics.steps", None)

    with user_errors():
        resolved = load_recipe(SimulationRecipe, recipe, set_ or [], updates)
        check_memory(resolved)  # before torch is even imported
    from lotsim.dynamics import BackendUnavailable
    from lotsim.simulation import SimulationBlowUp, SimulationInterrupted, default_output_path, run_simulation

    path = out if out is not None else default_output_path(resolved)
    _check_out(path)
    if resume and not path.is_file():
        raise fail(f"--resume needs an existing --out file; {str(path)!r} does not exist")
    if not resume and path.exists() and not overwrite:
        raise fail(f"{str(path)!r} exists; pass --overwrite to replace it or --resume to continue it")

    with user_errors(), progress_bar("simulate") as bar:
        task = bar.add_task("simulate", total=resolved.dynamics.n_steps)
        try:
            result = run_simulation(resolved, path, resume=resume, overwrite=overwrite,
                                    progress=lambda step, total: bar.update(task, completed=step))
        except BackendUnavailable as err:
            raise fail(str(err)) from None
        except (SimulationBlowUp, SimulationInterrupted) as err:
            raise fail(str(err), RUNTIME_ERROR) from None
    # named after the run, so several runs in one folder each keep their own
    path.with_name(path.stem + ".recipe.toml").write_text(recipe_to_toml(resolved))

    summary = result.summary()
    for warning in summary.get("warnings", []):
        warn(warning)
    if json_:
        print_json(summary)
        return
    _print_table(summary)
    stderr.print(f"trajectory: [bold]{escape(str(path))}[/bold]", highlight=False)


def _check_out(path: Path) -> None:
    """Refuse an --out that cannot become a file: a folder, a path through a file, an unwritable folder."""
    if path.is_dir():
        raise fail(f"--out {str(path)!r} is a folder; give a file path such as {str(path / 'traj.h5')!r}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise fail(f"--out {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(f"--out {str(path)!r}: the folder {str(parent)!r} is not writable")


def _print_table(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['lattice']}: {summary['steps']} steps, dt={summary['dt']:g}, "
                        f"{summary['wall_time_s']:.2f} s ({summary['backend']})")
    for column in ("replica", "K", "seed", "r final", "r mean", "r sd"):
        table.add_column(column, justify="right")
    rows = zip(summary["coupling"], summary["seed"], summary["r_final"], summary["r_mean"], summary["r_std"])
    for i, (k, s, rf, rm, sd) in enumerate(rows):
        table.add_row(str(i), f"{k:.4g}", str(s), f"{rf:.4f}", f"{rm:.4f}", f"{sd:.4f}" if math.isfinite(sd) else "")
    stdout.print(table)
