"""``lotsim compare``: a multi-seed, parameter-matched study of attention arms with statistics."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import fail, print_json, stderr, stdout, user_errors


def compare(
    recipe: Annotated[Path | None, typer.Argument(help="TOML recipe every arm starts from (default: the "
                                                  "embedded copy-reverse recipe).", show_default=False)] = None,
    arms: Annotated[str, typer.Option(help="Comma-separated arms: attention names, or ATTENTION:ABLATION with "
                                      "ablations no-oscillator, frozen-phases, no-coupling.")] = "vanilla,lattice",
    seeds: Annotated[int, typer.Option(help="Seeds per arm (shared by all arms: paired tests).")] = 3,
    seed: Annotated[int | None, typer.Option(help="First seed (default: the recipe's).")] = None,
    lr_sweep: Annotated[str | None, typer.Option(help="Learning rates swept for EVERY arm, e.g. 1e-3,3e-3; each "
                                                 "arm's lr is chosen on validation.")] = None,
    baseline: Annotated[str | None, typer.Option(help="Arm the differences are taken against (default "
                                                 "vanilla).")] = None,
    reference: Annotated[str | None, typer.Option(help="Arm whose parameter count the others match (default "
                                                  "lattice).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key (section.key=value). "
                                                   "Repeatable.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per run (train.steps).")] = None,
    out: Annotated[Path | None, typer.Option(help="Comparison folder (default outputs/<name>/compare-<time>); "
                                             "finished runs in it are reused.")] = None,
    jobs: Annotated[int, typer.Option(help="Trainings run at once, one process each (e.g. the number of "
                                      "cores); finished runs are reported as they end.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Train every arm with matched parameters, the same seeds, data order and budget; report per arm
    mean ± sd, median, and the 95% CI and p of the difference to the baseline (paired and Welch)."""
    if seeds < 1:
        raise fail(f"--seeds {seeds} must be >= 1")
    if jobs < 1:
        raise fail(f"--jobs {jobs} must be >= 1")
    lrs = None
    if lr_sweep is not None:
        try:
            lrs = [float(v) for v in lr_sweep.split(",") if v.strip()]
        except ValueError:
            raise fail(f"--lr-sweep {lr_sweep!r} is not a comma-separated list of numbers") from None
        if not lrs or any(lr <= 0 for lr in lrs):
            raise fail(f"--lr-sweep {lr_sweep!r} needs positive learning rates")
    from lotsim.train.compare import arm_recipes, parse_arms, run_comparison
    from lotsim.train.recipe import load_training_recipe

    updates = {"train.steps": steps} if steps is not None else {}
    with user_errors():
        base = load_training_recipe(recipe, set_ or [], updates)
        arm_list = parse_arms(arms)
        arm_recipes(base, arm_list, reference)  # parameter matching errors before any training
    first = base.seed if seed is None else seed
    folder = out or Path(base.output.dir) / base.name / f"compare-{_dt.datetime.now():%Y%m%d-%H%M%S}"

    with user_errors(), _progress() as (bar, task_id):
        def on_event(event: dict) -> None:
            if event["event"] == "run":
                bar.update(task_id, total=event["total"], completed=event["index"],
                           description=f"{event['arm']} lr={event['lr']:g} seed={event['seed']}")
            elif event["event"] == "run_done":
                shown = "  ".join(f"{k} {v:.4f}" for k, v in event["test"].items()
                                  if k in ("loss", "bpc", "exact_match", "token_accuracy"))
                bar.console.print(f"[{event['index']}/{event['total']}] {event['arm']} lr={event['lr']:g} "
                                  f"seed={event['seed']}: {shown}", highlight=False)
                bar.update(task_id, completed=event["index"])

        from lotsim.train.loop import TrainingInterrupted

        try:
            report = run_comparison(base, arm_list, list(range(first, first + seeds)), folder, lrs=lrs,
                                    baseline=baseline, reference=reference, callback=on_event, jobs=jobs)
        except (TrainingInterrupted, KeyboardInterrupt) as err:
            where = f" at step {err.step} of {err.run_dir}" if isinstance(err, TrainingInterrupted) else ""
            stderr.print(f"[yellow]interrupted[/yellow]{where}. Rerun the same command with --out {folder} to "
                         "continue (finished runs are reused, stopped ones resumed).", highlight=False)
            raise typer.Exit(130) from None
    if json_:
        from lotsim.train.compare import _finite

        print_json(_finite(report))
        return
    _print_tables(report)
    stderr.print(f"report: [bold]{folder / 'report.md'}[/bold] (+ report.json, comparison.png)", highlight=False)


def _progress():
    from contextlib import contextmanager

    from lotsim.cli._common import progress_bar

    @contextmanager
    def manager():
        with progress_bar("compare") as bar:
            yield bar, bar.add_task("compare", total=None)

    return manager()


def _print_tables(report: dict) -> None:
    from rich.table import Table

    from lotsim.train.compare import _ci, _fmt

    arms = Table(title=f"arms: {len(report['seeds'])} seeds, {report['steps']} steps")
    for column in ("arm", "lr", "params", "non-emb", "vs ref", "tok/s"):
        arms.add_column(column, justify="right")
    for arm, e in report["arms"].items():
        p = e["parameters"]
        arms.add_row(arm, f"{e['lr']:g}", f"{p['total']:,}", f"{p['non_embedding']:,}",
                     f"{p['relative_to_reference']:+.2%}", f"{e['tokens_per_s']['mean']:,.0f}")
    stdout.print(arms)
    for metric in report["metrics"]:
        table = Table(title=f"test {metric} (Δ = arm − {report['baseline']})")
        for column in ("arm", "mean ± sd", "median", "Δ", "paired 95% CI, p", "Welch 95% CI, p"):
            table.add_column(column, justify="right")
        for arm, e in report["arms"].items():
            s = e["metrics"].get(metric)
            if s is None:
                continue
            v = s.get("vs_baseline") or {}
            paired, welch = v.get("paired", {}), v.get("welch", {})
            table.add_row(arm, f"{_fmt(s['mean'])} ± {_fmt(s['sd'], 2)}", _fmt(s["median"]),
                          _fmt(v.get("mean_difference"), 3),
                          f"{_ci(paired.get('ci'), 2)} p={_fmt(paired.get('p'), 2)}" if v else "",
                          f"{_ci(welch.get('ci'), 2)} p={_fmt(welch.get('p'), 2)}" if v else "")
        stdout.print(table)
