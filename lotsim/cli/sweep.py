"""``lotsim sweep``: a simulation sweep split into shards, run as a submitit job array."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lotsim.cli._common import RUNTIME_ERROR, fail, print_json, stderr, user_errors


def sweep(
    recipe: Annotated[Path, typer.Argument(help="TOML simulation recipe.")],
    shards: Annotated[int, typer.Option(help="Number of shards (jobs) of the couplings x seeds grid.")] = 2,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the shard files.")] = None,
    cluster: Annotated[str | None, typer.Option(help="slurm, local or debug (default: slurm if available).")] = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    timeout_min: Annotated[int, typer.Option(help="Time limit per job in minutes.")] = 60,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs and report.")] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Run a coupling sweep as SHARDS jobs (SLURM job array via submitit, or local processes).

    Each job writes shard-<i>-of-<n>.h5; `lotsim analyze transition` combines the files.
    """
    from lotsim.cluster import plan_shards, submit_sweep
    from lotsim.config import SimulationRecipe, load_recipe

    with user_errors():
        resolved = load_recipe(SimulationRecipe, recipe, set_ or [])
        folder = out if out is not None else Path(resolved.output.dir) / resolved.name / time.strftime("%Y%m%d-%H%M%S")
        jobs = plan_shards(resolved, shards, folder)
        submitted = submit_sweep(jobs, folder / "submitit", cluster=cluster, timeout_min=timeout_min,
                                 partition=partition)
    ids = [job.job_id for job in submitted]
    stderr.print(f"submitted {len(ids)} jobs ({submitted[0].__class__.__name__}): {', '.join(ids)}")
    report = {"folder": str(folder), "jobs": ids, "files": [str(j.path) for j in jobs]}
    if wait:
        try:
            with stderr.status("waiting for the shards"):
                report["summaries"] = [job.result() for job in submitted]
        except Exception as err:  # submitit re-raises the job's failure with its log
            raise fail(f"a shard failed: {str(err).splitlines()[0] if str(err) else err}", RUNTIME_ERROR) from None
    if json_:
        print_json(report)
    else:
        for path in report["files"]:
            stderr.print(escape(path), highlight=False)
