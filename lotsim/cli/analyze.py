"""``lotsim analyze order|transition|snapshot|movie|defects``: analysis of H5MD trajectories;
``lotsim analyze copy-depth``: a trained model's held-out loss by copy events.

Thin wrappers over :mod:`lotsim.analysis` (imported inside the commands): options in, library call,
a rich table or exactly one JSON object out. Warnings (e.g. a partial file) go to stderr.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import Command, fail, print_json, print_table, progress_bar, stderr, user_errors, warn

analyze_app = typer.Typer(help="Analyse trajectories: order parameters, transitions, phase maps, defects.",
                          no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)

Run = Annotated[Path, typer.Argument(help="H5MD trajectory written by lotsim simulate.", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
Plot = Annotated[bool, typer.Option("--plot", help="Write figures (PNG) into plots/ next to the file, or --out.")]
Svg = Annotated[bool, typer.Option("--svg", help="Also write SVG figures.")]
OutDir = Annotated[Path | None, typer.Option("--out", help="Folder for the figures (default: plots/ next to the run).")]
Replica = Annotated[int | None, typer.Option(help="Analyse only this replica (default: all).")]
Transient = Annotated[float | None, typer.Option(help="Discard frames before this time (default: detect it).")]
MaxPoints = Annotated[int, typer.Option(help="Time series in --json are decimated to this many samples.")]
Group = Annotated[str | None, typer.Option(help="Particles group to analyse, e.g. layer_00 of a training run's "
                                           "telemetry.h5 (frames = training steps, replicas = probe tokens, "
                                           "nodes = heads); default: the simulated oscillators.",
                                           show_default=False)]


def _warn(messages) -> None:
    for message in messages:
        warn(message)


def _formats(svg: bool) -> tuple[str, ...]:
    return ("png", "svg") if svg else ("png",)


def _fmt(value, spec: str = ".4g") -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _done(json_: bool, summary: dict, table) -> None:
    from lotsim import __version__

    summary.setdefault("lotsim_version", __version__)  # every report says which lotsim made it
    _warn(summary.get("warnings", []))
    if json_:
        print_json(summary)
        return
    if table is not None:
        print_table(table)
    for path in summary.get("plots", []) or []:
        stderr.print(f"plot: [bold]{path}[/bold]")


@analyze_app.command(cls=Command)
def order(run: Run, replica: Replica = None, transient: Transient = None,
          max_harmonic: Annotated[int, typer.Option(help="Report harmonics r_1..r_M.")] = 4,
          tol: Annotated[float, typer.Option(help="Locked clusters: effective frequencies agree within tol.")] = 1e-2,
          frequency_method: Annotated[str, typer.Option(help="fit (least squares) or endpoints.")] = "fit",
          plot: Plot = False, svg: Svg = False, out: OutDir = None, max_points: MaxPoints = 1000,
          group: Group = None, json_: Json = False) -> None:
    """Order parameters r_m(t), psi(t), local order, effective frequencies, locked clusters, chi and V(t)."""
    from lotsim.analysis import plots
    from lotsim.analysis.order import analyze_order

    with user_errors(), progress_bar("order") as bar:
        task = bar.add_task("order", total=None)
        report = analyze_order(run, replica=replica, transient=transient, max_harmonic=max_harmonic, tol=tol,
                               frequency_method=frequency_method, group=group,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
        summary = report.to_dict(max_points=max_points)
        if plot or svg:
            summary["plots"] = [str(p) for p in plots.plot_order(report, out or plots.default_plot_dir(run),
                                                                 _formats(svg))]
    from rich.table import Table

    table = Table(title=f"{summary['lattice']}: {summary['n_frames']} frames, t = 0..{summary['t_final']:g}")
    for column in ("rep", "K", "t*", "⟨r⟩", "sd r", "χ", "⟨r_loc⟩", "locked", "clust", "V end"):
        table.add_column(column, justify="right")
    for row in summary["replicas"]:
        pot = row["potential"]
        table.add_row(str(row["replica"]), _fmt(row["coupling"]), _fmt(row["transient"]["time"]),
                      _fmt(row["r_mean"], ".4f"), _fmt(row["r_sd"], ".3f"), _fmt(row["chi"], ".3g"),
                      _fmt(row["local_order_mean"], ".3f"), _fmt(row["locked_fraction"], ".3f"),
                      str(row["n_locked_clusters"] or 0), _fmt(pot.get("final"), ".4g") if pot["defined"] else "n/a")
    table.caption = ("t*: end of the transient; locked: share of the largest cluster of equal effective "
                     f"frequencies (tol {summary['lock_tol']:g}) pulled together by the coupling (groups whose "
                     "natural frequencies already agree are drifting, not locked); V: Lyapunov potential")
    _done(json_, summary, table)


@analyze_app.command(cls=Command)
def transition(runs: Annotated[list[Path], typer.Argument(help="Sweep files (couplings x seeds); several are combined.",
                                                          show_default=False)],
               transient: Annotated[float | None, typer.Option(help="Average over t >= this (default: second half).")]
               = None,
               n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of the 95% band.")] = 1000,
               seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
               adiabatic: Annotated[bool, typer.Option(help="Also run forward/backward adiabatic sweeps of the "
                                                       "first file's recipe (hysteresis).")] = False,
               adiabatic_steps: Annotated[int | None, typer.Option(help="Steps per coupling of --adiabatic "
                                                                   "(default: the recipe's).")] = None,
               plot: Plot = False, svg: Svg = False, out: OutDir = None, json_: Json = False) -> None:
    """r(K) with a 95% bootstrap band, K_c (fit and susceptibility peak) and the mean-field theory."""
    from lotsim.analysis import plots
    from lotsim.analysis.transition import adiabatic_sweep, analyze_transition

    with user_errors():
        report = analyze_transition(runs, transient=transient, n_boot=n_boot, seed=seed)
        if adiabatic:
            from lotsim.config import SimulationRecipe, validate_recipe

            recipe = validate_recipe(SimulationRecipe, report.infos[0].recipe)
            with progress_bar("adiabatic sweep") as bar:
                task = bar.add_task("adiabatic sweep", total=2 * report.couplings.size)
                report.adiabatic = adiabatic_sweep(recipe, report.couplings, "both", steps_per_coupling=adiabatic_steps,
                                                   progress=lambda done, total: bar.update(task, completed=done))
        summary = report.to_dict()
        if plot or svg:
            summary["plots"] = [str(p) for p in plots.plot_transition(report, out or plots.default_plot_dir(runs[0]),
                                                                      _formats(svg))]
    from rich.table import Table

    fit, chi = summary["kc_fit"], summary["kc_susceptibility"]
    theory = f", theory K_c = {summary['kc_theory']:.4g}" if summary["kc_theory"] is not None else ""
    onset = (f"K_c = {fit['kc']:.4g} ± {_fmt(fit['sd'], '.2g')} (fit)" if summary["first_order"] is None else
             f"first-order transition ({summary['first_order']}): no K_c fit")
    table = Table(title=f"{summary['lattice']}: {onset}, {chi['kc']:.4g} ± {chi['sd']:.2g} (χ peak){theory}")
    for column in ("K", "seeds", "r mean", "95% band", "χ", "r theory"):
        table.add_column(column, justify="right")
    r_theory = summary["r_theory"] or [None] * len(summary["couplings"])
    for k, s, r, lo, hi, c, rt in zip(summary["couplings"], summary["n_seeds"], summary["r_mean"], summary["r_low"],
                                      summary["r_high"], summary["chi_mean"], r_theory):
        table.add_row(_fmt(k), str(s), f"{r:.4f}", f"[{lo:.4f}, {hi:.4f}]", f"{c:.3g}", _fmt(rt, ".4f"))
    _done(json_, summary, table)


@analyze_app.command(cls=Command)
def snapshot(run: Run, frame: Annotated[int, typer.Option(help="Frame index (-1: the last).")] = -1,
             replica: Annotated[int, typer.Option(help="Replica to draw.")] = 0,
             spacetime: Annotated[bool, typer.Option(help="Draw the space-time diagram (phase vs node and time).")]
             = False,
             svg: Svg = False,
             out: Annotated[Path | None, typer.Option(help="Figure file (.png) or folder (default: plots/).")] = None,
             group: Group = None, json_: Json = False) -> None:
    """The wrapped phase field of one frame on the lattice (image, scatter, phase-vs-node or unit circle)."""
    from lotsim.analysis import plots

    with user_errors():
        if spacetime:
            result = plots.plot_spacetime(run, replica=replica, out=out, formats=_formats(svg), group=group)
        else:
            result = plots.plot_snapshot(run, frame=frame, replica=replica, out=out, formats=_formats(svg),
                                         group=group)
    _done(json_, {"file": str(run), **result}, None)


@analyze_app.command(cls=Command)
def movie(run: Run, out: Annotated[Path | None, typer.Option(help="Movie file: .gif (Pillow) or .mp4 (needs ffmpeg); "
                                                             "default plots/<run>_movie_r<replica>.gif.")] = None,
          replica: Annotated[int, typer.Option(help="Replica to animate.")] = 0,
          fps: Annotated[int, typer.Option(help="Frames per second.")] = 10,
          max_frames: Annotated[int, typer.Option(help="At most this many evenly spaced frames.")] = 200,
          group: Group = None, json_: Json = False) -> None:
    """Animate the phase field of one replica (streams the frames; flat memory for MP4)."""
    from lotsim.analysis import plots

    with user_errors(), progress_bar("movie") as bar:
        task = bar.add_task("movie", total=None)
        result = plots.write_movie(run, out=out, replica=replica, fps=fps, max_frames=max_frames, group=group,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    result["plots"] = [result["output"]]
    _done(json_, {"file": str(run), **result}, None)


@analyze_app.command(cls=Command)
def defects(run: Run, replica: Replica = None, plot: Plot = False, svg: Svg = False, out: OutDir = None,
            max_points: MaxPoints = 1000, group: Group = None, json_: Json = False) -> None:
    """Winding numbers (rings) or vortex/antivortex counts and defect density (2-D lattices) over time."""
    from lotsim.analysis import plots
    from lotsim.analysis.defects import analyze_defects

    with user_errors(), progress_bar("defects") as bar:
        task = bar.add_task("defects", total=None)
        report = analyze_defects(run, replica=replica, group=group,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
        summary = report.to_dict(max_points=max_points)
        if plot or svg:
            summary["plots"] = [str(p) for p in plots.plot_defects(report, out or plots.default_plot_dir(run),
                                                                   _formats(svg))]
    from rich.table import Table

    table = Table(title=f"{summary['lattice']}: {summary['kind']} defects, {summary['n_frames']} frames")
    ring = summary["kind"] == "ring"
    columns = ("q initial", "q final", "slips") if ring else ("vortices", "antivortices", "net", "density")
    for column in ("replica", "K", "seed", *columns):
        table.add_column(column, justify="right")
    for row in summary["replicas"]:
        values = ([row["winding_initial"], row["winding_final"], row["winding_changes"]] if ring else
                  [row["vortices_final"], row["antivortices_final"], row["net_charge_final"],
                   f"{row['density_final']:.4g}"])
        table.add_row(str(row["replica"]), _fmt(row["coupling"]), str(row["seed"]), *map(str, values))
    _done(json_, summary, table)


@analyze_app.command("copy-depth", cls=Command)
def copy_depth(run: Annotated[Path, typer.Argument(help="Run folder (its best checkpoint) or checkpoint file of "
                                                   "lotsim train.", show_default=False)],
               split: Annotated[str, typer.Option(help="Held-out split: validation or test.")] = "validation",
               batches: Annotated[int | None, typer.Option(help="Batches to evaluate (default: the recipe's "
                                                           "test_batches, else the whole split).")] = None,
               plot: Annotated[Path | None, typer.Option("--plot", help="Write the figure to this file (.png or "
                                                         ".svg).", show_default=False)] = None,
               json_: Json = False) -> None:
    """Held-out loss by copy depth: positions whose target continues an earlier match of the last d tokens."""
    from lotsim.analysis.copy_depth import analyze_copy_depth, plot_copy_depth

    if split not in ("validation", "test"):
        raise fail(f"--split {split!r} is not allowed; use validation or test")
    with user_errors():
        summary = analyze_copy_depth(run, split=split, max_batches=batches)
        if plot is not None:
            summary["plots"] = [str(plot_copy_depth({summary["attention"]: summary}, plot))]
    from rich.table import Table

    table = Table(title=f"{summary['attention']}, {summary['split']} loss {summary['loss']:.4f} over "
                        f"{summary['scored_tokens']:,} positions (context {summary['seq_len']})")
    for column in ("d", "positions", "share", "loss", *summary["distance_buckets"]):
        table.add_column(column, justify="right")
    cells = {(c["depth"], c["distance"]): c for c in summary["depth_distance"]}
    for row in summary["depth"]:
        by_distance = [_fmt(cells[(row["bucket"], d)]["loss_mean"], ".3f") if row["bucket"] != "0" else ""
                       for d in summary["distance_buckets"]]
        table.add_row(row["bucket"], f"{row['count']:,}", _fmt(row["fraction"], ".1%"), _fmt(row["loss_mean"], ".4f"),
                      *by_distance)
    table.caption = ("d: copy depth, the longest earlier occurrence of the last d tokens whose next token is the "
                     "target (0: none); loss: mean loss; 1-3 ... 256+: mean loss by distance back to that occurrence")
    _done(json_, summary, table)
