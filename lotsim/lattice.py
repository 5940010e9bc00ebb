"""Lattice topologies for oscillator systems, built with networkx.

A :class:`Lattice` is an immutable, array-backed view of a graph that the integrators consume:
a directed edge list, edge weights, node positions and (optionally) a periodic box.

Direction convention (used everywhere in lotsim): ``A[i, j]`` is the influence of node ``j`` on
node ``i``. An edge ``u -> v`` of a directed graph means *u drives v*, so it is stored as
``sender=u, receiver=v`` and contributes ``A[v, u] = w``. An undirected edge is stored in both
directions. Self-loops are dropped (a phase does not couple to itself).

Legend: ``n`` nodes, ``e`` directed edges, ``d`` spatial dimension, ``k`` max in-degree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    import networkx as nx
    import scipy.sparse as sp

Topology = Literal[
    "ring",
    "chain",
    "square",
    "triangular",
    "hexagonal",
    "hypercubic",
    "complete",
    "small-world",
    "random-regular",
    "erdos-renyi",
    "edgelist",
    "graphml",
]
WeightKind = Literal["uniform", "exp", "power"]
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
WEIGHT_KINDS: tuple[str, ...] = get_args(WeightKind)
Normalization = Literal["mean-field", "degree", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
GRID_TOPOLOGIES: tuple[str, ...] = ("square", "triangular", "hexagonal", "hypercubic")
FILE_TOPOLOGIES: tuple[str, ...] = ("edgelist", "graphml")


@dataclass(frozen=True, eq=False)
class Lattice:
    """An oscillator graph as arrays.

    Attributes:
        name: human-readable description, e.g. ``"square 32x32 periodic"``.
        n: number of nodes.
        edges: (senders, receivers, weights): (e,) int64 ``j`` and ``i`` of each directed edge
            ``j -> i`` and (e,) float64 ``A[i, j]``. None for the complete graph, whose n(n-1)
            edges are implicit (uniform weight ``complete_weight``) and built only on request.
        positions: (n, d) float64 node coordinates (lattice units).
        box: (d,) periodic box lengths for minimum-image distances, or None (open boundaries).
        directed: whether the source graph was directed.
        complete: True for the complete graph (enables the O(N) mean-field path).
        shape: grid shape for lattices that have one (used by plots and defect analysis).
        topology: the topology name it was built from.
    """

    name: str
    n: int
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    positions: np.ndarray
    box: np.ndarray | None = None
    directed: bool = False
    complete: bool = False
    shape: tuple[int, ...] = ()
    topology: str = "custom"
    complete_weight: float = 1.0

    def edge_list(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(senders, receivers, weights), materialising the complete graph's edges if implicit."""
        if self.edges is not None:
            return self.edges
        i, j = np.nonzero(~np.eye(self.n, dtype=bool))
        return j.astype(np.int64), i.astype(np.int64), np.full(i.shape[0], self.complete_weight)

    @property
    def senders(self) -> np.ndarray:
        return self.edge_list()[0]

    @property
    def receivers(self) -> np.ndarray:
        return self.edge_list()[1]

    @property
    def weights(self) -> np.ndarray:
        return self.edge_list()[2]

    @property
    def num_edges(self) -> int:
        """Number of directed edges (an undirected edge counts twice)."""
        return self.n * (self.n - 1) if self.edges is None else int(self.edges[0].shape[0])

    def adjacency(self) -> sp.csr_array:
        """Sparse weighted adjacency, (n, n) CSR with ``A[i, j]`` = influence of j on i."""
        import scipy.sparse as sp

        return sp.csr_array(
            (self.weights, (self.receivers, self.senders)), shape=(self.n, self.n), dtype=np.float64
        )

    def in_degree(self) -> np.ndarray:
        """(n,) weighted in-degree ``k_i = sum_j A[i, j]``."""
        if self.edges is None:
            return np.full(self.n, (self.n - 1) * self.complete_weight)
        return np.bincount(self.receivers, weights=self.weights, minlength=self.n)

    def displacement(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """(..., d) minimum-image displacement from nodes ``src`` to nodes ``dst``."""
        delta = self.positions[dst] - self.positions[src]
        if self.box is not None:
            delta = delta - self.box * np.round(delta / self.box)
        return delta

    def edge_lengths(self) -> np.ndarray:
        """(e,) Euclidean (minimum-image) length of every directed edge."""
        return np.linalg.norm(self.displacement(self.senders, self.receivers), axis=-1)

    def pairwise_distances(self) -> np.ndarray:
        """(n, n) distances between all nodes: Euclidean with minimum image when positions are
        geometric, else shortest-path hop counts (for graphs with no geometry)."""
        if self.edges is None:
            return 1.0 - np.eye(self.n)
        if self.positions.shape[1] == 0:
            import networkx as nx

            lengths = dict(nx.all_pairs_shortest_path_length(self.to_networkx().to_undirected()))
            out = np.full((self.n, self.n), np.inf)
            for i, row in lengths.items():
                out[i, list(row)] = list(row.values())
            return out
        idx = np.arange(self.n)
        return np.linalg.norm(self.displacement(idx[:, None], idx[None, :]), axis=-1)

    def neighbour_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded in-neighbour table for fixed-degree lattices.

        Returns:
            (index (n, k) int64, weight (n, k) float64); padding points at the node itself with
            weight 0, so a gather-multiply-sum over the k axis equals the sparse product.
        """
        order = np.lexsort((self.senders, self.receivers))
        recv, send, w = self.receivers[order], self.senders[order], self.weights[order]
        counts = np.bincount(recv, minlength=self.n)
        k = int(counts.max()) if self.n else 0
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(recv.shape[0]) - start[recv]
        index = np.repeat(np.arange(self.n)[:, None], max(k, 1), axis=1)
        weight = np.zeros((self.n, max(k, 1)))
        index[recv, slot] = send
        weight[recv, slot] = w
        return index, weight

    def with_edge_weights(self, weights: np.ndarray) -> Lattice:
        """Copy with new (e,) edge weights on the same edges."""
        senders, receivers, _ = self.edge_list()
        return replace(self, edges=(senders, receivers, np.asarray(weights, dtype=np.float64)))

    def with_weights(
        self, kind: WeightKind = "uniform", lattice_constant: float = 1.0, exponent: float = 1.0
    ) -> Lattice:
        """Return a copy with distance-dependent edge weights.

        ``uniform``: w = 1; ``exp``: w = exp(-d / lattice_constant); ``power``: w = d ** -exponent.
        """
        if kind == "uniform":
            if self.edges is None:
                return replace(self, complete_weight=1.0)
            w = np.ones(self.num_edges)
        elif kind == "exp":
            if lattice_constant <= 0:
                raise ValueError(f"lattice_constant must be > 0, got {lattice_constant}")
            w = np.exp(-self.edge_lengths() / lattice_constant)
        elif kind == "power":
            d = self.edge_lengths()
            if np.any(d <= 0):
                raise ValueError("power-law weights need positive edge lengths (nodes share a position)")
            w = d**-exponent
        else:
            raise ValueError(f"unknown weight kind {kind!r}; allowed: {', '.join(WEIGHT_KINDS)}")
        return self.with_edge_weights(w)

    def with_range(self, coupling_range: float) -> Lattice:
        """Copy coupling every pair of nodes within (minimum-image) distance ``coupling_range``.

        Nonlocal coupling: with ``exp``/``power`` weights on top this gives the kernels of chimera
        states (Kuramoto-Battogtokh: exp(-d/l) over the whole ring) and of range-R lattices. Pairs come
        from a k-d tree (periodic boxes included), so no n x n matrix is built. The result is
        undirected with weight 1 (apply :meth:`with_weights` afterwards) and keeps the positions, box
        and grid shape.
        """
        from scipy.spatial import cKDTree

        if not coupling_range > 0:
            raise ValueError(f"coupling_range must be > 0 (lattice units), got {coupling_range}")
        if self.positions.shape[1] == 0:
            raise ValueError(f"coupling_range needs node positions; {self.name!r} has none (use ring, chain, "
                             "square, hypercubic, or open triangular/hexagonal lattices)")
        tree = cKDTree(self.positions, boxsize=self.box)
        pairs = tree.query_pairs(float(coupling_range) * (1 + 1e-12), output_type="ndarray").astype(np.int64)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # deterministic edge order
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        return replace(self, name=f"{self.name} range {coupling_range:g}", edges=(src, dst, np.ones(src.shape[0])),
                       directed=False, complete=False)

    def to_networkx(self) -> nx.DiGraph:
        """The lattice as a weighted networkx DiGraph with integer nodes (edge j -> i)."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(range(self.n))
        g.add_weighted_edges_from(zip(self.senders.tolist(), self.receivers.tolist(), self.weights.tolist()))
        return g


def from_networkx(
    graph: nx.Graph,
    *,
    name: str = "custom",
    positions: np.ndarray | None = None,
    box: np.ndarray | None = None,
    shape: tuple[int, ...] = (),
    topology: str = "custom",
    weight: str | None = "weight",
) -> Lattice:
    """Build a :class:`Lattice` from any networkx graph.

    Nodes are relabelled 0..n-1 in ``graph.nodes`` order. Positions come from the argument, from a
    node attribute ``pos``, or are empty (shape (n, 0): no geometry, distances are hop counts).
    Edge weights come from the ``weight`` attribute when present (default 1).
    """
    import networkx as nx

    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    n = len(nodes)
    if n == 0:
        raise ValueError("the graph has no nodes")
    edges = [(index[u], index[v], float(d.get(weight, 1.0)) if weight else 1.0)
             for u, v, d in graph.edges(data=True) if u != v]
    arr = np.array(edges, dtype=np.float64).reshape(-1, 3)
    src, dst, w = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]
    directed = graph.is_directed()
    if not directed:
        src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
    if positions is None:
        pos = nx.get_node_attributes(graph, "pos")
        positions = (np.array([pos[node] for node in nodes], dtype=np.float64)
                     if len(pos) == n else np.zeros((n, 0)))
    complete = (not directed) and src.shape[0] == n * (n - 1)
    return Lattice(
        name=name, n=n, edges=(src, dst, w), positions=np.asarray(positions, float),
        box=None if box is None else np.asarray(box, float), directed=directed, complete=complete,
        shape=tuple(shape), topology=topology,
    )


def _grid_positions(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))


def _need(value, what: str, topology: str):
    if value is None:
        raise ValueError(f"topology {topology!r} needs {what}")
    return value


def grid_shape(topology: str, n: int | None, shape: tuple[int, ...] | list[int] | None
               ) -> tuple[tuple[int, ...] | None, int | None]:
    """The (shape, n) a lattice is built with: a grid's shape (from ``n`` when it is a square number),
    or a 1-D ``shape`` turned into ``n`` for the other topologies.

    Raises:
        ValueError: with one line naming the bad value and what is allowed.
    """
    shape = tuple(int(s) for s in shape) if shape is not None else None
    if shape is not None and any(s < 1 for s in shape):
        raise ValueError(f"shape entries must be >= 1, got {list(shape)}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if topology in GRID_TOPOLOGIES:
        if shape is None:
            if n is None:
                raise ValueError(f"topology {topology!r} needs a shape (e.g. --shape 32x32) or --n")
            side = math.isqrt(n)
            if side * side != n or topology == "hexagonal":
                raise ValueError(f"topology {topology!r} needs --shape; n={n} is not a square number")
            shape = (side, side)
        if topology != "hypercubic" and len(shape) != 2:
            raise ValueError(f"topology {topology!r} needs a 2-D shape rows x cols, got {list(shape)}")
    elif shape is not None:
        if len(shape) != 1:
            raise ValueError(f"topology {topology!r} takes --n, not a {len(shape)}-D shape {list(shape)}")
        if n is not None and n != shape[0]:
            raise ValueError(f"shape {list(shape)} does not match n={n}")
        n = shape[0]
    return shape, n


def lattice_size(topology: str, *, n: int | None = None, shape: tuple[int, ...] | list[int] | None = None,
                 periodic: bool = True, weights: str = "uniform", k: int = 4, p: float = 0.1, degree: int = 3,
                 coupling_range: float | None = None, **_: object) -> tuple[int, int] | None:
    """(nodes, directed edges) that :func:`build_lattice` will produce, estimated in O(1) without
    building anything (exact for ring/chain/square/hypercubic/complete, close for the rest).

    Takes the keywords of :func:`build_lattice` (others are ignored). Returns None for graphs read from
    a file (their size is the file's). Used to refuse runs that cannot fit in memory before any work.
    """
    if topology in FILE_TOPOLOGIES:
        return None
    shape, n = grid_shape(topology, n, shape)
    if topology in GRID_TOPOLOGIES:
        if topology == "triangular":
            rows, cols = shape
            nodes = rows * ((cols + 1) // 2) if periodic else (rows + 1) * (cols // 2 + 1)
            per_node = 6
        elif topology == "hexagonal":
            rows, cols = shape
            nodes = 2 * rows * cols if periodic else 2 * (rows + 1) * (cols + 1) - 2
            per_node = 3
        else:
            nodes, per_node = math.prod(shape), 2 * len(shape)
        edges = nodes * per_node
        dims = 2 if topology != "hypercubic" else len(shape)
    else:
        nodes = int(n or 0)
        dims = 1
        edges = {"ring": 2 * nodes, "chain": 2 * nodes, "complete": nodes * (nodes - 1), "small-world": k * nodes,
                 "random-regular": degree * nodes, "erdos-renyi": round(p * nodes * (nodes - 1))}.get(topology, 0)
    if coupling_range is not None:
        # every node within distance R: the volume of a d-ball of radius R (lattice units), at most n - 1
        ball = math.pi ** (dims / 2) / math.gamma(dims / 2 + 1) * coupling_range**dims
        edges = nodes * min(nodes - 1, math.ceil(ball))
    elif topology == "complete" and weights == "uniform":
        edges = 0  # implicit: the mean-field path never builds them
    return nodes, edges


def build_lattice(
    topology: Topology,
    *,
    n: int | None = None,
    shape: tuple[int, ...] | list[int] | None = None,
    periodic: bool = True,
    weights: WeightKind = "uniform",
    lattice_constant: float = 1.0,
    exponent: float = 1.0,
    k: int = 4,
    p: float = 0.1,
    degree: int = 3,
    path: str | Path | None = None,
    directed: bool = False,
    seed: int = 0,
    coupling_range: float | None = None,
) -> Lattice:
    """Build a named lattice.

    Args:
        topology: one of :data:`TOPOLOGIES`.
        n: number of nodes (ring, chain, complete, random graphs); for grids, ``n`` must equal the
            product of ``shape`` when both are given.
        shape: grid shape: (rows, cols) for square/triangular/hexagonal (hexagonal counts hexagon
            rows/cols as networkx does), any length for hypercubic.
        periodic: periodic (torus) or open boundaries for ring/chain-like and grid lattices.
        weights, lattice_constant, exponent: edge weights, see :meth:`Lattice.with_weights`.
        k, p: small-world neighbours and rewiring probability; ``p`` is also the Erdos-Renyi edge
            probability.
        degree: random-regular degree.
        path: edge-list or GraphML file for ``edgelist`` / ``graphml``.
        directed: read an edge list as directed (``u v`` means u drives v).
        seed: seed for random graphs.
        coupling_range: couple every pair within this distance (lattice units, minimum image) instead
            of nearest neighbours only; None keeps the topology's own edges. See :meth:`Lattice.with_range`.

    Returns:
        The lattice, with positions and a periodic box where the topology has geometry.

    Raises:
        ValueError: with one line naming the bad value and what is allowed.
    """
    import networkx as nx

    shape, n = grid_shape(topology, n, shape)
    name_suffix = "periodic" if periodic else "open"
    if topology in ("ring", "chain"):
        n = _need(n, "--n", topology)
        is_ring = topology == "ring" or periodic and topology != "chain"
        if is_ring and n < 3:
            raise ValueError(f"a ring needs n >= 3, got n={n}")
        g = nx.cycle_graph(n) if is_ring else nx.path_graph(n)
        lat = from_networkx(g, name=f"{topology} n={n}", positions=np.arange(n, dtype=float)[:, None],
                            box=np.array([float(n)]) if is_ring else None, shape=(n,), topology=topology)
    elif topology == "square" or topology == "hypercubic":
        if periodic and any(s < 3 for s in shape):
            raise ValueError(f"a periodic {topology} lattice needs every side >= 3, got {list(shape)}")
        # grid_graph takes dims last-axis-first and yields node tuples in ``shape`` order
        g = nx.grid_graph(dim=list(reversed(shape)), periodic=periodic)
        g = nx.relabel_nodes(g, {node: int(np.ravel_multi_index(node, shape)) for node in g.nodes})
        g = sorted_graph(g)
        lat = from_networkx(g, name=f"{topology} {'x'.join(map(str, shape))} {name_suffix}",
                            positions=_grid_positions(shape).astype(float),
                            box=np.array(shape, float) if periodic else None, shape=shape, topology=topology)
    elif topology in ("triangular", "hexagonal"):
        rows, cols = shape
        g = _sheet_graph(topology, rows, cols, periodic)
        lat = from_networkx(g, name=f"{topology} {rows}x{cols} {name_suffix}", shape=(rows, cols),
                            topology=topology)
        if periodic:
            # networkx positions are those of the unwrapped sheet; wrapped edges would look long,
            # so distances on periodic tri/hex lattices use hop counts in lattice units instead.
            lat = replace(lat, positions=np.zeros((lat.n, 0)))
    elif topology == "complete":
        n = _need(n, "--n", topology)
        # edges stay implicit: the mean-field path never needs them (n = 10^4 would be 10^8 edges)
        lat = Lattice(name=f"complete n={n}", n=n, edges=None, positions=np.zeros((n, 0)), complete=True,
                      topology=topology, shape=(n,))
    elif topology == "small-world":
        n = _need(n, "--n", topology)
        if not 0 < k < n or k % 2:
            raise ValueError(f"small-world needs an even k with 0 < k < n, got k={k}, n={n}")
        g = nx.watts_strogatz_graph(n, k, p, seed=seed)
        lat = from_networkx(g, name=f"small-world n={n} k={k} p={p}", topology=topology)
    elif topology == "random-regular":
        n = _need(n, "--n", topology)
        if degree >= n or (n * degree) % 2:
            raise ValueError(f"random-regular needs degree < n and n*degree even, got degree={degree}, n={n}")
        g = nx.random_regular_graph(degree, n, seed=seed)
        lat = from_networkx(nx.Graph(sorted_graph(g)), name=f"random-regular n={n} d={degree}",
                            topology=topology)
    elif topology == "erdos-renyi":
        n = _need(n, "--n", topology)
        if not 0 <= p <= 1:
            raise ValueError(f"erdos-renyi needs 0 <= p <= 1, got p={p}")
        g = nx.gnp_random_graph(n, p, seed=seed, directed=directed)
        lat = from_networkx(g, name=f"erdos-renyi n={n} p={p}", topology=topology)
    elif topology in ("edgelist", "graphml"):
        path = Path(_need(path, "a file path (lattice.file)", topology))
        if not path.is_file():
            raise ValueError(f"lattice file {str(path)!r} does not exist")
        try:
            if topology == "edgelist":
                g = nx.read_edgelist(path, nodetype=int, data=(("weight", float),),
                                     create_using=nx.DiGraph if directed else nx.Graph)
                g = sorted_graph(g)
            else:
                g = nx.read_graphml(path)
        except Exception as err:  # networkx raises many kinds for malformed files
            raise ValueError(f"cannot read {topology} file {str(path)!r}: {err}") from None
        lat = from_networkx(g, name=f"{topology} {path.name}", topology=topology)
    else:
        raise ValueError(f"unknown topology {topology!r}; allowed: {', '.join(TOPOLOGIES)}")

    if n is not None and topology in GRID_TOPOLOGIES and lat.n != n:
        raise ValueError(f"shape {list(shape)} gives {lat.n} nodes, which does not match n={n}")
    if coupling_range is not None:
        lat = lat.with_range(coupling_range)
    return lat.with_weights(weights, lattice_constant, exponent) if weights != "uniform" else lat


def row_scale(normalization: Normalization, in_degree: np.ndarray) -> np.ndarray:
    """(n,) factor of each row of the coupling matrix ``W = row_scale[:, None] * A``.

    ``mean-field``: 1/N; ``degree``: 1/k_i with the weighted in-degree k_i (``in_degree``, (n,); rows
    of isolated nodes stay zero: they rotate freely); ``none``: 1.
    """
    n = in_degree.shape[0]
    if normalization == "mean-field":
        return np.full(n, 1.0 / n)
    if normalization == "degree":
        degree = np.asarray(in_degree, dtype=np.float64)
        return np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    if normalization == "none":
        return np.ones(n)
    raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")


def _sheet_graph(topology: str, rows: int, cols: int, periodic: bool) -> nx.Graph:
    """networkx's triangular or hexagonal lattice with its ``pos`` attributes, nodes in sorted order."""
    import networkx as nx

    builder = nx.triangular_lattice_graph if topology == "triangular" else nx.hexagonal_lattice_graph
    try:
        g = builder(rows, cols, periodic=periodic, with_positions=True)
    except nx.NetworkXError as err:
        raise ValueError(f"{topology} lattice {rows}x{cols} (periodic={periodic}): {err}") from None
    return nx.Graph(sorted_graph(g))


def sheet_positions(topology: str, shape: tuple[int, int], periodic: bool) -> np.ndarray:
    """(n, 2) positions of a triangular or hexagonal lattice's nodes on the unwrapped sheet, for drawing.

    A periodic lattice built by :func:`build_lattice` has no positions (its distances are hop counts);
    these are the ones networkx gives the same nodes, in the lattice's node order.
    """
    g = _sheet_graph(topology, *shape, periodic)
    return np.array([g.nodes[v]["pos"] for v in g.nodes], dtype=np.float64)


def sorted_graph(g: nx.Graph) -> nx.Graph:
    """Copy of ``g`` with nodes inserted in sorted order, so node numbering is deterministic."""
    out = g.__class__()
    out.add_nodes_from(sorted(g.nodes(data=True), key=lambda item: item[0]))
    out.add_edges_from(g.edges(data=True))
    return out
