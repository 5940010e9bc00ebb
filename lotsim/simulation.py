"""Standalone lattice dynamics: recipe -> batched integration -> H5MD trajectory + summary.

``run_simulation`` is the library entry of ``lotsim simulate``. A sweep over couplings and seeds is
ONE batched integration (state (replicas, nodes)), streamed to disk in whole chunks. The file holds a
full-precision resume checkpoint (see ``CHECKPOINT_OSC_STEPS`` for when), so a killed run is readable up
to its last checkpoint and ``resume=True`` continues it to a result bit-identical to an uninterrupted run.

Frames are collected in a block of at most one chunk (the writer's chunk, so every block write is one
whole aligned chunk and memory stays flat) and handed to the writer once per block; each frame's
phases are checked for NaN/inf as soon as they are computed, so a blow-up still stores every good
frame and names the first bad step.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lotsim import __version__
from lotsim.config import SimulationRecipe, parse_couplings, parse_shard, recipe_to_toml
from lotsim.dynamics import KuramotoSystem, build_operator, make_integrator, order_parameter
from lotsim.dynamics.adaptive import AdaptiveControl
from lotsim.dynamics.initial import initial_phases, load_phases, natural_frequencies
from lotsim.io import TrajectoryWriter, open_trajectory, read_state
from lotsim.lattice import Lattice, build_lattice

GROUP = "oscillators"

CHECKPOINT_OSC_STEPS = 50_000_000
"""Work (replicas x nodes x steps) integrated between two resume checkpoints, at least.

A checkpoint (``TrajectoryWriter.write_state``: write the pending frames, overwrite ``/lotsim/state``,
flush the HDF5 file) is taken when a whole chunk of frames has just been written and at least this
much work was integrated since the previous one; also after the first frame, at the end, on Ctrl-C or
SIGTERM and on a blow-up. 5e7 oscillator-steps is about 0.5 s of the numba backend and 5-10 s of the
torch backend on one CPU core (RK4). A run killed without warning (SIGKILL, power loss) loses the
frames after its last checkpoint: the file stays readable up to there and ``--resume`` continues it
bit-identically. The cadence is counted in work, not in wall time, because the bytes of the HDF5 file
depend on when it is flushed: same recipe and seed, same file, however busy the machine.
"""


class SimulationBlowUp(RuntimeError):
    """The state became NaN/inf; the file is readable up to the last good frame."""


class SimulationInterrupted(RuntimeError):
    """Ctrl-C: the file was flushed with a resume checkpoint."""


@dataclass
class SimulationResult:
    """What a run produced; ``summary()`` is the ``--json`` object of ``lotsim simulate``."""

    path: Path
    recipe: SimulationRecipe
    lattice: Lattice
    couplings: np.ndarray  # (replicas,)
    seeds: np.ndarray  # (replicas,)
    steps: int
    frames: int
    r_final: np.ndarray  # (replicas,)
    r_mean: np.ndarray  # (replicas,) time average over the second half of the stored frames
    r_std: np.ndarray
    wall_time: float
    backend: str
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "output": str(self.path),
            "lattice": self.lattice.name,
            "n": self.lattice.n,
            "replicas": int(self.couplings.shape[0]),
            "steps": self.steps,
            "dt": self.recipe.dynamics.dt,
            "t_final": self.steps * self.recipe.dynamics.dt,
            "frames": self.frames,
            "backend": self.backend,
            "coupling": self.couplings.tolist(),
            "seed": self.seeds.tolist(),
            "r_final": self.r_final.tolist(),
            "r_mean": self.r_mean.tolist(),
            "r_std": self.r_std.tolist(),
            "r_mean_window": "second half of the stored frames",
            "wall_time_s": round(self.wall_time, 4),
        }


def git_commit() -> str:
    """The git commit of the lotsim source tree, or ``"unknown"`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def build_system(recipe: SimulationRecipe) -> tuple[Lattice, KuramotoSystem, np.ndarray, np.ndarray, np.ndarray]:
    """Everything that defines the batched run, deterministic in the recipe.

    Returns:
        (lattice, system, theta0 (b, n), couplings (b,), seeds (b,)).
    """
    lat_cfg, dyn = recipe.lattice, recipe.dynamics
    lattice = build_lattice(
        lat_cfg.topology, n=lat_cfg.n, shape=lat_cfg.shape, periodic=lat_cfg.periodic, weights=lat_cfg.weights,
        lattice_constant=lat_cfg.lattice_constant, exponent=lat_cfg.exponent, k=lat_cfg.k, p=lat_cfg.p,
        degree=lat_cfg.degree, path=lat_cfg.file, directed=lat_cfg.directed,
        seed=recipe.seed if lat_cfg.seed is None else lat_cfg.seed, coupling_range=lat_cfg.coupling_range,
    )
    values = np.asarray(parse_couplings(dyn.coupling), dtype=np.float64)
    seeds_per = recipe.seed + np.arange(recipe.replicas)
    couplings = np.repeat(values, recipe.replicas)
    seeds = np.tile(seeds_per, values.shape[0])
    f = recipe.frequencies
    omega_per_seed = np.stack([
        natural_frequencies(lattice.n, f.dist, mean=f.mean, width=f.width, sampling=f.sampling, seed=int(s),
                            file=f.file) for s in seeds_per])
    init = recipe.initial
    if init.kind == "file":
        if init.file is None:
            raise ValueError("initial.kind = 'file' needs initial.file (.npy, .txt or a lotsim .h5 run)")
        if Path(init.file).suffix in (".h5", ".hdf5"):
            theta0 = read_state(init.file).theta
            if theta0.shape[-1] != lattice.n:
                raise ValueError(f"run {init.file!r} has {theta0.shape[-1]} nodes, the lattice has {lattice.n}")
            theta0 = theta0[-1] if theta0.shape[0] != couplings.shape[0] else theta0
            theta0 = np.broadcast_to(theta0, (couplings.shape[0], lattice.n)).copy()
        else:
            theta0 = load_phases(init.file, lattice.n, couplings.shape[0])
    else:
        per_seed = np.stack([initial_phases(lattice, init.kind, seed=int(s), twist=init.twist) for s in seeds_per])
        theta0 = np.tile(per_seed, (values.shape[0], 1))
    omega = np.tile(omega_per_seed, (values.shape[0], 1))
    if recipe.shard is not None:
        index, count = parse_shard(recipe.shard)
        if count > couplings.shape[0]:
            raise ValueError(f"shard {recipe.shard!r}: {count} shards for only {couplings.shape[0]} replicas")
        keep = np.array_split(np.arange(couplings.shape[0]), count)[index]
        theta0, omega, couplings, seeds = theta0[keep], omega[keep], couplings[keep], seeds[keep]

    dtype = getattr(torch, dyn.dtype)
    device = torch.device(dyn.device)
    frustration = dyn.frustration if isinstance(dyn.frustration, list) else [dyn.frustration]
    system = KuramotoSystem(
        omega=torch.as_tensor(omega, dtype=dtype, device=device),
        coupling=torch.as_tensor(couplings, dtype=dtype, device=device).reshape(-1, 1),
        operator=build_operator(lattice, dyn.normalization, device=device, dtype=dtype),
        harmonics=tuple(float(h) for h in dyn.harmonics), frustration=tuple(float(a) for a in frustration),
        noise=dyn.noise, inertia=dyn.inertia,
    )
    return lattice, system, theta0, couplings, seeds


def run_simulation(recipe: SimulationRecipe, path: str | Path, *, resume: bool = False, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Integrate ``recipe`` and stream the trajectory to ``path`` (H5MD).

    Args:
        recipe: the validated recipe.
        path: output .h5 file.
        resume: continue an interrupted run in ``path`` (its stored recipe must equal ``recipe``).
        overwrite: replace an existing file.
        progress: called as ``progress(step, total_steps)`` after every stored frame.

    Raises:
        SimulationBlowUp: NaN/inf appeared; the file holds every frame before it.
        SimulationInterrupted: KeyboardInterrupt or SIGTERM; the file is flushed and resumable.
    """
    path = Path(path)
    dyn, out = recipe.dynamics, recipe.output
    if dyn.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {dyn.device!r} is not available (no CUDA GPU); use --device cpu")
    lattice, system, theta0, couplings, seeds = build_system(recipe)
    dtype = getattr(torch, dyn.dtype)
    # the whole job's work (every shard of a sweep together) decides whether a compiled backend pays
    work = len(parse_couplings(dyn.coupling)) * recipe.replicas * lattice.n * dyn.n_steps
    integrator = make_integrator(system, backend=dyn.backend, method=dyn.integrator, dt=dyn.dt, seed=recipe.seed,
                                 rtol=dyn.rtol, atol=dyn.atol, work_hint=work)
    backend = integrator.backend
    total = dyn.n_steps
    store_dtype = np.dtype(dyn.dtype if out.precision == "same" else out.precision)
    recipe_toml = recipe_to_toml(recipe)

    if resume:
        stored = open_trajectory(path)
        with stored:
            stored_toml = stored.parameters.get("recipe_toml", "")
        if stored_toml != recipe_toml:
            raise ValueError(f"{str(path)!r} was written by a different recipe; resume needs the same recipe")
        checkpoint = read_state(path)
        writer = TrajectoryWriter(path, mode="a", compression=out.compression)
        writer.truncate_after(checkpoint.step)
        control = AdaptiveControl.from_arrays(checkpoint.extra)  # the step-size controller, if adaptive
        state = integrator.init_fn(torch.as_tensor(checkpoint.theta, dtype=dtype, device=dyn.device),
                                   None if checkpoint.velocity is None else
                                   torch.as_tensor(checkpoint.velocity, dtype=dtype, device=dyn.device),
                                   step=checkpoint.step, **({} if control is None else {"control": control}))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = TrajectoryWriter(
            path, mode="w", overwrite=overwrite, compression=out.compression,
            parameters=recipe.model_dump(mode="json"), recipe_toml=recipe_toml, seed=recipe.seed,
            lotsim_version=__version__, git_commit=git_commit(), unwrapped=True,
        )
        writer.add_particles(
            GROUP, n_replicas=couplings.shape[0], n_nodes=lattice.n, dtype=store_dtype,
            node_data={"natural_frequency": system.omega.cpu().numpy(), "position": lattice.positions,
                       "id": np.arange(lattice.n)},
            replica_data={"coupling": couplings, "seed": seeds},
            # the complete graph's n(n-1) edges stay implicit (the recipe names the topology)
            edges=None if lattice.edges is None else np.stack([lattice.senders, lattice.receivers], axis=1),
            weights=None if lattice.edges is None else lattice.weights,
            observables={"order_parameter": ((), np.float64), "mean_phase": ((), np.float64)},
        )
        state = integrator.init_fn(torch.as_tensor(theta0, dtype=dtype, device=dyn.device))
        first = _FrameBlock(writer, couplings.shape[0], lattice.n, store_dtype, dyn.dt)
        first.add(state)  # the initial frame, then a checkpoint
        first.write()
        first.checkpoint(state)

    start = time.perf_counter()
    work_per_step = couplings.shape[0] * lattice.n
    checkpointed = state.step
    last_good = state  # the newest state whose frame (if it is a save point) is in ``frames`` or on disk
    frames = _FrameBlock(writer, couplings.shape[0], lattice.n, store_dtype, dyn.dt)
    with writer, _sigterm_as_interrupt():
        try:
            while state.step < total:
                n = min(out.save_every - state.step % out.save_every, total - state.step)
                new = integrator.step_fn(state, n)
                if not _finite(new.theta):
                    frames.write()
                    frames.checkpoint(last_good)
                    raise SimulationBlowUp(
                        f"the phases became NaN/inf by step {new.step} (t={new.step * dyn.dt:g}); "
                        f"dt={dyn.dt:g} is likely too large for this system, try --dt {dyn.dt / 10:g}. "
                        f"{str(path)!r} holds every frame up to step {last_good.step}.")
                state = new
                if state.step % out.save_every == 0 or state.step == total:
                    frames.add(state)
                    if frames.full and frames.write() and (
                            (state.step - checkpointed) * work_per_step >= CHECKPOINT_OSC_STEPS):
                        frames.checkpoint(state)  # a whole chunk just went to the writer
                        checkpointed = state.step
                last_good = state
                if progress is not None:
                    progress(state.step, total)
        except KeyboardInterrupt:
            frames.write()
            frames.checkpoint(last_good)
            raise SimulationInterrupted(f"interrupted at step {last_good.step}; {str(path)!r} is readable, "
                                        "continue it with --resume") from None
        frames.write()
        frames.checkpoint(state)
    wall = time.perf_counter() - start
    return _result(path, recipe, lattice, couplings, seeds, total, wall, backend)


def _finite(theta: torch.Tensor) -> bool:
    if theta.device.type == "cpu":
        return bool(np.isfinite(theta.detach().numpy()).all())
    return bool(torch.isfinite(theta).all())


class _FrameBlock:
    """Frames waiting for the writer: at most up to the next chunk boundary of the phase dataset.

    ``add`` computes a frame's observables (lotsim's torch ``order_parameter`` on the state's own
    tensor, as every frame always had) and copies the phases; ``write`` hands the block to the writer in
    one ``append``, which then writes one whole, chunk-aligned chunk without copying it again.
    """

    def __init__(self, writer: TrajectoryWriter, b: int, n: int, store_dtype: np.dtype, dt: float):
        self.writer, self.dt = writer, dt
        self.cf = cf = writer.chunk_frames(GROUP)
        self.phase = np.empty((cf, b, n), dtype=store_dtype)
        self.step = np.empty(cf, dtype=np.int64)
        self.time = np.empty(cf, dtype=np.float64)
        self.r = np.empty((cf, b), dtype=np.float64)
        self.psi = np.empty((cf, b), dtype=np.float64)
        self.k = 0
        self.room = cf - writer.frames_written(GROUP) % cf  # frames until the next chunk boundary

    @property
    def full(self) -> bool:
        return self.k >= self.room

    def add(self, state) -> None:
        j = self.k
        theta = state.theta.detach()
        r, psi = order_parameter(theta)
        self.phase[j] = theta.cpu().numpy()  # the same rounding as ndarray.astype(store_dtype)
        self.r[j] = r.cpu().numpy()  # float32 -> float64 is exact, like Tensor.double()
        self.psi[j] = psi.cpu().numpy()
        self.step[j] = state.step
        self.time[j] = state.step * self.dt
        self.k = j + 1  # last: a frame interrupted half-way is not counted

    def write(self) -> bool:
        """Hand the block to the writer; True when that completed a chunk (nothing is left buffered)."""
        k = self.k
        if k:
            self.writer.append(GROUP, self.step[:k], self.time[:k], self.phase[:k],
                               observables={"order_parameter": self.r[:k], "mean_phase": self.psi[:k]})
            self.k = 0
            self.room = self.cf - self.writer.frames_written(GROUP) % self.cf
        return self.writer.buffered_frames(GROUP) == 0

    def checkpoint(self, state) -> None:
        self.writer.write_state(**_checkpoint(state, self.dt))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, ``kill``) stops the run like Ctrl-C: checkpoint, then raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler installed outside Python, which cannot be put back; use the default
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _checkpoint(state, dt: float) -> dict:
    velocity = None if state.velocity is None else state.velocity.detach().cpu().numpy()
    extra = None if state.control is None else state.control.to_arrays()  # adaptive step counts and error
    return {"theta": state.theta.detach().cpu().numpy(), "velocity": velocity, "step": state.step,
            "time": state.step * dt, "extra": extra}


def _result(path, recipe, lattice, couplings, seeds, total, wall, backend) -> SimulationResult:
    with open_trajectory(path) as traj:
        r = np.asarray(traj.observable("order_parameter", GROUP)[:])
    half = r[r.shape[0] // 2:]
    return SimulationResult(
        path=path, recipe=recipe, lattice=lattice, couplings=couplings, seeds=seeds, steps=total,
        frames=r.shape[0], r_final=r[-1], r_mean=half.mean(axis=0), r_std=half.std(axis=0), wall_time=wall,
        backend=backend,
    )


def default_output_path(recipe: SimulationRecipe) -> Path:
    """``<output.dir>/<name>/<timestamp>/traj.h5`` (a new folder per run)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(recipe.output.dir) / recipe.name / stamp
    suffix, i = "", 1
    while (base.parent / f"{base.name}{suffix}").exists():
        suffix, i = f"-{i}", i + 1
    return base.parent / f"{base.name}{suffix}" / "traj.h5"


