"""The shared base of the head-phase attentions (``lattice``, ``pma``): one oscillator per head and
token, whose phase modulates that head's q.k scores.

Per token t and head h (what :mod:`lotsim.model.phase_state` is to ``torus`` and ``fsn``):

1. content phase ``theta0[t, h] = atan2(p1, p0)`` from the ``phase`` projection D -> 2h;
2. ``n_steps`` steps of a Kuramoto system over the heads through THE core
   (:func:`lotsim.model.phase.integrate`); each variant builds its own system (the head lattice,
   the context-coupled mean field), with all b * t tokens as replicas or its own layout;
3. query phases ``phi_t = theta_t + Omega_h t`` (:func:`lotsim.model.phase.advance`; the ``phases``
   intervention applies to phi);
4. the phase-modulated causal attention of :mod:`lotsim.model.phase`: one fused SDPA call, or with
   ``implementation="materialised"`` the explicit-scores oracle of :mod:`lotsim.model.oracles`.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import KuramotoSystem, order_parameter
from lotsim.model.attention import AttentionOptions, QKVAttention
from lotsim.model.interventions import apply_intervention
from lotsim.model.oracles import materialised_phase_attention
from lotsim.model.phase import (
    advance,
    content_phases,
    frequency_spectrum,
    fused_phase_attention,
    init_content_projection,
    integrate,
)


class HeadPhaseOptions(AttentionOptions):
    """Options shared by the head-phase variants (``lattice``, ``pma``).

    Attributes:
        n_steps: Kuramoto steps of the head oscillators per forward (0 = phases straight from content).
        dt: integrator step.
        method: euler | heun | rk4 (the simulator's integrators).
        omega_init: (low, high) of the uniform init of the intrinsic frequencies omega_h.
        implementation: ``fused`` (one SDPA call, O(T) memory) or ``materialised`` (explicit T x T
            scores; a test oracle, never for training).
    """

    n_steps: int = Field(default=2, ge=0, le=64)
    dt: float = Field(default=0.25, gt=0)
    method: Literal["euler", "heun", "rk4"] = "heun"
    omega_init: tuple[float, float] = (0.9, 1.1)
    implementation: Literal["fused", "materialised"] = "fused"


class HeadPhaseAttention(QKVAttention):
    """Shared plumbing of the head-phase variants: the ``phase`` projection (D -> 2h, no bias; created
    here, after ``qkv``/``out``), the initialisation of the frequencies, the phases of one forward
    (:meth:`head_phases`), the attention (:meth:`phase_attention`) and the shared telemetry fields."""

    def __init__(self, config, options: HeadPhaseOptions, layer: int = 0):
        super().__init__(config, options, layer)
        self.seq_len = config.seq_len
        self.phase = nn.Linear(self.d_model, 2 * self.n_heads, bias=False)

    @torch.no_grad()
    def init_head_phases(self, omega: torch.Tensor, sequence_frequency: torch.Tensor | None) -> None:
        """Phase projection ~ N(0, 1/D); omega ~ U(omega_init) and Omega = the frequency spectrum
        1 .. 1/seq_len rad per token, or, without a separate Omega (None: tied to omega), omega = the spectrum."""
        init_content_projection(self.phase)
        spread = frequency_spectrum(self.n_heads, self.seq_len, dtype=omega.dtype, device=omega.device)
        if sequence_frequency is None:
            omega.copy_(spread)
        else:
            omega.uniform_(*self.options.omega_init)
            sequence_frequency.copy_(spread)

    def head_phases(self, x: torch.Tensor, system: KuramotoSystem, sequence_frequency: torch.Tensor,
                    interventions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(theta0, theta, phi), each (b, t, h): content phases, after ``n_steps`` of ``system`` (whose
        node layout holds the trailing axes of (b, t, h)), and advanced by ``sequence_frequency``
        with the ``phases`` intervention applied."""
        o: HeadPhaseOptions = self.options
        theta0 = content_phases(self.phase, x, self.n_heads)
        theta = integrate(system, theta0, method=o.method, dt=o.dt, n_steps=o.n_steps)
        return theta0, theta, apply_intervention(interventions, "phases", advance(theta, sequence_frequency))

    def phase_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                        gain: torch.Tensor, score: str, **kwargs: Any) -> torch.Tensor:
        """:func:`~lotsim.model.phase.fused_phase_attention` (dropout in training), or its materialised
        oracle with ``implementation="materialised"``; ``kwargs``: ``key_phases``, ``temperature``."""
        if self.options.implementation == "materialised":
            return materialised_phase_attention(q, k, v, phases, gain, score, **kwargs)
        return fused_phase_attention(q, k, v, phases, gain, score, dropout_p=self.attention_dropout, **kwargs)

    def phase_telemetry(self, theta0: torch.Tensor, theta: torch.Tensor, phases: torch.Tensor) -> dict[str, Any]:
        """The :class:`~lotsim.model.attention.PhaseIntermediates` fields, with r across the heads of each token."""
        r, _ = order_parameter(theta)  # (b, t)
        return {"layer": self.layer, "content_phases": theta0, "theta": theta, "phases": phases,
                "order_parameter": r, "mean_order_parameter": r.mean()}


__all__ = ["HeadPhaseAttention", "HeadPhaseOptions"]
