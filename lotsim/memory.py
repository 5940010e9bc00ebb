"""Will a simulation fit? The memory a recipe needs, estimated from the recipe before anything is built.

``check_memory`` refuses a run whose estimate exceeds the memory available now, with one line naming
the recipe value that makes it large, so an impossible size fails at once instead of swapping,
hanging in a graph builder or dying with a ``MemoryError`` traceback. The estimate is deliberately
simple and on the generous side (constants measured with ``tracemalloc`` on lattices of 1e5 nodes):

- lattice: ~1000 bytes per node and ~500 bytes per directed edge (the networkx graph it is built
  from, then the edge arrays and the coupling operator);
- state: per replica and node, 32 bytes of float64 host arrays (frequencies, initial phases) plus,
  in the run's dtype, phases, frequencies, the integrator's stages and two temporaries (twice that
  with inertia, one more array with noise), and two copies of a stored frame (frame block, writer).
"""

from __future__ import annotations

import os
from pathlib import Path

from lotsim.config import SimulationRecipe, parse_shard

NODE_BYTES = 1000
EDGE_BYTES = 500
HOST_BYTES_PER_ELEMENT = 32
# state-sized work arrays of each integrator: its stage derivatives (for the adaptive pairs also the
# candidate state and the error estimate: dopri5 7 + 2, dop853 12 + 2)
STAGES = {"euler": 1, "heun": 2, "rk4": 4, "dopri5": 9, "dop853": 14}


def available_memory() -> int | None:
    """Bytes of memory available now: ``MemAvailable`` of /proc/meminfo (or the free physical pages),
    lowered to the cgroup limit when one is set; None when it cannot be read."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # cgroup v2: a container's limit can be far below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def estimate_memory(recipe: SimulationRecipe) -> dict[str, int] | None:
    """Bytes a run needs, by part: ``{"lattice": ..., "state": ...}``; None for a graph read from a file.

    Args:
        recipe: a validated recipe.
    """
    size = recipe.lattice.size()
    if size is None:
        return None
    nodes, edges = size
    dyn = recipe.dynamics
    itemsize = 4 if dyn.dtype == "float32" else 8
    store = itemsize if recipe.output.precision == "same" else (4 if recipe.output.precision == "float32" else 8)
    per_element = itemsize * (4 + STAGES[dyn.integrator]) * (2 if dyn.inertia else 1)
    per_element += HOST_BYTES_PER_ELEMENT + (itemsize if dyn.noise else 0) + 2 * store
    replicas = recipe.n_replicas
    if recipe.shard is not None:  # this job's block of the replica grid (the largest block)
        replicas = -(-replicas // parse_shard(recipe.shard)[1])
    return {"lattice": NODE_BYTES * nodes + EDGE_BYTES * edges, "state": per_element * replicas * nodes}


def check_memory(recipe: SimulationRecipe, available: int | None = None) -> None:
    """Refuse a run that cannot fit in memory.

    Args:
        recipe: a validated recipe.
        available: bytes available (default: :func:`available_memory`).

    Raises:
        ValueError: one line naming the value that makes the run large, the estimate and what is available.
    """
    parts = estimate_memory(recipe)
    available = available_memory() if available is None else available
    if parts is None or available is None or sum(parts.values()) <= available:
        return
    nodes, edges = recipe.lattice.size()
    lat = recipe.lattice
    size_key = f"lattice.shape = {lat.shape}" if lat.shape is not None else f"lattice.n = {lat.n}"
    if parts["lattice"] >= parts["state"]:
        cause = f"{size_key}: {nodes:.3g} nodes and {edges:.3g} edges need ~{_bytes(parts['lattice'])}"
    else:
        cause = (f"{recipe.n_replicas:.3g} replicas (replicas = {recipe.replicas} x dynamics.coupling = "
                 f"{recipe.dynamics.coupling!r}) of {nodes:.3g} nodes ({size_key}) need ~{_bytes(parts['state'])}")
    raise ValueError(f"the run needs about {_bytes(sum(parts.values()))} of memory but {_bytes(available)} is "
                     f"available: {cause}; make it smaller or split it (shard)")


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} PiB"
