"""``lotsim train``: train a model from a recipe -> run folder; prints held-out (test) metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lotsim.cli._common import RUNTIME_ERROR, fail, metrics_table, print_json, progress_bar, stderr, stdout, user_errors

INTERRUPTED = 130


def train(
    recipe: Annotated[Path | None, typer.Argument(help="TOML recipe (optional: the embedded copy-reverse "
                                                  "lattice defaults otherwise).", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value "
                                                   "(TOML value syntax). Repeatable.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder from its last "
                                                "checkpoint (with its own recipe; --set still applies).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default outputs/<name>/<timestamp>).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the model init and dropout.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (train.steps).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:<i> (train.device).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace what an earlier run left in the run folder "
                                            "(checkpoints, logs, metrics, recipe).")] = False,
    allow_code: Annotated[bool, typer.Option(help="With --resume: trust the run folder: read a checkpoint that "
                                             "needs full unpickling and import the custom task its recipe "
                                             "names.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Train a model from a [bold]TOML recipe[/bold]; the run folder holds the resolved recipe,
    checkpoints (last, best), metrics.jsonl, TensorBoard logs, phase telemetry and metrics.json.

    With no recipe it trains the embedded default: copy-reverse (12 digits) with lattice attention,
    a few minutes on two CPU cores. Multi-GPU / multi-node: [bold]torchrun --nproc_per_node=N -m
    lotsim train RECIPE[/bold].
    """
    from lotsim.train.recipe import load_training_recipe

    flags = {"seed": seed, "train.steps": steps, "train.device": device}
    updates = {k: v for k, v in flags.items() if v is not None}
    main = int(os.environ.get("RANK", "0")) == 0
    overrides, resolved = [], None
    with user_errors():
        if resume is not None:
            if recipe is not None:
                raise fail("--resume continues a run with its own recipe; drop the RECIPE argument (use --set)")
            if overwrite:
                raise fail("--overwrite starts a run afresh; it does not go with --resume")
            overrides = [*(set_ or []), *(f"{k}={_toml(v)}" for k, v in updates.items())]
            run_dir = resume
        else:
            resolved = load_training_recipe(recipe, set_ or [], updates)
            from lotsim.train.run_folder import check_run_folder, default_run_dir

            run_dir = out if out is not None else default_run_dir(resolved)
            check_run_folder(run_dir, overwrite)

    from lotsim.train.loop import train as run_training
    from lotsim.train.result import TrainingDiverged, TrainingInterrupted

    with user_errors(), _Progress(enabled=main) as progress:
        try:
            result = run_training(resolved, run_dir, resume=resume is not None, callback=progress,
                                  overrides=overrides, allow_code=allow_code, overwrite=overwrite)
        except TrainingInterrupted as err:
            stderr.print(f"[yellow]interrupted[/yellow] at step {err.step}; last checkpoint saved. Continue with:\n"
                         f"  lotsim train --resume {err.run_dir}", highlight=False)
            raise typer.Exit(INTERRUPTED) from None
        except TrainingDiverged as err:
            raise fail(str(err), RUNTIME_ERROR) from None
        except FileNotFoundError as err:  # nothing to resume: a user error, with the way forward
            raise fail(str(err)) from None
        except (RuntimeError, OSError) as err:
            raise fail(f"training failed: {err}", RUNTIME_ERROR) from None
    if not main:
        return
    if result.already_finished:
        stderr.print(f"run {escape(str(result.run_dir))} already finished at step {result.step}: nothing to do, "
                     f"nothing changed (its results: {escape(str(result.run_dir / 'metrics.json'))}). To train "
                     f"longer: lotsim train --resume {escape(str(result.run_dir))} --steps N", highlight=False)
        if json_:
            print_json(_summary(result))
        return
    summary = _summary(result)
    if json_:
        print_json(summary)
        return
    _print_result(summary, result.recipe_name)


def _summary(result) -> dict:
    return {
        "run_dir": str(result.run_dir), "steps": result.step, "finished": result.finished,
        "already_finished": result.already_finished, "parameters": result.parameters,
        "tokens_per_s": result.tokens_per_s, "wall_time_s": result.wall_time_s, "best": result.best,
        "validation": result.validation, "test": result.test,
    }


def _toml(value) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else str(value)


class _Progress:
    """Rich progress (loss, tokens/s) on stderr; evaluation lines are printed even when not a terminal."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = progress_bar("train", "loss {task.fields[loss]}", "{task.fields[tps]} tok/s", enabled=enabled)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        kind = event["event"]
        if kind == "start":
            p = event["parameters"]
            stderr.print(f"training: {p['total']:,} parameters "  # the run folder is printed once, at the end
                         f"({p['non_embedding']:,} non-embedding), {event['tokens_per_step']:,} tokens/step, "
                         f"{event['device']} x{event['world_size']}", highlight=False)
            self.task = self.bar.add_task("train", total=event["steps"], completed=event["start_step"],
                                          loss="-", tps="-")
        elif kind == "step" and self.task is not None:
            self.bar.update(self.task, completed=event["step"], loss=f"{event['loss']:.4f}",
                            tps=f"{event['tokens_per_s']:,.0f}")
        elif kind == "warning":
            self.bar.console.print(f"[yellow]warning:[/yellow] {escape(event['message'])}", highlight=False)
        elif kind == "eval":
            m = event["metrics"]
            shown = "  ".join(f"{k} {m[k]:.4f}" for k in ("loss", "bpc", "token_accuracy", "exact_match", "sync_order")
                              if isinstance(m.get(k), float))
            self.bar.console.print(f"step {event['step']:>6}  validation  {shown}", highlight=False)


def _print_result(summary: dict, recipe_name: str) -> None:
    test = summary["test"]
    if test is None:
        stderr.print(f"stopped at step {summary['steps']} (train.stop_at); continue with: "
                     f"lotsim train --resume {summary['run_dir']}", highlight=False)
        return
    table = metrics_table(f"{recipe_name}: held-out test split, best checkpoint (step {test['step']}) of "
                          f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s", test)
    table.add_row("tokens/s (train)", f"{summary['tokens_per_s']:,.0f}")
    stdout.print(table)
    stderr.print(f"run folder: [bold]{summary['run_dir']}[/bold]", highlight=False)
