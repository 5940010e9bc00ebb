"""Where the ``lattice`` attention's oscillators sit and how they couple.

* :func:`build_head_lattice`: the lattice of the heads of one layer (:func:`lotsim.lattice.build_lattice`,
  the simulator's lattices), and :func:`head_lattice_geometry`, the distances and masks its coupling
  weights ``W_hg = exp(-d_hg / ell_h)`` and its local order parameter use.
* The sequence mode (``dynamics="sequence"``): the token index as a second lattice dimension.
  Each oscillator is also driven by the exponentially decayed mean of the same head's phasors at
  strictly earlier tokens (:func:`causal_decayed_mean`, a log2(T)-depth doubling scan: no Python
  loop over tokens, exactly causal). :class:`SpaceTimeOperator` is that coupling as an operator of
  the Kuramoto core, so the sequence mode runs through the same integrator as the simulator.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads = ``n`` lattice nodes, ``c`` feature channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lotsim.dynamics.core import CouplingOperator
from lotsim.lattice import Lattice, build_lattice

GRID_TOPOLOGIES = ("square", "triangular", "hexagonal", "hypercubic")


def most_square_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols = n, rows <= cols, as close to square as possible."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def build_head_lattice(n_heads: int, options: Any) -> Lattice:
    """The lattice the heads sit on.

    Args:
        n_heads: h, the number of nodes the lattice must have.
        options: a :class:`~lotsim.model.lattice_attention.LatticeOptions` (topology, shape,
            periodic, file).

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


def causal_decayed_mean(x: torch.Tensor, decay: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Exponentially decayed mean over strictly earlier tokens.

    ``y[:, t] = (1 - g) * sum_{u < t} g ** (t - 1 - u) * x[:, u]`` with ``g = decay`` per head;
    computed by a doubling (Hillis-Steele) scan in ceil(log2 max_len) shift-and-add rounds, which
    only ever reads earlier positions (exactly causal, no loop over tokens). The round count
    depends on ``max_len`` only, not on the actual length, so an exported graph (ONNX, torch.export)
    with a dynamic sequence length is right for every length up to ``max_len``.

    Args:
        x: (b, t, h, c).
        decay: (h,) in [0, 1).
        max_len: longest sequence the graph must handle (default: t).

    Returns:
        (b, t, h, c).
    """
    t = x.shape[1]
    g = decay[:, None]  # (h, 1), g ** shift
    z = x  # inclusive scan z_t = sum_{k < shift} g^k x_{t-k}
    for r in range(math.ceil(math.log2(max(max_len or t, 2)))):
        shift = 2**r
        z = z + g * F.pad(z, (0, 0, 0, 0, shift, 0))[:, :t]  # z_t += g^shift z_{t-shift}
        g = g * g
    return (1 - decay[:, None]) * F.pad(z, (0, 0, 0, 0, 1, 0))[:, :t]  # exclusive: strictly past


@dataclass(frozen=True)
class SpaceTimeOperator(CouplingOperator):
    """Coupling on the (token x head) space-time lattice for ``dynamics="sequence"``.

    Node index = t * h_count + h. ``aggregate`` = head-lattice coupling within each token plus the
    causal decayed mean of the same head over earlier tokens; both couplings are folded in, so
    the system's ``coupling`` is 1.

    Attributes:
        head_weight: (h, h) kappa_h W_hg.
        sequence_weight: (h,) coupling along the sequence.
        decay: (h,) exp(-1 / sequence_length).
        tokens: t.
        max_tokens: the model's seq_len (fixes the scan depth, see :func:`causal_decayed_mean`).
    """

    head_weight: torch.Tensor
    sequence_weight: torch.Tensor
    decay: torch.Tensor
    tokens: int
    max_tokens: int | None = None

    @property
    def n(self) -> int:
        return self.tokens * self.head_weight.shape[-1]

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(b, t * h, c) -> (b, t * h, c)."""
        b, n, c = x.shape
        x4 = x.reshape(b, self.tokens, -1, c)  # b (t h) c -> b t h c
        past = causal_decayed_mean(x4, self.decay, self.max_tokens)
        out = torch.matmul(self.head_weight, x4) + self.sequence_weight[:, None] * past
        return out.reshape(b, n, c)

    def to(self, device=None, dtype=None):
        return SpaceTimeOperator(*(w.to(device=device, dtype=dtype) for w in
                                   (self.head_weight, self.sequence_weight, self.decay)),
                                 self.tokens, self.max_tokens)


__all__ = [
    "GRID_TOPOLOGIES",
    "SpaceTimeOperator",
    "build_head_lattice",
    "causal_decayed_mean",
    "head_lattice_geometry",
    "most_square_shape",
]
