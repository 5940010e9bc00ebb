"""Standalone lattice dynamics: recipe -> batched integration -> H5MD trajectory + summary.

``run_simulation`` is the library entry of ``lotsim simulate``. A sweep over couplings and seeds is
ONE batched integration (state (replicas, nodes)), streamed to disk in whole chunks. The file holds a
full-precision resume checkpoint (see ``CHECKPOINT_OSC_STEPS`` for when), so a killed run is readable up
to its last checkpoint and ``resume=True`` continues it to a result bit-identical to an uninterrupted run.

Each stored frame (phases and their order parameter) goes to the writer as soon as it is computed; the
writer buffers at most one chunk and writes whole chunks, so memory stays flat. Phases are checked for
NaN/inf after every integration block, so a blow-up still stores every good frame and names the first
bad step.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lotsim import __version__
from lotsim.config import SimulationRecipe, parse_couplings, parse_shard, recipe_to_toml
from lotsim.dynamics import KuramotoSystem, build_operator, make_integrator, order_parameter
from lotsim.dynamics.adaptive import AdaptiveControl
from lotsim.dynamics.initial import initial_phases, load_phases, natural_frequencies
from lotsim.interrupts import sigterm_as_interrupt
from lotsim.io import TrajectoryWriter, open_trajectory, read_state
from lotsim.lattice import Lattice
from lotsim.memory import check_memory

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
            **self.extra,
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
    dyn = recipe.dynamics
    check_memory(recipe)  # before anything is built: an impossible size fails at once, in one line
    lattice = recipe.lattice.build(recipe.seed)
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
        if _is_run(init.file):
            theta0 = _rows_of_run(read_state(init.file).theta, init.file, couplings.shape[0], lattice.n)
        else:
            theta0 = load_phases(init.file, lattice.n, couplings.shape[0])
    else:
        per_seed = np.stack([initial_phases(lattice, init.kind, seed=int(s), twist=init.twist) for s in seeds_per])
        theta0 = np.tile(per_seed, (values.shape[0], 1))
    omega = np.tile(omega_per_seed, (values.shape[0], 1))
    keep = _shard_rows(recipe, couplings.shape[0])
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


def initial_velocity(recipe: SimulationRecipe, n: int) -> np.ndarray | None:
    """Velocities (b, n) that ``--init RUN.h5`` carries into inertial dynamics; None: start at rest.

    The rows are chosen as for the phases (see :func:`build_system`): the run's own rows when it has as
    many replicas, else its last row for every replica; then the recipe's shard.
    """
    init = recipe.initial
    if recipe.dynamics.inertia == 0 or init.kind != "file" or not _is_run(init.file):
        return None
    velocity = read_state(init.file).velocity
    if velocity is None:  # a run without inertia ends at rest
        return None
    rows = len(parse_couplings(recipe.dynamics.coupling)) * recipe.replicas
    return _rows_of_run(velocity, init.file, rows, n)[_shard_rows(recipe, rows)]


def _is_run(file: str | None) -> bool:
    return file is not None and Path(file).suffix in (".h5", ".hdf5")


def _rows_of_run(state: np.ndarray, file: str, rows: int, n: int) -> np.ndarray:
    """A stored run's state (r, n) as (rows, n): its own rows if r == rows, else its last row for each."""
    if state.shape[-1] != n:
        raise ValueError(f"run {file!r} has {state.shape[-1]} nodes, the lattice has {n}")
    state = state[-1] if state.shape[0] != rows else state
    return np.broadcast_to(state, (rows, n)).copy()


def _shard_rows(recipe: SimulationRecipe, rows: int) -> slice | np.ndarray:
    """The replica rows of the recipe's shard (all rows without one)."""
    if recipe.shard is None:
        return slice(None)
    index, count = parse_shard(recipe.shard)
    if count > rows:
        raise ValueError(f"shard {recipe.shard!r}: {count} shards for only {rows} replicas")
    return np.array_split(np.arange(rows), count)[index]


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
            node_data={"natural_frequency": system.omega.cpu().numpy(), "id": np.arange(lattice.n),
                       # graphs without geometry (complete, random graphs) store no coordinates
                       **({"lattice_position": lattice.positions} if lattice.positions.shape[1] else {})},
            replica_data={"coupling": couplings, "seed": seeds},
            # the complete graph's n(n-1) edges stay implicit (the recipe names the topology)
            edges=None if lattice.edges is None else np.stack([lattice.senders, lattice.receivers], axis=1),
            weights=None if lattice.edges is None else lattice.weights,
            observables={"order_parameter": ((), np.float64), "mean_phase": ((), np.float64)},
        )
        velocity0 = initial_velocity(recipe, lattice.n)
        state = integrator.init_fn(torch.as_tensor(theta0, dtype=dtype, device=dyn.device),
                                   None if velocity0 is None else
                                   torch.as_tensor(velocity0, dtype=dtype, device=dyn.device))
        _record(writer, state, dyn.dt)  # the initial frame, then a checkpoint
        _checkpoint(writer, state, dyn.dt)

    start = time.perf_counter()
    work_per_step = couplings.shape[0] * lattice.n
    checkpointed = state.step
    last_good = state  # the newest state whose frame (if it is a save point) went to the writer
    with writer, sigterm_as_interrupt():
        try:
            while state.step < total:
                n = min(out.save_every - state.step % out.save_every, total - state.step)
                new = integrator.step_fn(state, n)
                if not _finite(new.theta):
                    _checkpoint(writer, last_good, dyn.dt)
                    raise SimulationBlowUp(
                        f"the phases became NaN/inf by step {new.step} (t={new.step * dyn.dt:g}); "
                        f"dt={dyn.dt:g} is likely too large for this system, try --dt {dyn.dt / 10:g}. "
                        f"{str(path)!r} holds every frame up to step {last_good.step}.")
                state = new
                if state.step % out.save_every == 0 or state.step == total:
                    # checkpoint when a whole chunk just went to disk and enough work was done since the last
                    if _record(writer, state, dyn.dt) == 0 and (
                            (state.step - checkpointed) * work_per_step >= CHECKPOINT_OSC_STEPS):
                        _checkpoint(writer, state, dyn.dt)
                        checkpointed = state.step
                last_good = state
                if progress is not None:
                    progress(state.step, total)
        except KeyboardInterrupt:
            _checkpoint(writer, last_good, dyn.dt)
            raise SimulationInterrupted(f"interrupted at step {last_good.step}; {str(path)!r} is readable, "
                                        "continue it with --resume") from None
        _checkpoint(writer, state, dyn.dt)
    wall = time.perf_counter() - start
    result = _result(path, recipe, lattice, couplings, seeds, total, wall, backend)
    warning = precision_warning(float(state.theta.detach().abs().max()), dyn.dt, dyn.dtype)
    if warning is not None:
        result.extra["warnings"] = [warning]
    return result


PRECISION_TOLERANCE = 1e-3
"""Largest rounding step of an unwrapped phase, as a fraction of dt, before a run is flagged.

A step adds about ``rate * dt`` to a phase; once the spacing of representable numbers at |theta|
exceeds 1e-3 dt, each step's update of a unit-rate oscillator is rounded by more than 0.1 %, the size
of a good integrator's own error, and far beyond that the phases lose all angular meaning (float64:
|theta| > 2**52 * 1e-3 dt, about 2e11 rad at dt = 0.05; float32: about 420 rad).
"""


def precision_warning(theta_max: float, dt: float, dtype: str) -> str | None:
    """One line when unwrapped phases as large as ``theta_max`` have lost angular precision, else None."""
    spacing = float(np.spacing(np.asarray(theta_max, dtype=dtype)))
    if math.isfinite(spacing) and spacing <= PRECISION_TOLERANCE * dt:
        return None
    return (f"the unwrapped phases reached |theta| = {theta_max:.3g} rad, where {dtype} is only resolved to "
            f"{spacing:.2g} rad (more than {PRECISION_TOLERANCE:g} x dt): phase differences and frequencies "
            "have lost precision; shorten the run or lower the coupling/frequencies")


def _finite(theta: torch.Tensor) -> bool:
    if theta.device.type == "cpu":
        return bool(np.isfinite(theta.detach().numpy()).all())
    return bool(torch.isfinite(theta).all())


def _record(writer: TrajectoryWriter, state, dt: float) -> int:
    """Hand one frame (phases, order parameter, mean phase) to the writer; returns its buffered frames.

    The observables come from lotsim's torch ``order_parameter`` on the state's own tensor; the writer
    casts the phases to the storage dtype (the same rounding as ``ndarray.astype``).
    """
    theta = state.theta.detach()
    r, psi = order_parameter(theta)
    return writer.append(GROUP, np.array([state.step]), np.array([state.step * dt]), theta.cpu().numpy()[None],
                         observables={"order_parameter": r.cpu().numpy()[None],
                                      "mean_phase": psi.cpu().numpy()[None]})


def _checkpoint(writer: TrajectoryWriter, state, dt: float) -> None:
    """Write the buffered frames and the full-precision resume checkpoint of ``state``."""
    velocity = None if state.velocity is None else state.velocity.detach().cpu().numpy()
    extra = None if state.control is None else state.control.to_arrays()  # adaptive step counts and error
    writer.write_state(state.theta.detach().cpu().numpy(), velocity=velocity, step=state.step,
                       time=state.step * dt, extra=extra)


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


