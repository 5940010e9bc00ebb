"""What ``--backend auto`` picks for the README's walkthrough runs, and what that costs.

Command (about 3-5 minutes on 2 busy cores; writes JSON and a markdown table next to it):

    python benchmarks/bench_simulate_auto.py --out benchmarks/results/auto.json

For each ``lotsim simulate`` walkthrough of README.md (the spans of the long ones shortened, see
``RUNS``): the work of the full command (replicas x nodes x steps), the backend the previous rule of
``auto`` chose for it (numba only above 2e8 oscillator-steps, counted per shard), the backend the
current rule chooses (``make_integrator``'s cost model, numba's compile counted only when its disk
cache is empty), and the wall time of the shortened run through the CLI on ``--backend torch`` and on
``--backend numba`` (whole process: imports, numba's cache load, integration and writing the file);
"before / now" is the time of the backend the old rule picks over that of the new rule's pick. The
decisions are for the full commands; the timings use the shortened spans so the table takes minutes.
Both are timed after one untimed warm-up run on numba, so numba's disk cache is filled as on a
user's second run (``auto before`` and ``auto now`` are decided with that cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD_THRESHOLD = 2e8  # the previous rule: numba above this many oscillator-steps (per shard)

# (name, arguments of the README command, overrides that shorten it for the timing)
RUNS = [
    ("default sweep", [], ["--t-max", "10"]),
    ("square 64x64, 3 couplings", ["--topology", "square", "--shape", "64x64", "--normalization", "degree",
                                   "--freq-dist", "gaussian", "--freq-width", "0.5", "--coupling", "0.5,1,2",
                                   "--t-max", "100"], ["--t-max", "10"]),
    ("lorentzian_sweep", ["recipes/simulate/lorentzian_sweep.toml", "--set", "dynamics.t_max=50"],
     ["--t-max", "0.5"]),
    ("square_vortices", ["recipes/simulate/square_vortices.toml"], ["--t-max", "10"]),
    ("2000-oscillator sweep", ["--n", "2000", "--coupling", "0:3:16", "--replicas", "3", "--t-max", "60"],
     ["--t-max", "3"]),
    ("2000-oscillator sweep, shard 0/2", ["--n", "2000", "--coupling", "0:3:16", "--replicas", "3", "--t-max",
                                          "60", "--shard", "0/2"], ["--t-max", "3"]),
]


def resolved(args: list[str]):
    from lotsim.config import SimulationRecipe, load_recipe

    recipe_path = args[0] if args and args[0].endswith(".toml") else None
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    flags = {"--n": "lattice.n", "--coupling": "dynamics.coupling", "--replicas": "replicas",
             "--t-max": "dynamics.t_max", "--shape": "lattice.shape", "--topology": "lattice.topology",
             "--shard": "shard"}
    updates = {}
    for flag, key in flags.items():
        if flag in args:
            value = args[args.index(flag) + 1]
            updates[key] = [int(x) for x in value.split("x")] if flag == "--shape" else (
                float(value) if flag == "--t-max" else int(value) if flag in ("--n", "--replicas") else value)
    if "dynamics.t_max" in updates:
        updates["dynamics.steps"] = None
    return load_recipe(SimulationRecipe, recipe_path, sets, updates)


def choices(args: list[str]) -> dict:
    from lotsim.config import parse_couplings
    from lotsim.dynamics.backends import make_integrator
    from lotsim.simulation import build_system

    recipe = resolved(args)
    lattice, system, *_ = build_system(recipe)
    dyn = recipe.dynamics
    total = len(parse_couplings(dyn.coupling)) * recipe.replicas * lattice.n * dyn.n_steps
    shard = system.coupling.shape[0] * lattice.n * dyn.n_steps
    new = make_integrator(system, backend="auto", method=dyn.integrator, dt=dyn.dt, work_hint=total).backend
    return {"work": total, "work_this_shard": shard, "old_auto": "numba" if shard >= OLD_THRESHOLD else "torch",
            "new_auto": new}


def timed(args: list[str], backend: str, tmp: Path) -> tuple[float, dict]:
    out = tmp / f"run-{backend}.h5"
    cmd = [sys.executable, "-m", "lotsim", "simulate", *args, "--backend", backend, "--out", str(out),
           "--overwrite", "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command, shorten in RUNS:
            row = {"run": name, "command": "lotsim simulate " + " ".join(command), "timed_with": " ".join(shorten),
                   **choices(command)}
            short = command + shorten
            timed(short, "numba", Path(tmp))  # warm-up: numba's disk cache filled, as on a user's second run
            row.update(choices(command))  # decided with the cache warm, for the full command
            for backend in ("torch", "numba"):  # the shortened run on each; auto's pick decides which applies
                seconds, summary = timed(short, backend, Path(tmp))
                row[f"{backend}_s"] = seconds
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"loadavg": os.getloadavg(), "rows": rows}, indent=1))
    lines = ["| run | work (osc-steps) | auto before | auto now | timed with | torch | numba | before / now |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        before, now = r[f"{r['old_auto']}_s"], r[f"{r['new_auto']}_s"]
        lines.append(f"| {r['run']} | {r['work']:.1e} | {r['old_auto']} | {r['new_auto']} "
                     f"| {r['timed_with'] or 'full'} | {r['torch_s']:.1f} s | {r['numba_s']:.1f} s | "
                     f"{before / now:.1f}× |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
