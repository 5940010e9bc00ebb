"""Sweeps beyond one machine: a recipe's couplings x seeds grid split into shards, run as a
submitit job array (SLURM, or local subprocesses), one H5MD file per shard.

Each shard is the same recipe with ``shard = "i/n"``; deterministic shards hold exactly the
frames the unsharded run would have for their replicas (noise streams differ: the noise of a
batch is drawn per batch). ``lotsim analyze transition`` reads several shard files and combines
them along the coupling axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lotsim.config import SimulationRecipe


@dataclass(frozen=True)
class ShardJob:
    """One shard of a sweep: the recipe to run and the file it writes."""

    recipe: SimulationRecipe
    path: Path


def plan_shards(recipe: SimulationRecipe, shards: int, directory: str | Path) -> list[ShardJob]:
    """Split ``recipe`` into ``shards`` jobs writing ``directory/shard-<i>-of-<n>.h5``."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    directory = Path(directory)
    return [ShardJob(recipe.model_copy(update={"shard": f"{i}/{shards}"}),
                     directory / f"shard-{i:03d}-of-{shards:03d}.h5") for i in range(shards)]


def run_shard(job: ShardJob) -> dict:
    """Run one shard (the function a cluster job executes); returns its JSON summary."""
    from lotsim.simulation import run_simulation

    resume = job.path.is_file()  # a requeued job continues its own file
    return run_simulation(job.recipe, job.path, resume=resume).summary()


def submit_sweep(jobs: list[ShardJob], folder: str | Path, *, cluster: str | None = None,
                 timeout_min: int = 60, partition: str | None = None, array_parallelism: int = 64,
                 cpus_per_task: int = 2, gpus_per_node: int = 0) -> list:
    """Submit the shards as one submitit job array and return the submitit jobs.

    Args:
        cluster: None lets submitit pick (SLURM when ``srun`` exists, else local processes);
            "local" forces local subprocesses, "slurm" forces SLURM, "debug" runs in-process.
        folder: where submitit keeps logs and pickles (must be on a shared file system on SLURM).
    """
    try:
        import submitit
    except ModuleNotFoundError:
        raise ValueError("sweeps on a cluster need submitit: pip install 'lotsim[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_task}
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=array_parallelism, gpus_per_node=gpus_per_node)
        if partition:
            params["slurm_partition"] = partition
    executor.update_parameters(**params)
    for job in jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
    return executor.map_array(run_shard, jobs)
