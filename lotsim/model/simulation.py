"""Export a trained head lattice to the simulator (one Kuramoto core: what a layer learned can be
simulated and analysed with the physics tools).

A ``lattice`` layer's per-token dynamics is ``dtheta_h/dt = omega_h + kappa_h sum_g W_hg
sin(theta_g - theta_h)``. Folding kappa into the edges gives a directed weighted graph with edge
``g -> h`` of weight ``kappa_h W_hg`` (lattice convention: ``A[h, g]`` is the influence of g on h),
simulated with coupling 1 and normalisation ``none``. The sequence frequency Omega and, for
``dynamics="sequence"``, the coupling along tokens are not part of the head lattice and are not
exported.

Legend: ``h`` heads = ``n`` lattice nodes, ``e`` directed edges.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import tomli_w
import torch

from lotsim.dynamics.core import KuramotoSystem, build_operator
from lotsim.lattice import Lattice
from lotsim.model.lattice_attention import LatticeAttention

EDGES_FILE = "edges.txt"
OMEGA_FILE = "omega.npy"
RECIPE_FILE = "simulate.toml"


def _lattice_layer(model: torch.nn.Module, layer: int) -> LatticeAttention:
    blocks = model.blocks
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} does not exist; the model has layers 0..{len(blocks) - 1}")
    attn = blocks[layer].attn
    if not isinstance(attn, LatticeAttention):
        raise ValueError(f"layer {layer} uses attention {attn.name!r}, which has no head lattice to export")
    return attn


def head_lattice_system(model: torch.nn.Module, layer: int) -> tuple[Lattice, KuramotoSystem]:
    """The head lattice of one ``lattice`` layer as a simulator lattice and system (float64, CPU).

    Args:
        model: a :class:`~lotsim.model.transformer.LOTModel`.
        layer: layer index.

    Returns:
        (lattice, system): a directed :class:`Lattice` (node positions of the head lattice, edge
        ``g -> h`` with weight kappa_h W_hg, zero-weight pairs of the coupling mask kept so every
        head stays a node) and ``KuramotoSystem(omega, coupling=1, dense operator of that lattice,
        normalization none)`` — exactly what ``lotsim simulate`` builds from the exported files.

    Raises:
        ValueError: if the layer is not a ``lattice`` attention.
    """
    attn = _lattice_layer(model, layer)
    with torch.no_grad():
        params = attn.oscillator_parameters()
        weights = attn.coupling_weights(params.lattice_constant)
        folded = (params.coupling[:, None] * weights).double().cpu().numpy()  # (h, h): [receiver, sender]
        omega = params.omega.detach().double().cpu()
        mask = attn.coupling_mask.cpu().numpy() != 0
    receivers, senders = np.nonzero(mask)
    lattice = replace(
        attn.lattice, name=f"head lattice of layer {layer} ({attn.lattice.name})",
        edges=(senders.astype(np.int64), receivers.astype(np.int64), folded[receivers, senders].astype(np.float64)),
        directed=True, complete=False,
        topology="edgelist",
    )
    operator = build_operator(lattice, "none", layout="dense", dtype=torch.float64)
    coupling = torch.tensor(1.0, dtype=torch.float64)
    return lattice, KuramotoSystem(omega=omega, coupling=coupling, operator=operator)


def write_simulation_inputs(model: torch.nn.Module, layer: int, directory: str | Path, *, steps: int = 2000,
                            save_every: int = 10) -> Path:
    """Write a layer's head lattice as simulator inputs.

    Files (paths in the recipe are relative to the recipe's folder):
    ``edges.txt`` lines ``g h w`` (g drives h, w = kappa_h W_hg), ``omega.npy`` (h,) float64
    natural frequencies, ``simulate.toml`` a recipe with ``[lattice] topology="edgelist"
    directed=true``, ``[dynamics] coupling=1 normalization="none"``, the layer's integrator and dt.

    Args:
        model: a :class:`~lotsim.model.transformer.LOTModel`.
        layer: layer index (must be a ``lattice`` attention).
        directory: output folder (created).
        steps: simulation steps in the recipe.
        save_every: output stride in the recipe.

    Returns:
        Path of the recipe file.

    Raises:
        ValueError: if the layer is not a ``lattice`` attention or some head has no edge (an edge
            list cannot express an isolated node).
    """
    lattice, system = head_lattice_system(model, layer)
    if lattice.n < 2 or np.unique(np.concatenate([lattice.senders, lattice.receivers])).size != lattice.n:
        raise ValueError(f"layer {layer}: some heads have no coupling edge, so an edge list cannot represent "
                         f"the {lattice.n}-head lattice")
    options = _lattice_layer(model, layer).options
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"{g} {h} {w!r}" for g, h, w in zip(lattice.senders.tolist(), lattice.receivers.tolist(),
                                                   lattice.weights.tolist())]
    (directory / EDGES_FILE).write_text("\n".join(lines) + "\n")
    np.save(directory / OMEGA_FILE, system.omega.numpy())
    recipe = {
        "lattice": {"topology": "edgelist", "file": EDGES_FILE, "directed": True},
        "dynamics": {"coupling": 1.0, "normalization": "none", "integrator": options.method,
                     "dt": options.dt, "steps": steps},
        "frequencies": {"dist": "file", "file": OMEGA_FILE},
        "initial": {"kind": "random"},
        "output": {"save_every": save_every},
    }
    header = (f"# Head lattice of layer {layer} of a lotsim LOT model ({lattice.n} heads, "
              f"{lattice.num_edges} directed edges).\n# Edge 'g h w' in {EDGES_FILE}: head g drives head h "
              f"with weight kappa_h * exp(-d_hg / ell_h).\n")
    path = directory / RECIPE_FILE
    path.write_text(header + tomli_w.dumps(recipe))
    return path
