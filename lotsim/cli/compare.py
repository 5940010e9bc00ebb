"""``lotsim compare``: a multi-seed, parameter-matched study of attention arms with statistics."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import fail, print_json, print_table, stderr, user_errors

# every registered variant's ablations (kept equal to the registry by a test; importing the registry
# here would import torch into every CLI call)
ABLATIONS = ("fsn: no-coupling, no-delay, no-frustration, frozen-phases; lattice: no-oscillator, frozen-phases, "
             "no-coupling; pma: no-oscillator, frozen-phases, no-coupling; ssa: no-oscillator, frozen-phases; "
             "torus: no-coupling, frozen-phases")
# the variants' named readings of their papers (Attention.readings), same rule
READINGS = "fsn: shared-phase, qk, mean, qk-mean; torus: shared-phase, qk, mean, qk-mean"


def compare(
    recipe: Annotated[Path | None, typer.Argument(help="TOML recipe every arm starts from (default: the "
                                                  "embedded copy-reverse recipe).", show_default=False)] = None,
    arms: Annotated[str, typer.Option(help="Comma-separated arms: attention names, or ATTENTION:ABLATION with "
                                      f"the ablations {ABLATIONS}; or ATTENTION:READING with the readings "
                                      f"{READINGS}.")] = "vanilla,lattice",
    seeds: Annotated[int, typer.Option(help="Seeds per arm (shared by all arms: paired tests).")] = 3,
    seed: Annotated[int | None, typer.Option(help="First seed (default: the recipe's).")] = None,
    lr_sweep: Annotated[str | None, typer.Option(help="Learning rates swept for EVERY arm, e.g. 1e-3,3e-3; each "
                                                 "arm's lr is chosen on validation (default with --tune: "
                                                 "3e-4,1e-3,3e-3,1e-2).")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="Tune first: every arm runs every --lr-sweep rate on the "
                                       "first seed for --tune-steps steps, scored on validation (never test); "
                                       "the full runs then use each arm's best rate.")] = False,
    tune_steps: Annotated[int | None, typer.Option(help="Steps of each tuning run (default: a quarter of "
                                                   "--steps).", show_default=False)] = None,
    ablation_seeds: Annotated[int | None, typer.Option(help="Seeds of each ablation arm: the first N of --seeds "
                                                       "(default: all). With --tune an ablation is not tuned: it "
                                                       "runs at its full arm's rate.", show_default=False)] = None,
    copy_depth: Annotated[bool, typer.Option("--copy-depth", help="Add each arm's test loss by copy depth "
                                             "(lotsim analyze copy-depth) to the report.")] = False,
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
    """Train every arm with matched parameters, the same seeds, data order and budget (optionally after a
    per-arm learning-rate sweep, --tune); report per arm mean ± sd and median, and the paired difference
    to the baseline with 95% CIs and Holm-adjusted p (fewer than 5 seeds: a screen)."""
    if seeds < 1:
        raise fail(f"--seeds {seeds} must be >= 1")
    if jobs < 1:
        raise fail(f"--jobs {jobs} must be >= 1")
    if tune_steps is not None and not tune:
        raise fail("--tune-steps needs --tune")
    if ablation_seeds is not None and not 1 <= ablation_seeds <= seeds:
        raise fail(f"--ablation-seeds {ablation_seeds} must be between 1 and --seeds {seeds}")
    if tune_steps is not None and tune_steps < 1:
        raise fail(f"--tune-steps {tune_steps} must be >= 1")
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
                           description=f"{event['phase']} {event['arm']} lr={event['lr']:g} seed={event['seed']}")
            elif event["event"] == "run_done":
                shown = "  ".join(f"{k} {v:.4f}" for k, v in event["test"].items()
                                  if k in ("loss", "bpc", "exact_match", "token_accuracy"))
                if event["phase"] == "tune":
                    shown = f"validation {event['validation_best']:.4f}"
                bar.console.print(f"[{event['phase']} {event['index']}/{event['total']}] {event['arm']} "
                                  f"lr={event['lr']:g} "
                                  f"seed={event['seed']}: {shown}", highlight=False)
                bar.update(task_id, completed=event["index"])

        from lotsim.train.result import TrainingInterrupted

        try:
            report = run_comparison(base, arm_list, list(range(first, first + seeds)), folder, lrs=lrs,
                                    tune=tune, tune_steps=tune_steps, baseline=baseline, reference=reference,
                                    callback=on_event, jobs=jobs, copy_depth=copy_depth,
                                    ablation_seeds=ablation_seeds)
        except (TrainingInterrupted, KeyboardInterrupt) as err:
            where = f" at step {err.step} of {err.run_dir}" if isinstance(err, TrainingInterrupted) else ""
            stderr.print(f"[yellow]interrupted[/yellow]{where}. Rerun the same command with --out {folder} to "
                         "continue (finished runs are reused, stopped ones resumed).", highlight=False)
            raise typer.Exit(130) from None
    if json_:
        from lotsim.train.compare_report import finite

        print_json(finite(report))
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

    from lotsim.train.compare_report import fmt, fmt_ci

    for caveat in report["caveats"]:
        stderr.print(f"[yellow]caveat:[/yellow] {caveat}", highlight=False, soft_wrap=True)
    arms = Table(title=f"arms: {len(report['seeds'])} seeds, {report['steps']} steps ({report['grade']})")
    for column in ("arm", "lr", "params", "non-emb", "vs ref", "tok/s"):
        arms.add_column(column, justify="right")
    for arm, e in report["arms"].items():
        p = e["parameters"]
        arms.add_row(arm, f"{e['lr']:g}", f"{p['total']:,}", f"{p['non_embedding']:,}",
                     f"{p['relative_to_reference']:+.2%}", f"{e['tokens_per_s']['mean']:,.0f}")
    print_table(arms)
    tuning = report.get("tuning")
    if tuning:
        sweep = Table(title=f"lr sweep: validation after {tuning['steps']} steps, seed {tuning['seed']}")
        sweep.add_column("arm", justify="right")
        for lr in tuning["lrs"]:
            sweep.add_column(f"{lr:g}", justify="right")
        for arm in report["arms"]:
            if arm not in tuning["validation"]:  # an ablation at its full arm's rate
                sweep.add_row(arm, *(f"({tuning['inherited'][arm]}'s)" if lr == tuning["chosen"][arm] else ""
                                     for lr in tuning["lrs"]))
                continue
            scores = tuning["validation"][arm]
            sweep.add_row(arm, *(f"[bold]{fmt(scores[str(lr)])}[/bold]" if lr == tuning["chosen"][arm]
                                 else fmt(scores[str(lr)]) for lr in tuning["lrs"]))
        print_table(sweep)
    mark = "†" if report["grade"] == "screen" else ""
    for metric in report["metrics"]:
        table = Table(title=f"test {metric} (Δ = arm − {report['baseline']}, paired over seeds)")
        for column in ("arm", "mean ± sd", "median", "Δ mean", "Δ median", "95% CI", f"p{mark}", f"p{mark} Holm"):
            table.add_column(column, justify="right")
        for arm, e in report["arms"].items():
            s = e["metrics"].get(metric)
            if s is None:
                continue
            paired = (s.get("vs_baseline") or {}).get("paired", {})
            table.add_row(arm, f"{fmt(s['mean'])} ± {fmt(s['sd'], 2)}", fmt(s["median"]),
                          fmt(s.get("vs_baseline", {}).get("mean_difference"), 3),
                          fmt(paired.get("median_difference"), 3), fmt_ci(paired.get("ci"), 3) if paired else "",
                          fmt(paired.get("p"), 2), fmt(paired.get("p_holm"), 2))
        print_table(table)
    conv = report["baseline_convergence"]
    if conv["slope_per_1k_steps_mean"] is not None:
        stderr.print(f"{conv['arm']} validation loss over steps {conv['window'][0]}–{conv['window'][1]}: "
                     f"{conv['slope_per_1k_steps_mean']:+.3g} per 1000 steps", highlight=False)

