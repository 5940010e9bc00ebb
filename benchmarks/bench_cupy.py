"""GPU throughput of the CuPy kernels against the torch backend, and the memory bandwidth they reach.

Command (on a machine with an NVIDIA GPU, CuPy and a CUDA build of torch):

    python benchmarks/bench_cupy.py                      # square lattices N = 2^10 .. 2^24, both dtypes
    python benchmarks/bench_cupy.py --topologies ring --sizes 10:24 --backends cupy --json out.json

For each (topology, N, dtype, backend): RK4, dt = 0.01, one replica, K = 2, gaussian omega; a warm-up
(compilation, plans), then steps timed with CUDA events on torch's stream, repeated, median kept.
Reported: steps/s, oscillator-steps/s, and the achieved bandwidth = modelled bytes per step / time,
against the device peak 2 * memoryClockRate * memoryBusWidth / 8 from the CUDA device attributes. The
model is the fused kernels' minimum global traffic (see the header of cuda/kuramoto.cu):
(15 + 16 M) s bytes per oscillator and step plus 4 passes over the neighbour table (int32 indices;
uniform weights are not read), s = sizeof(real), M harmonics. The torch backend is credited with the
same bytes, so the two bandwidth columns compare like steps/s does.

Lattices are periodic square grids (N = L^2, even exponents) and rings, built directly as neighbour
tables on the GPU (networkx would take minutes at N = 2^24). Without a GPU the script says so and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lotsim.dynamics import KuramotoSystem, NeighbourOperator, make_integrator

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def neighbour_table(topology: str, n: int, device) -> NeighbourOperator:
    """Periodic ring (k = 2) or L x L square lattice (k = 4), uniform weights 1."""
    node = torch.arange(n, device=device)
    if topology == "ring":
        index = torch.stack(((node - 1) % n, (node + 1) % n), dim=1)
    else:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"a square lattice needs N = L^2, got {n}")
        row, col = node // side, node % side
        index = torch.stack((((row - 1) % side) * side + col, ((row + 1) % side) * side + col,
                             row * side + (col - 1) % side, row * side + (col + 1) % side), dim=1)
    return NeighbourOperator(index, torch.ones(index.shape, device=device, dtype=torch.float64))


def model_bytes_per_step(n: int, k: int, itemsize: int, harmonics: int = 1, replicas: int = 1) -> int:
    """Minimum global-memory traffic of one fused RK4 step (uniform weights, first order)."""
    return replicas * n * ((15 + 16 * harmonics) * itemsize + 4 * 4 * k)


def peak_bandwidth(cupy) -> tuple[float | None, dict]:
    """Theoretical DRAM bandwidth (bytes/s) from the device attributes, and the raw numbers."""
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device().id
    info = {"name": runtime.getDeviceProperties(device)["name"].decode()}
    try:
        clock_khz = runtime.deviceGetAttribute(runtime.cudaDevAttrMemoryClockRate, device)
        bus_bits = runtime.deviceGetAttribute(runtime.cudaDevAttrGlobalMemoryBusWidth, device)
    except Exception:  # attribute missing in this CUDA version: try the properties struct
        props = runtime.getDeviceProperties(device)
        clock_khz, bus_bits = props.get("memoryClockRate"), props.get("memoryBusWidth")
    info.update(memory_clock_khz=clock_khz, memory_bus_bits=bus_bits)
    if not clock_khz or not bus_bits:
        return None, info
    return 2.0 * clock_khz * 1e3 * bus_bits / 8.0, info


def time_run(integrator, theta0, target_s: float, repeats: int) -> float:
    """Median seconds per step, timed with CUDA events after a warm-up (wall clock on the CPU)."""
    state = integrator.step_fn(integrator.init_fn(theta0), 3)  # compile, plan, allocate
    cuda = theta0.is_cuda
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(n_steps: int) -> float:
        nonlocal state
        if not cuda:
            t0 = time.perf_counter()
            state = integrator.step_fn(state, n_steps)
            return time.perf_counter() - t0
        start.record()
        state = integrator.step_fn(state, n_steps)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    probe = timed(5) / 5
    n_steps = int(min(20_000, max(10, target_s / max(probe, 1e-9))))
    return statistics.median(timed(n_steps) / n_steps for _ in range(repeats))


def sizes(spec: str) -> list[int]:
    low, high = (int(x) for x in spec.split(":"))
    return [1 << e for e in range(low, high + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10:24", help="exponents LOW:HIGH of N = 2^e (default 10:24)")
    parser.add_argument("--topologies", nargs="+", default=["square"], choices=["square", "ring"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=list(DTYPES))
    parser.add_argument("--backends", nargs="+", default=["torch", "cupy"], choices=["torch", "cupy"])
    parser.add_argument("--seconds", type=float, default=0.3, help="target time of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_cupy.json"))
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: the torch backend on the CPU, same records (a check of the script only)")
    args = parser.parse_args(argv)

    device = "cpu" if args.dry_run else "cuda"
    cupy = None
    if args.dry_run:
        args.backends = ["torch"]
        peak, device_info = None, {"name": "cpu (dry run)"}
    else:
        try:
            import cupy
        except ImportError:
            print("bench_cupy: needs CuPy (pip install 'lotsim[gpu12]' or 'lotsim[gpu13]') and an NVIDIA GPU",
                  file=sys.stderr)
            return 2
        if not cupy.is_available() or not torch.cuda.is_available():
            print("bench_cupy: needs a CUDA GPU (and a CUDA build of torch); none is available here. "
                  "The GPU numbers in docs/backends.md are pending a run on such a machine.", file=sys.stderr)
            return 2
        peak, device_info = peak_bandwidth(cupy)
    records = []
    header = (f"{'topology':8} {'N':>9} {'dtype':7} {'backend':7} {'steps/s':>10} {'osc-steps/s':>11} "
              f"{'GB/s':>8} {'% peak':>6}")
    print(f"device: {device_info['name']}, peak {peak / 1e9:.0f} GB/s" if peak else f"device: {device_info}")
    print(header)
    for topology in args.topologies:
        for n in sizes(args.sizes):
            if topology == "square" and math.isqrt(n) ** 2 != n:
                continue
            op = neighbour_table(topology, n, device)
            k = op.index.shape[1]
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                gen = torch.Generator(device=device).manual_seed(0)
                omega = 0.5 * torch.randn(n, device=device, dtype=dtype, generator=gen)
                theta0 = 2 * math.pi * torch.rand(1, n, device=device, dtype=dtype, generator=gen)
                system = KuramotoSystem(omega=omega, operator=op.to(device=device, dtype=dtype),
                                        coupling=torch.full((1, 1), 2.0, device=device, dtype=dtype))
                for backend in args.backends:
                    integrator = make_integrator(system, backend=backend, method="rk4", dt=0.01)
                    seconds = time_run(integrator, theta0, args.seconds, args.repeats)
                    moved = model_bytes_per_step(n, k, theta0.element_size())
                    record = dict(topology=topology, n=n, dtype=dtype_name, backend=backend, k=k,
                                  seconds_per_step=seconds, steps_per_s=1.0 / seconds,
                                  oscillator_steps_per_s=n / seconds, model_bytes_per_step=moved,
                                  achieved_bytes_per_s=moved / seconds,
                                  fraction_of_peak=(moved / seconds / peak) if peak else None)
                    records.append(record)
                    share = f"{100 * record['fraction_of_peak']:6.1f}" if peak else "     ?"
                    print(f"{topology:8} {n:9d} {dtype_name:7} {backend:7} {record['steps_per_s']:10.3g} "
                          f"{record['oscillator_steps_per_s']:11.3g} "
                          f"{record['achieved_bytes_per_s'] / 1e9:8.1f} {share}", flush=True)
            del op
            if not args.dry_run:
                torch.cuda.empty_cache()

    result = dict(command=" ".join(["python", "benchmarks/bench_cupy.py", *(argv or sys.argv[1:])]),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"), device=device_info, peak_bytes_per_s=peak,
                  torch=torch.__version__, cupy=None if cupy is None else cupy.__version__, method="rk4",
                  dt=0.01, replicas=1, dry_run=args.dry_run,
                  records=records)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
