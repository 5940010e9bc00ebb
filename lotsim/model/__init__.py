"""Lattice Oscillator Transformer models: one decoder-only trunk, attention variants by name.

Importing this package registers the built-in variants (``vanilla``, ``lattice``, and the other
oscillator attentions ``pma``, ``ssa``, ``torus``, ``fsn``; see docs/attentions.md).

Public API::

    ModelConfig, LOTModel, ModelOutput                      # trunk
    Attention, AttentionOptions, Intermediates, QKVAttention # base classes for variants
    PhaseIntermediates                                      # telemetry of variants with phases
    register_attention, get_attention, available_attentions # registry
    LatticeAttention, LatticeOptions, LatticeIntermediates  # the LOT variant
    count_parameters, parameter_counts, match_parameters, parameter_report
    head_lattice_system, write_simulation_inputs            # export to the simulator
    PMAAttention, SSAAttention, TorusAttention, FSNAttention # the other oscillator attentions
    intervene, intervention_sweep, parse_intervention_specs # interventions at inference
    fused_phase_attention, materialised_phase_attention     # the shared phase score and its oracle

Shared pieces of the variants: :mod:`lotsim.model.phase` (the phase toolbox),
:mod:`lotsim.model.oracles` (materialised references), :mod:`lotsim.model.interventions`, and the
bases :mod:`lotsim.model.head_phase` (``lattice``, ``pma``) and :mod:`lotsim.model.phase_state`
(``torus``, ``fsn``). The ``lattice`` variant's geometry is :mod:`lotsim.model.head_lattice`, its
sequence mode :mod:`lotsim.model.sequence_mode`.
"""

from __future__ import annotations

from lotsim.model.attention import (
    Attention,
    AttentionOptions,
    Intermediates,
    PhaseIntermediates,
    QKVAttention,
    available_attentions,
    get_attention,
    register_attention,
    unregister_attention,
)
from lotsim.model.config import ModelConfig
from lotsim.model.fsn import FSNAttention, FSNOptions
from lotsim.model.head_lattice import build_head_lattice
from lotsim.model.interventions import (
    intervene,
    intervention_names,
    intervention_sweep,
    parse_intervention_specs,
    resolve_interventions,
)
from lotsim.model.lattice_attention import LatticeAttention, LatticeIntermediates, LatticeOptions
from lotsim.model.oracles import materialised_phase_attention
from lotsim.model.parameters import count_parameters, match_parameters, parameter_counts, parameter_report
from lotsim.model.phase import fused_phase_attention
from lotsim.model.pma import PMAAttention, PMAIntermediates, PMAOptions
from lotsim.model.simulation import head_lattice_system, write_simulation_inputs
from lotsim.model.ssa import SSAAttention, SSAIntermediates, SSAOptions
from lotsim.model.torus import TorusAttention, TorusIntermediates, TorusOptions
from lotsim.model.transformer import LOTModel, ModelOutput
from lotsim.model.vanilla import VanillaAttention

__all__ = [
    "Attention",
    "AttentionOptions",
    "Intermediates",
    "PhaseIntermediates",
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
    "PMAAttention",
    "PMAIntermediates",
    "PMAOptions",
    "SSAAttention",
    "SSAIntermediates",
    "SSAOptions",
    "TorusAttention",
    "TorusIntermediates",
    "TorusOptions",
    "FSNAttention",
    "FSNOptions",
    "intervene",
    "intervention_names",
    "intervention_sweep",
    "parse_intervention_specs",
    "resolve_interventions",
]
