"""Time to accuracy: error-controlled dopri5 against fixed-step RK4 (and, optionally, diffrax).

Command (writes JSON and a markdown Pareto table next to it, ``.md``; about 2-4 minutes):

    python benchmarks/bench_simulate_accuracy.py --out benchmarks/results/accuracy.json
    python benchmarks/bench_simulate_accuracy.py --diffrax /tmp/jaxenv/bin/python --out ...   # + diffrax

Problem: the periodic 128 x 128 square lattice (4 neighbours, ``degree`` normalisation, K = 2,
Gaussian frequencies sigma = 1, random initial phases, seed 0), float64, integrated to t = 10, one
thread. The error of a run is the largest phase difference at t = 10 from a reference: numba RK4 at
dt = 5e-4, checked against dopri5 at rtol = atol = 1e-13 (their difference is reported).

Rows: lotsim's numba RK4 at dt = 0.2 ... 0.0125, numba dopri5 and dop853 at tolerances
1e-3 ... 1e-13 (rtol = atol = tol), torch dopri5 down to 1e-7 (the reference backend's cost). Each
time is the best of ``--repeats`` runs after a warm-up run (numba's compile and JAX's tracing are not
counted). With ``--diffrax PYTHON`` (an interpreter that
has jax and diffrax; never a dependency of lotsim), the same problem runs in diffrax's ``Tsit5``,
``Dopri5`` and ``Dopri8`` with its ``PIDController`` (rtol = atol = tol), jit-compiled, float64, XLA
on one thread, in a subprocess that reads the problem and the reference from an .npz file.

The Pareto table lists, for each target error 1e-3 ... 1e-10, the fastest setting of each
implementation whose error is at most the target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lotsim.dynamics import KuramotoSystem, build_operator, make_integrator  # noqa: E402
from lotsim.dynamics.initial import initial_phases, natural_frequencies  # noqa: E402
from lotsim.lattice import build_lattice  # noqa: E402

T_END = 10.0
TARGETS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
RK4_DTS = [0.2, 0.1, 0.05, 0.025, 0.0125]
TOLERANCES = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13]

DIFFRAX_SCRIPT = r"""
import json, os, sys, time
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import diffrax

data = np.load(sys.argv[1])
omega, theta0, index, weight = (jnp.asarray(data[k]) for k in ("omega", "theta0", "index", "weight"))
coupling, t_end, reference = float(data["coupling"]), float(data["t_end"]), data["reference"]
tolerances = json.loads(sys.argv[2])

def rhs(t, theta, args):
    s, c = jnp.sin(theta), jnp.cos(theta)
    a_s = jnp.sum(weight * s[index], axis=1)
    a_c = jnp.sum(weight * c[index], axis=1)
    return omega + coupling * (a_s * c - a_c * s)

rows = []
for name in ("Tsit5", "Dopri5", "Dopri8"):
    solver = getattr(diffrax, name)()

    @jax.jit
    def solve(tol):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(rhs), solver, 0.0, t_end, None, theta0,
                                  stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=200_000)
        return sol.ys[-1], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

    solve(jnp.float64(1e-3))[0].block_until_ready()  # compile once per solver (the tolerance is traced)
    for tol in tolerances:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            y, acc, rej = solve(jnp.float64(tol))
            y.block_until_ready()
            times.append(time.perf_counter() - start)
        rows.append({"impl": f"diffrax {name}", "setting": f"tol={tol:g}", "seconds": min(times),
                     "error": float(np.abs(np.asarray(y) - reference).max()), "accepted": int(acc),
                     "rejected": int(rej)})
print(json.dumps({"rows": rows, "jax": jax.__version__, "diffrax": diffrax.__version__}))
"""


def build_problem():
    lattice = build_lattice("square", shape=(128, 128), periodic=True)
    omega = natural_frequencies(lattice.n, "gaussian", width=1.0, seed=0)
    theta0 = initial_phases(lattice, "random", seed=0)
    operator = build_operator(lattice, "degree")
    system = KuramotoSystem(torch.as_tensor(omega), torch.tensor([[2.0]], dtype=torch.float64), operator)
    return system, torch.as_tensor(theta0)[None]


def run(system, theta0, backend: str, method: str, *, dt: float, tol: float | None = None):
    """Integrate to T_END; returns (final phases, seconds, extra info)."""
    if tol is None:
        integ = make_integrator(system, backend=backend, method=method, dt=dt)
        steps = round(T_END / dt)
    else:
        integ = make_integrator(system, backend=backend, method=method, dt=T_END, rtol=tol, atol=tol)
        steps = 1
    state = integ.init_fn(theta0)
    start = time.perf_counter()
    state = integ.step_fn(state, steps)
    seconds = time.perf_counter() - start
    info = {} if state.control is None else {"accepted": int(state.control.accepted[0]),
                                             "rejected": int(state.control.rejected[0]),
                                             "error_estimate": float(state.control.error[0])}
    return state.theta[0].numpy(), seconds, info


def pareto(rows: list[dict]) -> list[dict]:
    table = []
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for target in TARGETS:
        entry = {"target": target}
        for impl in impls:
            ok = [r for r in rows if r["impl"] == impl and r["error"] <= target]
            best = min(ok, key=lambda r: r["seconds"]) if ok else None
            entry[impl] = None if best is None else {"seconds": best["seconds"], "setting": best["setting"],
                                                     "error": best["error"]}
        table.append(entry)
    return table


def markdown(result: dict) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in result["rows"]))
    head = "| error ≤ | " + " | ".join(impls) + " |"
    lines = [head, "|" + " --- |" * (len(impls) + 1)]
    for entry in result["pareto"]:
        cells = []
        for impl in impls:
            best = entry[impl]
            cells.append("—" if best is None else f"{best['seconds'] * 1e3:.0f} ms ({best['setting']})")
        lines.append(f"| {entry['target']:.0e} | " + " | ".join(cells) + " |")
    lines += ["", "| implementation | setting | seconds | error | accepted | rejected | error estimate |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['impl']} | {r['setting']} | {r['seconds']:.4f} | {r['error']:.2e} | "
                     f"{r.get('accepted', '')} | {r.get('rejected', '')} | "
                     f"{'' if 'error_estimate' not in r else format(r['error_estimate'], '.1e')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--diffrax", help="a Python interpreter with jax and diffrax installed")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch dopri5 rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)
    system, theta0 = build_problem()

    start = time.perf_counter()
    reference, ref_seconds, _ = run(system, theta0, "numba", "rk4", dt=5e-4)
    check, _, _ = run(system, theta0, "numba", "dopri5", dt=T_END, tol=1e-13)
    ref_gap = float(np.abs(reference - check).max())
    print(f"reference: RK4 dt=5e-4 in {ref_seconds:.1f} s; |RK4 - dopri5(1e-13)| = {ref_gap:.1e}", flush=True)

    rows = []

    def add(impl, setting, theta, seconds, info):
        row = {"impl": impl, "setting": setting, "seconds": seconds,
               "error": float(np.abs(theta - reference).max()), **info}
        rows.append(row)
        print(f"{impl:18s} {setting:12s} {seconds * 1e3:9.1f} ms  error {row['error']:.2e}", flush=True)

    run(system, theta0, "numba", "rk4", dt=0.1)  # warm-up: numba's cache / compile
    for dt in RK4_DTS:
        times = [run(system, theta0, "numba", "rk4", dt=dt) for _ in range(args.repeats)]
        add("lotsim numba RK4", f"dt={dt:g}", times[0][0], min(t[1] for t in times), {})
    pairs = [("numba", "dopri5"), ("numba", "dop853")] + ([] if args.no_torch else [("torch", "dopri5")])
    for backend, method in pairs:
        run(system, theta0, backend, method, dt=T_END, tol=1e-3)
        for tol in TOLERANCES:
            if backend == "torch" and tol < 1e-7:
                continue  # torch rows only show the reference backend's cost, keep them short
            times = [run(system, theta0, backend, method, dt=T_END, tol=tol) for _ in range(args.repeats)]
            add(f"lotsim {backend} {method}", f"tol={tol:g}", times[0][0], min(t[1] for t in times), times[0][2])

    meta = {}
    if args.diffrax:
        op = system.operator
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "problem.npz"
            np.savez(data, omega=system.omega.numpy(), theta0=theta0[0].numpy(), index=op.index.numpy(),
                     weight=op.weight.numpy(), coupling=2.0, t_end=T_END, reference=reference)
            proc = subprocess.run([args.diffrax, "-c", DIFFRAX_SCRIPT, str(data), json.dumps(TOLERANCES[:8])],
                                  capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"diffrax run failed:\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in out["rows"]:
            rows.append(row)
            print(f"{row['impl']:18s} {row['setting']:12s} {row['seconds'] * 1e3:9.1f} ms  error {row['error']:.2e}")
        meta = {"jax": out["jax"], "diffrax": out["diffrax"]}

    result = {"problem": "periodic square 128x128, degree normalisation, K=2, gaussian sigma=1, t=10, float64",
              "reference": {"method": "numba rk4 dt=5e-4", "gap_to_dopri5_1e-13": ref_gap},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "loadavg": os.getloadavg()}, "threads": 1, **meta,
              "rows": rows, "pareto": pareto(rows), "wall_s": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
