"""DistributedDataParallel on the CPU: two gloo processes train the same recipe (as torchrun would
launch them) and end with identical parameters; rank 0 alone writes the run folder."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from lotsim.train import load_checkpoint

TINY = ["task.length=4", "task.n_symbols=6", "model.d_model=16", "model.n_heads=4", "train.steps=4",
        "train.batch_size=4", "train.grad_accum=2", "train.eval_every=2", "train.eval_batches=1",
        "train.test_batches=1", "train.telemetry_every=2", "train.telemetry_sequences=1", "model.dropout=0.1",
        "output.tensorboard=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    # the environment torchrun sets for each process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from lotsim.train import load_training_recipe, train

    result = train(load_training_recipe(None, TINY), os.path.join(folder, "run"))
    torch.save({"state": result.model.state_dict(), "losses": result.train_losses, "step": result.step},
               os.path.join(folder, f"rank{rank}.pt"))


def test_two_gloo_processes_end_with_identical_parameters(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["step"] == r1["step"] == 4
    assert r0["losses"] == r1["losses"]  # the logged loss is averaged over both ranks
    for name, p0 in r0["state"].items():
        assert torch.equal(p0, r1["state"][name]), name
    # rank 0 wrote the run; its checkpoint holds both processes' RNG states and the same parameters
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank dropout streams
    for name, p0 in r0["state"].items():
        assert torch.equal(p0, state["model"][name]), name
    assert (tmp_path / "run" / "metrics.json").is_file()
