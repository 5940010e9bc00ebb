"""Simulation throughput: lotsim's integrators against the `kuramoto` PyPI package and numpy references.

Command (writes JSON and a markdown table next to it, ``.md``):

    python benchmarks/bench_simulate.py --out benchmarks/results/simulate.json            # full, ~15 min
    python benchmarks/bench_simulate.py --quick --out /tmp/simulate-quick.json            # smoke, ~1 min
    python benchmarks/bench_simulate.py --io-only --out /tmp/simulate-io.json             # `simulate` I/O, ~1 min

What is measured (docs/performance.md explains the results):
- oscillator-steps per second (N x steps / wall time; median of ``--repeats`` runs interleaved across
  implementations, after a warm-up run that also absorbs numba's JIT/cache load; the one-thread rows
  run in a subprocess started with one thread) of: lotsim's numba and torch backends (float64
  and float32, RK4 and Euler), a numpy reference with scipy's CSR mat-vec and the sin/cos identity, a
  plain numpy per-edge reference (gather + ``np.add.at``, small N only) and the ``kuramoto`` package
  0.4.0 (dense N x N, scipy ``odeint``; optional: ``pip install kuramoto==0.4.0``, N <= 64^2 only,
  shorter span) on periodic square lattices 32^2 ... 512^2, a ring and the complete graph (mean field);
- every implementation starts from the SAME state and integrates the SAME span within a case
  (``degree`` normalisation, which is the kuramoto package's; K = 2, dt = 0.01); the final phases and
  order parameter are compared between implementations and against a fine-step reference (numba RK4,
  dt / 10), so "fast" is never bought with accuracy;
- peak memory: the increase of the peak RSS over the RSS just before one run, in a fresh process with
  every array allocation mapped (see ``peak_memory``; Linux only), i.e. what the run itself allocates,
  whichever allocator (numpy, torch, numba buffers) made it;
- batched sweeps: B couplings in one run vs B runs of one coupling;
- the cost of writing a trajectory (H5MD through ``lotsim.io``, chunked appends, float32 frames)
  for several ``save_every``, and the same through ``lotsim simulate``'s own runner (``measure_run_io``).

Timings on shared machines drift: compare the ratios measured side by side in one run; the JSON keeps
every repeat and the load average around each case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lotsim.dynamics import KuramotoSystem, build_operator, make_integrator, normalized_adjacency  # noqa: E402
from lotsim.dynamics import order_parameter as lotsim_order_parameter  # noqa: E402
from lotsim.lattice import Lattice, build_lattice  # noqa: E402
from lotsim.observables import order_parameter as numpy_order_parameter  # noqa: E402

try:
    import numba
except ImportError:  # numba is a dependency of lotsim; keep the torch/numpy rows if it is missing
    numba = None

try:
    from kuramoto import Kuramoto
except ImportError:
    Kuramoto = None

DT = 0.01
WARMUP_STEPS = 20  # enough for the numba backend to try (and load) both thread layouts
COUPLING = 2.0
NORMALIZATION = "degree"  # the kuramoto package divides K by the in-degree


# --------------------------------------------------------------------------------------------------
# Cases and implementations


@dataclass
class Case:
    """One benchmark problem: the same state and span for every implementation.

    ``spec`` is the lattice as ``build_lattice`` keywords (JSON-able, so a subprocess can rebuild it).
    """

    name: str
    spec: dict
    steps: int
    couplings: tuple[float, ...] = (COUPLING,)
    seed: int = 0
    lattice: Lattice = field(init=False)
    omega: np.ndarray = field(init=False)
    theta0: np.ndarray = field(init=False)

    def __post_init__(self):
        self.lattice = build_lattice(**self.spec)
        rng = np.random.default_rng(self.seed)
        self.omega = rng.standard_normal(self.lattice.n)
        theta = rng.uniform(0.0, 2 * math.pi, self.lattice.n)
        self.theta0 = np.repeat(theta[None], len(self.couplings), axis=0)  # (b, n): one state, b couplings

    @property
    def n(self) -> int:
        return self.lattice.n

    @property
    def b(self) -> int:
        return len(self.couplings)

    def to_json(self) -> dict:
        return {"name": self.name, "spec": self.spec, "steps": self.steps, "couplings": list(self.couplings),
                "seed": self.seed}


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if numba is not None:
        numba.set_num_threads(threads)


def lotsim_impl(backend: str, dtype: torch.dtype, method: str):
    """lotsim's integrator on ``backend``; returns make(case) -> run(steps, dt) -> theta (b, n)."""

    def make(case: Case):
        op = build_operator(case.lattice, NORMALIZATION, dtype=dtype)
        system = KuramotoSystem(torch.as_tensor(case.omega, dtype=dtype),
                                torch.as_tensor(case.couplings, dtype=dtype).reshape(-1, 1), op)
        integrators = {}

        def run(steps: int, dt: float = DT) -> np.ndarray:
            if dt not in integrators:
                integrators[dt] = make_integrator(system, backend=backend, method=method, dt=dt)
            integ = integrators[dt]
            state = integ.step_fn(integ.init_fn(torch.as_tensor(case.theta0, dtype=dtype)), steps)
            return state.theta.double().numpy()

        return run

    return make


def numpy_csr_impl(case: Case):
    """Straightforward numpy RK4: scipy CSR mat-vec of (sin, cos), the identity sin(b - a) = s_b c_a - c_b s_a."""
    omega, coupling = case.omega, np.asarray(case.couplings)[:, None]
    if case.lattice.complete and case.lattice.edges is None:
        scale = 1.0 / (case.n - 1)

        def coupling_sum(s, c):
            return scale * ((s.sum(-1, keepdims=True) - s) * c - (c.sum(-1, keepdims=True) - c) * s)
    else:
        w = normalized_adjacency(case.lattice, NORMALIZATION).adjacency().tocsr()

        def coupling_sum(s, c):
            return (w @ s.T).T * c - (w @ c.T).T * s

    def f(theta):
        return omega + coupling * coupling_sum(np.sin(theta), np.cos(theta))

    return _rk4_runner(case, f)


def _rk4_runner(case: Case, f):
    """run(steps, dt) -> theta: classical RK4 of dtheta/dt = f(theta) from the case's initial state."""

    def run(steps: int, dt: float = DT) -> np.ndarray:
        theta = case.theta0.copy()
        for _ in range(steps):
            k1 = f(theta)
            k2 = f(theta + 0.5 * dt * k1)
            k3 = f(theta + 0.5 * dt * k2)
            k4 = f(theta + dt * k3)
            theta = theta + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return theta

    return run


def numpy_edges_impl(case: Case):
    """The plainest numpy RK4: one sin per edge, scattered with np.add.at."""
    w = normalized_adjacency(case.lattice, NORMALIZATION)
    send, recv, weight = w.senders, w.receivers, w.weights
    omega, coupling = case.omega, np.asarray(case.couplings)[:, None]

    def f(theta):
        out = np.zeros_like(theta)
        for r in range(theta.shape[0]):
            np.add.at(out[r], recv, weight * np.sin(theta[r, send] - theta[r, recv]))
        return omega + coupling * out

    return _rk4_runner(case, f)


def kuramoto_package_impl(case: Case):
    """The `kuramoto` package 0.4.0: dense adjacency, odeint (rtol = atol = 1.49e-8), K / in-degree."""
    adjacency = case.lattice.adjacency().toarray() if case.lattice.edges is not None else \
        np.ones((case.n, case.n)) - np.eye(case.n)

    def run(steps: int, dt: float = DT) -> np.ndarray:
        out = []
        for coupling in case.couplings:
            # its time grid is linspace(0, T, int(T / dt)): the last column is the state at t = T exactly
            model = Kuramoto(coupling=coupling, dt=dt, T=steps * dt, natfreqs=case.omega.copy())
            out.append(model.run(adj_mat=adjacency, angles_vec=case.theta0[0].copy())[:, -1])
        return np.stack(out)

    return run


IMPLEMENTATIONS = {
    "numba f64 rk4": lotsim_impl("numba", torch.float64, "rk4"),
    "numba f64 rk4 1 thread": lotsim_impl("numba", torch.float64, "rk4"),
    "numba f32 rk4": lotsim_impl("numba", torch.float32, "rk4"),
    "numba f64 euler": lotsim_impl("numba", torch.float64, "euler"),
    "torch f64 rk4": lotsim_impl("torch", torch.float64, "rk4"),
    "torch f64 rk4 1 thread": lotsim_impl("torch", torch.float64, "rk4"),
    "torch f32 rk4": lotsim_impl("torch", torch.float32, "rk4"),
    "torch f64 euler": lotsim_impl("torch", torch.float64, "euler"),
    "numpy csr f64 rk4": numpy_csr_impl,
    "numpy add.at f64 rk4": numpy_edges_impl,
    "kuramoto 0.4.0 odeint": kuramoto_package_impl,
}
# Rows run with one thread go to a subprocess started that way: changing a live OpenMP pool's thread
# count (numba's or torch's) and back slows the following parallel regions of the process down.
ONE_THREAD = {"numba f64 rk4 1 thread", "torch f64 rk4 1 thread"}
REFERENCE = "numba f64 rk4"
PACKAGE = "kuramoto 0.4.0 odeint"


# --------------------------------------------------------------------------------------------------
# Measurement


def _proc_status(key: str) -> int:
    """A /proc/self/status field in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_memory(case: Case, name: str, steps: int) -> float | None:
    """Peak RSS increase (MB) of one run of ``name`` on ``case``, measured in a fresh process.

    The child fixes glibc's mmap threshold at 64 KiB, so every array allocation is mapped and unmapped
    (not recycled from the heap), builds the case, runs 2 steps (numba's kernel loads from its cache,
    ~80 MB of code and LLVM state, once per process), resets the peak RSS through /proc/self/clear_refs
    and reports VmHWM - VmRSS over the run: the memory the run itself needs (buffers, temporaries),
    whichever allocator made it. Timings are never taken in this mode (mapping every temporary slows
    the numpy and torch references down).
    """
    import subprocess

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    payload = json.dumps({"case": case.to_json(), "implementation": name, "steps": steps})
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", payload], env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"    memory worker failed for {name}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    value = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_increase_mb"]
    return value


def _memory_worker(payload: str) -> None:
    job = json.loads(payload)
    spec = job["case"]
    case = Case(spec["name"], spec["spec"], spec["steps"], tuple(spec["couplings"]), spec["seed"])
    run = IMPLEMENTATIONS[job["implementation"]](case)
    run(WARMUP_STEPS)  # loads numba's cached kernels / torch's first-call state: once per process, not the run's
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        print(json.dumps({"peak_rss_increase_mb": None}))
        return
    before = _proc_status("VmRSS")
    run(job["steps"])
    print(json.dumps({"peak_rss_increase_mb": (_proc_status("VmHWM") - before) / 2**20}))


def timed_in_subprocess(case: Case, name: str, repeats: int, max_seconds: float) -> tuple[list[float], np.ndarray]:
    """Warm-up and ``repeats`` timed runs of ``name`` in a fresh process with one numba and torch thread."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "theta.npy"
        payload = json.dumps({"case": case.to_json(), "implementation": name, "repeats": repeats,
                              "max_seconds": max_seconds, "out": str(out)})
        env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, __file__, "--threads", "1", "--time-worker", payload], env=env,
                              capture_output=True, text=True, timeout=3600, check=True)
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        return seconds, np.load(out)


def _time_worker(payload: str) -> None:
    job = json.loads(payload)
    spec = job["case"]
    case = Case(spec["name"], spec["spec"], spec["steps"], tuple(spec["couplings"]), spec["seed"])
    run = IMPLEMENTATIONS[job["implementation"]](case)
    run(WARMUP_STEPS)
    seconds = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        theta = run(case.steps)
        seconds.append(time.perf_counter() - start)
        if seconds[0] > job["max_seconds"]:
            break
    np.save(job["out"], theta)
    print(json.dumps({"seconds": seconds}))


def measure_case(case: Case, names: list[str], repeats: int, *, memory: tuple[str, ...] = (),
                 max_seconds: float = 20.0, log=print) -> list[dict]:
    """Time every implementation on ``case`` (repeats interleaved across implementations), compare the
    final states with each other and with a fine-step reference, and measure the peak memory of those
    named in ``memory`` (in subprocesses)."""
    load_before = os.getloadavg()
    runners = {name: IMPLEMENTATIONS[name](case) for name in names if name not in ONE_THREAD}
    for run in runners.values():  # warm-up: JIT/cache load (both thread layouts), first-call allocations
        run(WARMUP_STEPS)
    walls = {name: [] for name in names}
    finals = {}
    for rep in range(repeats):
        for name, run in runners.items():
            if rep > 0 and walls[name][0] > max_seconds:
                continue  # one run of a slow implementation is enough
            start = time.perf_counter()
            finals[name] = run(case.steps)
            walls[name].append(time.perf_counter() - start)
    for name in names:
        if name in ONE_THREAD:
            walls[name], finals[name] = timed_in_subprocess(case, name, repeats, max_seconds)
    load_after = os.getloadavg()
    fine = runners[REFERENCE](case.steps * 10, DT / 10) if REFERENCE in runners else None
    ref = finals.get(REFERENCE)
    rows = []
    for name in names:
        wall = statistics.median(walls[name])
        theta = finals[name]
        row = {
            "case": case.name, "implementation": name, "n": case.n, "b": case.b, "steps": case.steps, "dt": DT,
            "t": case.steps * DT, "seconds": walls[name], "median_seconds": wall,
            "osc_steps_per_s": case.n * case.b * case.steps / wall,
            "r_final": numpy_order_parameter(theta)[0].tolist(),
            "max_abs_dtheta_vs_numba": None if ref is None else float(np.abs(theta - ref).max()),
            "max_abs_dtheta_vs_fine_rk4": None if fine is None else float(np.abs(theta - fine).max()),
            "peak_rss_increase_mb": peak_memory(case, name, min(case.steps, 20)) if name in memory else None,
            "loadavg_before": load_before, "loadavg_after": load_after,
        }
        rows.append(row)
        mem = row["peak_rss_increase_mb"]
        log(f"  {case.name:>20}  {name:<24} {row['osc_steps_per_s']:10.3e} osc-steps/s  "
            f"(median {wall:.3g} s of {len(walls[name])})  r={row['r_final'][0]:.6f}  dtheta_fine="
            f"{row['max_abs_dtheta_vs_fine_rk4'] if fine is not None else float('nan'):.1e}"
            + ("" if mem is None else f"  peak RSS +{mem:.1f} MB"))
    return rows


def measure_batched(spec: dict, b: int, steps: int, repeats: int, log=print) -> list[dict]:
    """B couplings in one batched run vs B runs of one coupling each (numba and torch, f64 RK4)."""
    couplings = tuple(np.linspace(0.5, 3.0, b).tolist())
    batched = Case(f"B={b}", spec, steps, couplings)
    singles = [Case(f"K={k:g}", spec, steps, (k,)) for k in couplings]
    out = []
    for name in ("numba f64 rk4", "torch f64 rk4"):
        run_batched = IMPLEMENTATIONS[name](batched)
        run_singles = [IMPLEMENTATIONS[name](case) for case in singles]
        run_batched(WARMUP_STEPS)
        for run in run_singles:
            run(WARMUP_STEPS)
        t_batched, t_loop = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            theta_b = run_batched(steps)
            t_batched.append(time.perf_counter() - start)
            start = time.perf_counter()
            theta_l = np.concatenate([run(steps) for run in run_singles])
            t_loop.append(time.perf_counter() - start)
        row = {"implementation": name, "lattice": batched.lattice.name, "n": batched.n, "b": b, "steps": steps,
               "batched_seconds": t_batched, "looped_seconds": t_loop,
               "speedup": statistics.median(t_loop) / statistics.median(t_batched),
               "max_abs_dtheta_batched_vs_looped": float(np.abs(theta_b - theta_l).max())}
        log(f"  batched {name:<22} B={b} N={batched.n}: one run {statistics.median(t_batched):.3g} s, "
            f"{b} runs {statistics.median(t_loop):.3g} s -> {row['speedup']:.2f}x, "
            f"|batched - looped| = {row['max_abs_dtheta_batched_vs_looped']:.1e}")
        out.append(row)
    return out


def measure_memory_flat(spec: dict, steps: tuple[int, ...], log=print) -> list[dict]:
    """Peak RSS increase of the numba backend for growing spans: flat in the number of steps."""
    out = []
    for s in steps:
        case = Case("memory", spec, s)
        peak = peak_memory(case, REFERENCE, s)
        out.append({"lattice": case.lattice.name, "n": case.n, "steps": s, "peak_rss_increase_mb": peak})
        log(f"  memory {case.lattice.name} {s:>6} steps: peak RSS +{peak or float('nan'):.1f} MB")
    return out


def measure_io(spec: dict, steps: int, save_every: tuple[int, ...], repeats: int, log=print) -> list[dict]:
    """Integrate ``steps`` with the numba backend, writing a frame every ``save_every`` steps to H5MD
    (``lotsim.io.TrajectoryWriter``: chunks of ~256 KiB, lzf, float32 phases + the order parameter).

    Two ways to get the frame's order parameter: lotsim's numpy ``order_parameter`` on the phases, and
    lotsim's torch ``order_parameter`` as the simulation runner records it (torch threads as set for the
    benchmark).
    """
    try:
        from lotsim.io import TrajectoryWriter
    except ImportError:
        log("  io: lotsim.io is not available; skipped")
        return []
    case = Case("io", spec, steps)
    op = build_operator(case.lattice, NORMALIZATION)
    system = KuramotoSystem(torch.as_tensor(case.omega), torch.tensor([[COUPLING]], dtype=torch.float64), op)
    integ = make_integrator(system, backend="numba", method="rk4", dt=DT)
    theta0 = torch.as_tensor(case.theta0)
    integ.step_fn(integ.init_fn(theta0), WARMUP_STEPS)

    def r_numpy(state):
        return numpy_order_parameter(state.theta.numpy())[0]

    def r_torch(state):
        return lotsim_order_parameter(state.theta)[0].double().numpy()

    variants = [(None, None)] + [(every, how) for every in save_every for how in ("numpy r", "torch r")]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for every, how in variants:
            walls = []
            for rep in range(repeats):
                path = Path(tmp) / f"traj_{every}_{how}_{rep}.h5".replace(" ", "_")
                start = time.perf_counter()
                state = integ.init_fn(theta0)
                if every is None:
                    state = integ.step_fn(state, steps)
                else:
                    order = r_numpy if how == "numpy r" else r_torch
                    with TrajectoryWriter(path, mode="w") as writer:
                        writer.add_particles("oscillators", n_replicas=1, n_nodes=case.n, dtype=np.float32,
                                             observables={"order_parameter": ((), np.float64)})
                        while state.step < steps:
                            state = integ.step_fn(state, every)
                            writer.append("oscillators", np.array([state.step]), np.array([state.step * DT]),
                                          state.theta.numpy().astype(np.float32)[None],
                                          observables={"order_parameter": order(state)[None]})
                walls.append(time.perf_counter() - start)
            out.append({"lattice": case.lattice.name, "n": case.n, "steps": steps, "save_every": every,
                        "order_parameter": how, "frames": 0 if every is None else steps // every, "seconds": walls,
                        "median_seconds": statistics.median(walls),
                        "file_mb": 0.0 if every is None else path.stat().st_size / 2**20})
    base = out[0]["median_seconds"]
    for row in out:
        row["overhead"] = row["median_seconds"] / base - 1.0
        row["ms_per_frame"] = 1e3 * (row["median_seconds"] - base) / row["frames"] if row["frames"] else None
        log(f"  io save_every={row['save_every']!s:>5} {row['order_parameter'] or '':<8}: "
            f"{row['median_seconds']:.3g} s ({100 * row['overhead']:+.0f}% vs no output"
            + ("" if row["ms_per_frame"] is None else f", {row['ms_per_frame']:.3f} ms per frame")
            + f"), file {row['file_mb']:.1f} MB")
    return out


def measure_run_io(shape: tuple[int, int], steps: int, variants: tuple[tuple[int | None, str], ...], repeats: int,
                   log=print) -> list[dict]:
    """``lotsim simulate``'s own path (``lotsim.simulation.run_simulation``: numba backend, RK4 float64,
    float64 frames, the order parameter and mean phase of every frame, resume checkpoints) on a
    periodic square lattice, for several ``(save_every, compression)``; ``save_every = None`` stores
    only the first and the last frame. Repeats are interleaved across the variants; "ms per frame" is
    the extra wall time over the ``(None, "lzf")`` run divided by the extra frames, both the fastest of
    the repeats (on a shared machine the slow repeats are other processes', e.g. the page-cache
    writeback of the previous run's file)."""
    try:
        from lotsim.config import SimulationRecipe, load_recipe
        from lotsim.simulation import run_simulation
    except ImportError:
        log("  run io: lotsim.simulation is not available; skipped")
        return []

    def recipe(every: int | None, compression: str):
        return load_recipe(SimulationRecipe, None, [], {
            "lattice": {"topology": "square", "shape": list(shape)},
            "dynamics": {"coupling": 2.0, "steps": steps, "backend": "numba"},
            "output": {"save_every": every or steps, "compression": compression}})

    walls: dict[tuple, list[float]] = {v: [] for v in variants}
    frames: dict[tuple, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_simulation(recipe(max(1, steps // 10), "lzf"), Path(tmp) / "warmup.h5")  # numba cache load, imports
        for _ in range(repeats):
            for every, compression in variants:
                path = Path(tmp) / f"run_{every}_{compression}.h5"
                start = time.perf_counter()
                result = run_simulation(recipe(every, compression), path, overwrite=True)
                walls[(every, compression)].append(time.perf_counter() - start)
                frames[(every, compression)] = result.frames
                path.unlink()  # 100+ MB files: their writeback would land in the next runs
    base_key = (None, "lzf")
    base = min(walls[base_key]) if base_key in walls else 0.0
    out = []
    for every, compression in variants:
        med = min(walls[(every, compression)])
        n = frames[(every, compression)]
        extra = n - frames.get(base_key, 0)
        row = {"lattice": f"square {shape[0]}x{shape[1]}", "steps": steps, "save_every": every,
               "compression": compression, "frames": n, "seconds": walls[(every, compression)],
               "min_seconds": med, "median_seconds": statistics.median(walls[(every, compression)]),
               "ms_per_frame": 1e3 * (med - base) / extra if every is not None and extra > 0 else None}
        out.append(row)
        log(f"  run io save_every={every!s:>5} {compression:<4}: {med:.3f} s, {n} frames"
            + ("" if row["ms_per_frame"] is None else f", {row['ms_per_frame']:.3f} ms per frame"))
    return out


RUN_IO_VARIANTS = ((None, "lzf"), (100, "lzf"), (10, "lzf"), (1, "lzf"), (1, "none"))


def run_io_markdown(rows: list[dict]) -> str:
    lines = ["| save_every | compression | frames | seconds (fastest) | ms per frame |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        per = "–" if r["ms_per_frame"] is None else f"{r['ms_per_frame']:.3f}"
        lines.append(f"| {r['save_every'] or 'none'} | {r['compression']} | {r['frames']} | "
                     f"{r['min_seconds']:.3f} | {per} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numba": None if numba is None else numba.__version__,
            "numba_threads": None if numba is None else numba.get_num_threads(),
            "kuramoto_package": None}
    if numba is not None:
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            info["numba_threading_layer"] = None
    if Kuramoto is not None:
        from importlib.metadata import version
        info["kuramoto_package"] = version("kuramoto")
    return info


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2e}"


def markdown(report: dict) -> str:
    rows = report["results"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    names = [n for n in IMPLEMENTATIONS if any(r["implementation"] == n for r in rows)]
    by = {(r["case"], r["implementation"]): r for r in rows}
    m = report["machine"]
    lines = [f"Machine: {m['cpu_model']}, {m['nproc']} CPUs; torch {m['torch']} ({m['torch_threads']} threads), "
             f"numba {m['numba']} ({m['numba_threads']} threads, {m.get('numba_threading_layer')}), "
             f"numpy {m['numpy']}, scipy {m['scipy']}, kuramoto package {m['kuramoto_package']}. "
             f"Command: `{report['command']}`.", "",
             "Oscillator-steps per second (median of interleaved repeats; RK4 unless stated; same state and span "
             "per row):", ""]
    lines.append("| case | steps | " + " | ".join(names) + " | numba / best torch (f64 rk4) | numba / kuramoto |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |")
    for case in cases:
        steps = next(r["steps"] for r in rows if r["case"] == case)
        cells = [_fmt(by[(case, n)]["osc_steps_per_s"]) if (case, n) in by else "–" for n in names]
        rate = {n: by[(case, n)]["osc_steps_per_s"] for n in names if (case, n) in by}
        torch_best = max((rate[n] for n in ("torch f64 rk4", "torch f64 rk4 1 thread") if n in rate), default=None)
        ratio_t = f"{rate[REFERENCE] / torch_best:.1f}x" if REFERENCE in rate and torch_best else "–"
        ratio_k = f"{rate[REFERENCE] / rate[PACKAGE]:.0f}x" if {REFERENCE, PACKAGE} <= set(rate) else "–"
        lines.append(f"| {case} | {steps} | " + " | ".join(cells) + f" | {ratio_t} | {ratio_k} |")
    lines += ["", "Agreement and accuracy at the end of the span (max |Δθ| over nodes; fine = numba RK4 at dt/10), "
              "and the peak RSS increase of the run:", "",
              "| case | implementation | r_final | max abs dθ vs numba f64 | max abs dθ vs fine | peak RSS + (MB) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rss = "–" if r["peak_rss_increase_mb"] is None else f"{r['peak_rss_increase_mb']:.1f}"
        lines.append(f"| {r['case']} | {r['implementation']} | {r['r_final'][0]:.6f} | "
                     f"{_fmt(r['max_abs_dtheta_vs_numba'])} | {_fmt(r['max_abs_dtheta_vs_fine_rk4'])} | {rss} |")
    if report.get("batched"):
        lines += ["", "Batched sweeps (B couplings in one run vs B runs of one coupling):", "",
                  "| implementation | lattice | B | one batched run (s) | B runs (s) | speed-up | max abs dθ |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["batched"]:
            one, many = statistics.median(r["batched_seconds"]), statistics.median(r["looped_seconds"])
            lines.append(f"| {r['implementation']} | {r['lattice']} | {r['b']} | {one:.3g} | {many:.3g} | "
                         f"{r['speedup']:.2f}x | {r['max_abs_dtheta_batched_vs_looped']:.1e} |")
    if report.get("memory"):
        lines += ["", "Memory against the span (numba f64 RK4): "
                  + ", ".join(f"{r['steps']} steps +{r['peak_rss_increase_mb']:.1f} MB" for r in report["memory"])]
    if report.get("io"):
        lines += ["", "Trajectory writing (numba f64 RK4, H5MD float32 frames + order parameter, chunked appends):",
                  "", "| save_every | order parameter | seconds | overhead vs no output | ms per frame | file (MB) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in report["io"]:
            per = "–" if r["ms_per_frame"] is None else f"{r['ms_per_frame']:.2f}"
            lines.append(f"| {r['save_every'] or 'no output'} | {r['order_parameter'] or '–'} | "
                         f"{r['median_seconds']:.3g} | {100 * r['overhead']:+.0f}% | {per} | {r['file_mb']:.1f} |")
    if report.get("run_io"):
        lines += ["", "`lotsim simulate`'s own path (run_simulation, numba f64 RK4, float64 lzf frames, "
                  "observables, checkpoints):", "", run_io_markdown(report["run_io"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/simulate.json"))
    parser.add_argument("--quick", action="store_true", help="small sizes and spans (a smoke run, ~1 min)")
    parser.add_argument("--threads", type=int, default=2, help="numba and torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation")
    parser.add_argument("--no-kuramoto", action="store_true", help="skip the kuramoto package")
    parser.add_argument("--io-only", action="store_true",
                        help="only `lotsim simulate`'s trajectory writing (64x64, 4000 steps; ~1 min)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker or args.time_worker:
        _set_threads(args.threads)
        (_memory_worker if args.memory_worker else _time_worker)(args.memory_worker or args.time_worker)
        return {}
    _set_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (2 if quick else 3)
    log = print
    if args.io_only:
        rows = measure_run_io((64, 64), 4000, RUN_IO_VARIANTS, args.repeats or 5, log=log)
        report = {"command": "python benchmarks/bench_simulate.py " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:]),
                  "machine": machine(), "config": {"threads": args.threads}, "run_io": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(run_io_markdown(rows))
        log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
        return report
    fast = ["numba f64 rk4", "numba f64 rk4 1 thread", "numba f32 rk4", "numba f64 euler", "torch f64 rk4",
            "torch f64 rk4 1 thread", "torch f32 rk4", "torch f64 euler", "numpy csr f64 rk4"]
    memory = (REFERENCE, "torch f64 rk4", "numpy csr f64 rk4", "numpy add.at f64 rk4", PACKAGE)
    with_pkg = Kuramoto is not None and not args.no_kuramoto
    results = []
    for side in [32, 64] if quick else [32, 64, 128, 256, 512]:
        spec = {"topology": "square", "shape": [side, side]}
        steps = (100 if quick else 1000) if side <= 128 else 200
        names = fast + (["numpy add.at f64 rk4"] if side <= 64 else [])
        log(f"square {side}x{side}, {steps} steps")
        results += measure_case(Case(f"square {side}^2", spec, steps), names, repeats, memory=memory, log=log)
        if with_pkg and side <= (32 if quick else 64):
            span = (50 if quick else 200) if side == 32 else 100
            log(f"square {side}x{side} against the kuramoto package, {span} steps")
            results += measure_case(Case(f"square {side}^2 t={span * DT:g}", spec, span),
                                    [REFERENCE, "torch f64 rk4 1 thread", PACKAGE], 1, memory=(PACKAGE,), log=log)
    ring = {"topology": "ring", "n": 4096 if quick else 65536}
    log(f"ring n={ring['n']}")
    results += measure_case(Case(f"ring {ring['n']}", ring, 200 if quick else 1000), fast, repeats, memory=memory,
                            log=log)
    for n in [1024, 4096] if quick else [1024, 16384]:
        complete = {"topology": "complete", "n": n}
        log(f"complete graph n={n} (mean field)")
        results += measure_case(Case(f"complete {n}", complete, 200 if quick else 1000), fast, repeats,
                                memory=memory, log=log)
        if with_pkg and n == 1024:
            span = 50 if quick else 200
            results += measure_case(Case(f"complete {n} t={span * DT:g}", complete, span),
                                    [REFERENCE, "torch f64 rk4 1 thread", PACKAGE], 1, memory=(PACKAGE,), log=log)
    log("batched sweeps")
    batched = measure_batched({"topology": "square", "shape": [32, 32] if quick else [64, 64]},
                              4 if quick else 8, 200 if quick else 1000, repeats, log=log)
    log("memory against the span")
    memory_flat = measure_memory_flat({"topology": "square", "shape": [64, 64] if quick else [256, 256]},
                                      (50, 500) if quick else (100, 1000, 4000), log=log)
    log("trajectory writing")
    io = measure_io({"topology": "square", "shape": [64, 64] if quick else [128, 128]},
                    200 if quick else 1000, (100, 10, 1), repeats, log=log)
    run_io = measure_run_io((64, 64), 1000 if quick else 4000, RUN_IO_VARIANTS, repeats, log=log)
    report = {"command": "python benchmarks/bench_simulate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "config": {"dt": DT, "coupling": COUPLING, "normalization": NORMALIZATION,
                                               "threads": args.threads, "repeats": repeats, "quick": quick},
              "results": results, "batched": batched, "memory": memory_flat, "io": io, "run_io": run_io}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
