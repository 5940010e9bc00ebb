"""``torus``: Kuramoto attention on the torus (Nunley 2026, "Kuramoto Attention: Synchronizing
Self-Attention on the Torus", arXiv 2606.11585; what the source states and what is reconstructed:
docs/attentions.md).

The phase state, the gated cosine scores with rotary drift and the readout are those of
:mod:`lotsim.model.phase_state`. Per token t, head h and channel c:

1. content phases ``theta0[t,h,c]`` and scores ``s_h(t, u) = sum_c g_hc cos(a_tc - b_uc)``;
2. ``A = causal-softmax(s)`` (the adaptive, content-dependent coupling kernel);
3. Kuramoto dynamics with A as the coupling matrix, through THE core
   (:class:`~lotsim.dynamics.core.KuramotoSystem`, :func:`~lotsim.model.phase.integrate`)::

       dtheta_tc/ds = eta_hc sum_u A_tu sin(theta_uc - theta_tc)

   with the coupling ``eta`` learned per (h, c). The default, ``n_steps=1, dt=1, method="euler"``, is
   the single tangent update ``theta' = theta0 + eta sum_u A_tu sin(theta_u - theta0_t)``; more
   steps re-use the same kernel A with the moving phases as values;
4. readout ``y = W_out [cos theta', sin theta']`` (b, t, D).

**Fused formulation.** With the values ``v = [sin theta, cos theta]`` one causal SDPA call over the
score features returns ``(S_t, C_t) = sum_u A_tu (sin, cos) theta_u``, and
``sum_u A_tu sin(theta_u - theta_t) = S_t cos theta_t - C_t sin theta_t``: the core's
:func:`~lotsim.dynamics.core.coupling_term` computes exactly this once the coupling operator is the
attention (:class:`AttentionOperator`). O(T) memory, one SDPA call per drift evaluation.
``implementation="materialised"`` builds A explicitly (a test oracle).

No RoPE on q/k (the rotary drift replaces it), no qkv projection: parameters are those of
:class:`~lotsim.model.phase_state.PhaseStateAttention` and ``coupling`` (h, m). Gain 0 does not
give vanilla here (there is no dot-product path); ``coupling = 0`` switches all token-token
interaction off.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``m`` angles per head, ``d`` head dim, ``D`` width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import CouplingOperator, KuramotoSystem
from lotsim.model.attention import register_attention
from lotsim.model.interventions import apply_intervention
from lotsim.model.phase import causal_attention, causal_softmax, integrate
from lotsim.model.phase_state import PhaseStateAttention, PhaseStateOptions, TorusIntermediates
from lotsim.model.rope import Rope


@dataclass(frozen=True)
class AttentionOperator(CouplingOperator):
    """Causal softmax attention as a coupling operator of the core, over a (token x channel) state.

    Node index = u * m + c (token u, channel c); replicas = (batch, head). ``aggregate(x)[f, r, t*m+c]
    = sum_u A_tu x[f, r, u*m+c]``: channel c of token t receives from channel c of every token u <= t,
    with the head's attention weights A (the same for every channel and feature plane f).

    Attributes:
        query, key: (b, h, t, e) score features (the fused path: one SDPA call per aggregate).
        channels: m.
        weights: (b, h, t, t) explicit A instead (the materialised reference), or None.
        dropout_p: attention dropout of the fused path.
    """

    query: torch.Tensor
    key: torch.Tensor
    channels: int
    weights: torch.Tensor | None = None
    dropout_p: float = 0.0
    # the first aggregate's output as (b, h, t, f*m): every integrator evaluates the drift at the initial
    # state first, so it is sum_u A_tu (sin, cos) theta0_u, the circular mean ``readout="mean"`` reads out
    first: list = field(default_factory=list, compare=False, repr=False)

    @property
    def n(self) -> int:
        return self.query.shape[2] * self.channels

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(f, b*h, t*m) -> (f, b*h, t*m)."""
        f = x.shape[0]
        b, h, t, _ = self.query.shape
        m = self.channels
        v = x.reshape(f, b, h, t, m).permute(1, 2, 3, 0, 4).reshape(b, h, t, f * m)  # values (f m) per token
        if self.weights is not None:
            out = self.weights @ v
        else:
            out = causal_attention(self.query, self.key, v, scale=1.0, dropout_p=self.dropout_p)
        if not self.first:
            self.first.append(out)
        return out.reshape(b, h, t, f, m).permute(3, 0, 1, 2, 4).reshape(x.shape)

    def to(self, device=None, dtype=None):
        def move(w):
            return None if w is None else w.to(device=device, dtype=dtype)
        return AttentionOperator(move(self.query), move(self.key), self.channels, move(self.weights),
                                 self.dropout_p)


class TorusOptions(PhaseStateOptions):
    """Options of the ``torus`` attention (besides :class:`~lotsim.model.phase_state.PhaseStateOptions`).

    Attributes:
        n_steps: Kuramoto steps per layer through the core (1 = the paper's single update).
        dt: step of the integrator.
        method: euler | heun | rk4.
        coupling_init: initial coupling eta.
    """

    n_steps: int = Field(default=1, ge=0, le=64)
    dt: float = Field(default=1.0, gt=0)
    method: Literal["euler", "heun", "rk4"] = "euler"
    coupling_init: float = 1.0


@register_attention("torus")
class TorusAttention(PhaseStateAttention):
    """Kuramoto attention on the torus (see the module docstring for the equations).

    Interventions: ``phases`` (theta0, (b, t, h, m)), ``coupling`` (eta), ``gate`` (g), ``rotary_rate``
    (rho), each (h, m) — numbers or tensors broadcast to the quantity's shape, or callables of it.
    """

    Options = TorusOptions
    # (options, frozen parameter suffixes) per ablation, for `lotsim compare` arms ATTENTION:ABLATION;
    # the oscillators are the whole layer, so there is no "no-oscillator" arm
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "no-coupling": {"options": {"coupling_init": 0.0}, "freeze": ["coupling"]},
        "frozen-phases": {"options": {}, "freeze": ["phase.weight"]},
    }
    intervention_names = ("phases", "coupling", "gate", "rotary_rate")

    def __init__(self, config, options: TorusOptions, layer: int = 0):
        super().__init__(config, options, layer)
        self.coupling = nn.Parameter(torch.empty(self.n_heads, self.angles))
        self.init_parameters(config.init_std)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        super().init_parameters(std)
        self.coupling.fill_(self.options.coupling_init)

    def attention_operator(self, x: torch.Tensor, theta0: torch.Tensor, gate: torch.Tensor, rate: torch.Tensor
                           ) -> AttentionOperator:
        """The causal attention of the score phases as a coupling operator over (token x channel)."""
        b, t, h, m = theta0.shape
        if self.options.implementation == "materialised":
            weights = causal_softmax(self.score_weights(x, theta0, gate, rate))
            empty = theta0.new_zeros(b, h, t, 1)
            return AttentionOperator(empty, empty, m, weights=weights)
        q2, k2 = self.score_features(x, theta0, gate, rate)
        return AttentionOperator(q2, k2, m, dropout_p=self.attention_dropout)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, TorusIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`TorusIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: TorusOptions = self.options
        theta0 = self.initial_phases(x, iv)  # (b, t, h, m)
        gate, rate = self.score_parameters(iv)
        coupling = apply_intervention(iv, "coupling", self.coupling)  # (h, m)
        b, t, h, m = theta0.shape
        operator = self.attention_operator(x, theta0, gate, rate)
        eta = coupling[None, :, None, :].expand(b, h, t, m).reshape(b * h, t * m)
        system = KuramotoSystem(omega=theta0.new_zeros(()), coupling=eta, operator=operator)
        state0 = theta0.transpose(1, 2).reshape(b * h, t * m)  # b t h m -> (b h) (t m)
        theta = integrate(system, state0, method=o.method, dt=o.dt, n_steps=o.n_steps)
        theta = theta.reshape(b, h, t, m).transpose(1, 2)  # -> b t h m
        mean = None
        if o.readout == "mean":  # sum_u A_tu [cos, sin] theta0_u, channel by channel: the drift's first aggregate
            if not operator.first:  # n_steps = 0: no drift was evaluated
                operator.aggregate(torch.stack([torch.sin(state0), torch.cos(state0)]))
            sin_cos = operator.first[0]  # (b, h, t, 2m): (S, C)
            mean = torch.cat([sin_cos[..., m:], sin_cos[..., :m]], -1)  # (C, S)
        y = self.readout(theta, mean)
        if not return_intermediates:
            return y, None
        return y, self.telemetry(theta0, theta, coupling, gate, rate)

    def extra_repr(self) -> str:
        o: TorusOptions = self.options
        return (f"angles={self.angles}, n_steps={o.n_steps}, dt={o.dt}, method={o.method}, score={o.score}, "
                f"readout={o.readout}, {o.implementation}")


__all__ = ["AttentionOperator", "TorusAttention", "TorusIntermediates", "TorusOptions"]
