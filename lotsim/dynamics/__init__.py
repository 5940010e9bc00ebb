"""Oscillator dynamics: the one Kuramoto core used by the simulator and by the attention model.

Backends share the ``(init_fn, step_fn)`` interface of :func:`kuramoto_integrator`; ``torch`` is the
reference (CPU and CUDA).
"""

from lotsim.dynamics.backends import BACKENDS, BackendUnavailable, make_integrator
from lotsim.dynamics.core import (
    CouplingOperator,
    DenseOperator,
    Integrator,
    KuramotoSystem,
    MeanFieldOperator,
    NeighbourOperator,
    OscillatorState,
    SparseOperator,
    build_operator,
    coupling_term,
    drift,
    kuramoto_integrator,
    normalized_adjacency,
    order_parameter,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "make_integrator",
    "CouplingOperator",
    "DenseOperator",
    "Integrator",
    "KuramotoSystem",
    "MeanFieldOperator",
    "NeighbourOperator",
    "OscillatorState",
    "SparseOperator",
    "build_operator",
    "coupling_term",
    "drift",
    "kuramoto_integrator",
    "normalized_adjacency",
    "order_parameter",
]
