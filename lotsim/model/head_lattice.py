"""Where the ``lattice`` attention's oscillators sit and how they couple within a token.

:class:`HeadLatticeOptions` (the options that place the heads), :func:`build_head_lattice` (the
lattice of the heads of one layer: :func:`lotsim.lattice.build_lattice`, the simulator's lattices)
and :func:`head_lattice_geometry` (the distances and masks its coupling weights
``W_hg = exp(-d_hg / ell_h)`` and its :func:`local_order_parameter` use). The coupling along the token axis
(``dynamics="sequence"``) is :mod:`lotsim.model.sequence_mode`.

Legend: ``h`` heads = ``n`` lattice nodes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from lotsim.lattice import Lattice, Topology, build_lattice
from lotsim.model.attention import AttentionOptions

GRID_TOPOLOGIES = ("square", "triangular", "hexagonal", "hypercubic")


class HeadLatticeOptions(AttentionOptions):
    """The ``lattice`` options that place the heads on a lattice and say which pairs couple.

    Attributes:
        topology: head lattice topology (any of :data:`lotsim.lattice.TOPOLOGIES`).
        shape: grid shape; None -> the most square (rows, cols) with rows * cols = n_heads.
            Other topologies use n = n_heads unless a 1-D shape is given.
        periodic: periodic boundaries (a periodic square grid needs every side >= 3).
        file: edge-list / GraphML file for ``topology = "edgelist" | "graphml"``.
        coupling_range: ``all`` couples every pair of heads with W_hg = exp(-d_hg / ell_h) (so the
            learned lattice constant is an interaction range); ``neighbours`` masks W to lattice
            edges (on a regular grid ell then only rescales kappa).
    """

    topology: Topology = "square"
    shape: tuple[int, ...] | None = None
    periodic: bool = False
    file: str | None = None
    coupling_range: Literal["all", "neighbours"] = "all"


def most_square_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols = n, rows <= cols, as close to square as possible."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def build_head_lattice(n_heads: int, options: HeadLatticeOptions) -> Lattice:
    """The lattice the heads sit on.

    Args:
        n_heads: h, the number of nodes the lattice must have.
        options: its topology, shape, periodic and file (e.g. a
            :class:`~lotsim.model.lattice_attention.LatticeOptions`).

    Raises:
        ValueError: one line, when the lattice cannot be built or its node count != n_heads.
    """
    topology = options.topology
    kwargs: dict[str, Any] = {"periodic": options.periodic}
    if topology in ("edgelist", "graphml"):
        kwargs["path"] = options.file
    elif topology in GRID_TOPOLOGIES:
        kwargs["shape"] = options.shape or most_square_shape(n_heads)
    elif options.shape is not None:
        kwargs["shape"] = options.shape
    else:
        kwargs["n"] = n_heads
    try:
        lattice = build_lattice(topology, **kwargs)
    except ValueError as err:
        raise ValueError(f"head lattice ({topology}, n_heads={n_heads}): {err}") from None
    if lattice.n != n_heads:
        raise ValueError(f"the head lattice {lattice.name!r} has {lattice.n} nodes but n_heads={n_heads}; "
                         f"pick a topology/shape with exactly {n_heads} nodes")
    return lattice


def head_lattice_geometry(lattice: Lattice, coupling_range: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances, coupling mask and local averaging weights of a head lattice.

    Args:
        lattice: the head lattice (n nodes).
        coupling_range: ``all`` (every pair at finite distance couples) or ``neighbours`` (lattice
            edges only).

    Returns:
        (distances (n, n), zero where masked; mask (n, n) bool, [h, g] true when g drives h;
        local weights (n, n), row h = uniform over h and its lattice neighbours).
    """
    n = lattice.n
    distances = lattice.pairwise_distances()
    adjacency = lattice.adjacency().toarray() != 0  # [i, j]: j drives i
    mask = adjacency if coupling_range == "neighbours" else np.isfinite(distances) & ~np.eye(n, dtype=bool)
    local = adjacency | np.eye(n, dtype=bool)
    return np.where(mask, distances, 0.0), mask, local / local.sum(1, keepdims=True)


def local_order_parameter(theta: torch.Tensor, local_weights: torch.Tensor) -> torch.Tensor:
    """(b, t, h) |mean over h and its lattice neighbours of exp(i theta)|, with the local weights
    (h, h) of :func:`head_lattice_geometry` (differentiable, causal: per token)."""
    phasor = torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)  # (b, t, h, 2)
    return torch.linalg.vector_norm(torch.matmul(local_weights, phasor), dim=-1)


__all__ = ["GRID_TOPOLOGIES", "HeadLatticeOptions", "build_head_lattice", "head_lattice_geometry",
           "local_order_parameter", "most_square_shape"]
