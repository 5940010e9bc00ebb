"""Lattices: node/edge counts and degrees against networkx, direction convention, weights, tables."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from lotsim.lattice import build_lattice, from_networkx


def _undirected_edges(lat):
    return lat.num_edges // 2


@pytest.mark.parametrize(
    ("topology", "kwargs", "reference"),
    [
        ("ring", {"n": 12}, nx.cycle_graph(12)),
        ("chain", {"n": 12}, nx.path_graph(12)),
        ("square", {"shape": (5, 7)}, nx.grid_2d_graph(5, 7, periodic=True)),
        ("square", {"shape": (5, 7), "periodic": False}, nx.grid_2d_graph(5, 7)),
        ("triangular", {"shape": (4, 6)}, nx.triangular_lattice_graph(4, 6, periodic=True)),
        ("triangular", {"shape": (3, 4), "periodic": False}, nx.triangular_lattice_graph(3, 4)),
        ("hexagonal", {"shape": (4, 6)}, nx.hexagonal_lattice_graph(4, 6, periodic=True)),
        ("hexagonal", {"shape": (3, 4), "periodic": False}, nx.hexagonal_lattice_graph(3, 4)),
        ("hypercubic", {"shape": (3, 4, 5)}, nx.grid_graph(dim=[5, 4, 3], periodic=True)),
        ("hypercubic", {"shape": (3, 4, 5), "periodic": False}, nx.grid_graph(dim=[5, 4, 3])),
        ("complete", {"n": 9}, nx.complete_graph(9)),
        ("small-world", {"n": 30, "k": 4, "p": 0.2, "seed": 3}, nx.watts_strogatz_graph(30, 4, 0.2, seed=3)),
        ("random-regular", {"n": 20, "degree": 3, "seed": 1}, nx.random_regular_graph(3, 20, seed=1)),
        ("erdos-renyi", {"n": 30, "p": 0.2, "seed": 2}, nx.gnp_random_graph(30, 0.2, seed=2)),
    ],
)
def test_counts_and_degrees_match_networkx(topology, kwargs, reference):
    lat = build_lattice(topology, **kwargs)
    assert lat.n == reference.number_of_nodes()
    assert _undirected_edges(lat) == reference.number_of_edges()
    degrees = np.bincount(lat.receivers, minlength=lat.n)
    assert sorted(degrees.tolist()) == sorted(d for _, d in reference.degree())
    assert lat.complete == (topology == "complete")


def test_grid_numbering_is_row_major_and_periodic_distances_use_minimum_image():
    lat = build_lattice("square", shape=(4, 6))
    assert np.array_equal(lat.positions[7], [1, 1])  # node 7 = row 1, col 1
    assert np.allclose(lat.edge_lengths(), 1.0)  # wrapped edges are unit length too
    dist = lat.pairwise_distances()
    assert dist[0, 5] == pytest.approx(1.0)  # (0,0)-(0,5) wrap around a 6-wide torus
    open_lat = build_lattice("square", shape=(4, 6), periodic=False)
    assert open_lat.pairwise_distances()[0, 5] == pytest.approx(5.0)


def test_direction_convention_on_a_directed_graph():
    g = nx.DiGraph()
    g.add_edge(0, 1, weight=2.0)  # 0 drives 1
    lat = from_networkx(g)
    a = lat.adjacency().toarray()
    assert a[1, 0] == 2.0 and a[0, 1] == 0.0  # A[i, j]: influence of j on i
    assert lat.in_degree().tolist() == [0.0, 2.0]


def test_edgelist_file_directed_and_weighted(tmp_path):
    path = tmp_path / "edges.txt"
    path.write_text("0 1 0.5\n1 2 1.5\n")
    lat = build_lattice("edgelist", path=path, directed=True)
    a = lat.adjacency().toarray()
    assert a[1, 0] == 0.5 and a[2, 1] == 1.5 and a.sum() == 2.0


def test_graphml_round_trip(tmp_path):
    path = tmp_path / "g.graphml"
    nx.write_graphml(nx.cycle_graph(6), path)
    lat = build_lattice("graphml", path=path)
    assert lat.n == 6 and lat.num_edges == 12


def test_weights_from_distances():
    lat = build_lattice("square", shape=(3, 3), periodic=False, weights="exp", lattice_constant=2.0)
    assert np.allclose(lat.weights, np.exp(-0.5))
    hexa = build_lattice("hexagonal", shape=(2, 2), periodic=False, weights="power", exponent=2.0)
    assert np.allclose(hexa.weights, 1.0)  # unit bond length


def test_neighbour_table_equals_adjacency():
    lat = build_lattice("small-world", n=40, k=4, p=0.3, seed=0).with_weights("uniform")
    index, weight = lat.neighbour_table()
    dense = np.zeros((lat.n, lat.n))
    np.add.at(dense, (np.repeat(np.arange(lat.n), index.shape[1]), index.ravel()), weight.ravel())
    assert np.allclose(dense, lat.adjacency().toarray())


@pytest.mark.parametrize(
    ("topology", "kwargs", "message"),
    [
        ("square", {"shape": (4, 4), "n": 10}, "does not match"),
        ("square", {"n": 10}, "not a square number"),
        ("ring", {"n": 2}, "n >= 3"),
        ("ring", {}, "needs --n"),
        ("hexagonal", {"n": 16}, "needs --shape"),
        ("random-regular", {"n": 5, "degree": 3}, "even"),
        ("edgelist", {"path": "/nonexistent/edges.txt"}, "does not exist"),
        ("nonsense", {"n": 3}, "allowed"),
    ],
)
def test_bad_lattices_raise_one_line_errors(topology, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_lattice(topology, **kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- nonlocal coupling


def _degrees(lattice):
    return np.bincount(lattice.receivers, minlength=lattice.n)


def test_coupling_range_on_rings_chains_and_grids():
    ring = build_lattice("ring", n=20, coupling_range=3)
    assert ring.num_edges == 20 * 6 and np.all(_degrees(ring) == 6) and ring.name == "ring n=20 range 3"
    chain = build_lattice("chain", n=10, coupling_range=2)  # open ends have fewer neighbours
    assert list(_degrees(chain)) == [2, 3, 4, 4, 4, 4, 4, 4, 3, 2]
    moore = build_lattice("square", shape=(10, 10), coupling_range=2**0.5)  # the diagonal is included
    assert np.all(_degrees(moore) == 8)
    assert np.all(_degrees(build_lattice("square", shape=(10, 10), coupling_range=1.0)) == 4)
    cube = build_lattice("hypercubic", shape=(5, 5, 5), coupling_range=1.0)
    assert np.all(_degrees(cube) == 6)
    # every pair of a ring, weighted exp(-d/l) with the minimum-image distance
    every = build_lattice("ring", n=9, coupling_range=100, weights="exp", lattice_constant=2.0)
    assert every.num_edges == 9 * 8 and not every.complete
    dense = every.adjacency().toarray()
    d = np.abs(np.arange(9)[:, None] - np.arange(9)[None, :])
    expected = np.exp(-np.minimum(d, 9 - d) / 2.0) * (1 - np.eye(9))
    assert np.allclose(dense, expected, rtol=0, atol=1e-15)


def test_coupling_range_matches_a_brute_force_pair_search():
    lattice = build_lattice("square", shape=(7, 9), periodic=True, coupling_range=2.5)
    distances = build_lattice("square", shape=(7, 9)).pairwise_distances()
    expected = (distances <= 2.5) & ~np.eye(63, dtype=bool)
    assert np.array_equal(lattice.adjacency().toarray() > 0, expected)


@pytest.mark.parametrize(("topology", "kwargs", "message"), [
    ("complete", {"n": 10}, "needs node positions"),
    ("small-world", {"n": 10, "k": 2}, "needs node positions"),
    ("ring", {"n": 10, "coupling_range": -1.0}, "must be > 0"),
])
def test_coupling_range_errors(topology, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lattice(topology, **{"coupling_range": 2.0, **kwargs})
