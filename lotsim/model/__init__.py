"""Lattice Oscillator Transformer models: one decoder-only trunk, attention variants by name.

Importing this package registers the built-in variants (``vanilla``, ``lattice``).

Public API::

    ModelConfig, LOTModel, ModelOutput                      # trunk
    Attention, AttentionOptions, Intermediates, QKVAttention # base classes for variants
    register_attention, get_attention, available_attentions # registry
    LatticeAttention, LatticeOptions, LatticeIntermediates  # the LOT variant
    count_parameters, parameter_counts, match_parameters, parameter_report
    head_lattice_system, write_simulation_inputs            # export to the simulator
"""

from __future__ import annotations

from lotsim.model.attention import (
    Attention,
    AttentionOptions,
    Intermediates,
    QKVAttention,
    available_attentions,
    get_attention,
    register_attention,
    unregister_attention,
)
from lotsim.model.config import ModelConfig
from lotsim.model.lattice_attention import (
    LatticeAttention,
    LatticeIntermediates,
    LatticeOptions,
    build_head_lattice,
    fused_phase_attention,
    materialised_phase_attention,
)
from lotsim.model.parameters import count_parameters, match_parameters, parameter_counts, parameter_report
from lotsim.model.simulation import head_lattice_system, write_simulation_inputs
from lotsim.model.transformer import LOTModel, ModelOutput
from lotsim.model.vanilla import VanillaAttention

__all__ = [
    "Attention",
    "AttentionOptions",
    "Intermediates",
    "QKVAttention",
    "available_attentions",
    "get_attention",
    "register_attention",
    "unregister_attention",
    "VanillaAttention",
    "LatticeAttention",
    "LatticeIntermediates",
    "LatticeOptions",
    "build_head_lattice",
    "fused_phase_attention",
    "materialised_phase_attention",
    "ModelConfig",
    "count_parameters",
    "match_parameters",
    "parameter_counts",
    "parameter_report",
    "head_lattice_system",
    "write_simulation_inputs",
    "LOTModel",
    "ModelOutput",
]
