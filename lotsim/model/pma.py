"""``pma``: Phase-Modulated Attention (Vasquez 2026, "Entropy Regime Switching in Language Models via
Phase-Modulated Attention").

The published description gives (what is reconstructed and why: docs/attentions.md)::

    P[h,i,j] = cos(phi[h,i] - phi_pos[j])                  # phase coherence matrix
    P_eff    = lambda P + (1 - lambda)                       # residual gate, lambda init 0.1
    tau      = tau_base (1 + beta Var(P)) (1 + alpha (1 - R)) # adaptive temperature
    A[h]     = softmax((Q K^T / sqrt(d)) * P_eff / tau) V
    K = f(h_SSM)                                             # coupling from the context

and interventions overriding R, K, tau, lambda and the phases. Per token t and head h, in this
trunk (no SSM blocks; the context is the residual stream x_t):

1. content phases ``theta0[t,h] = atan2(p1, p0)`` from two projections of x_t;
2. the heads of each token are coupled Kuramoto oscillators with a context-derived coupling,
   integrated by THE core (a mean-field operator over heads), all b*t tokens as replicas::

       dtheta_h/ds = omega_h + K_{t,h} (1/H) sum_g sin(theta_g - theta_h),
       K_{t,h} = softplus(w_h . x_t + k_h)        # "K = f(context)", per token and head

3. query phases ``phi_t = theta_t + Omega_h t`` (a per-head frequency advance along the sequence);
   key phases ``psi_u = phi_u`` (``key_phases="oscillator"``) or the positional phase
   ``psi_u = Omega_h u`` (``key_phases="position"``);
4. **prefix statistics** (causal: over keys u <= t only, running sums, O(T)):
   ``R_t = |mean_{u<=t} exp(i phi_u)|`` (the head's order parameter over the prefix) and
   ``Var_t(P) = mean_{u<=t} P_tu^2 - (mean_{u<=t} P_tu)^2`` with ``P_tu = cos(phi_t - psi_u)``, from
   ``mean P = cos phi_t Cbar_1 + sin phi_t Sbar_1`` and ``mean P^2 = 1/2 + (cos 2phi_t Cbar_2 +
   sin 2phi_t Sbar_2)/2``, ``(Cbar_k, Sbar_k)`` the prefix means of ``(cos, sin)(k psi_u)``;
5. ``tau_t = tau_base (1 + beta Var_t) (1 + alpha (1 - R_t))`` per head and query row;
   ``tau_base, alpha, beta = softplus(.)`` (so tau > 0); lambda per head, learned, any sign;
6. scores ``(q.k / sqrt(d)) (lambda P_tu + 1 - lambda) / tau_t``, causal softmax, RoPE on q and k.

The phase projection, the dynamics' plumbing and the attention call are those of
:mod:`lotsim.model.head_phase` (shared with ``lattice``). The score is the multiplicative phase
score of :mod:`lotsim.model.phase` with key phases psi and tau folded into q (one SDPA call, 3d
columns, O(T) memory);
``implementation="materialised"`` computes P, Var and R with explicit (t, t) masks
(:mod:`lotsim.model.oracles`). ``gate = 0`` and ``temperature = 1`` give vanilla attention exactly.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import KuramotoSystem, MeanFieldOperator
from lotsim.model.attention import PhaseIntermediates, register_attention
from lotsim.model.head_phase import HeadPhaseAttention, HeadPhaseOptions
from lotsim.model.interventions import apply_intervention
from lotsim.model.oracles import materialised_prefix_statistics
from lotsim.model.phase import advance, inverse_softplus
from lotsim.model.rope import Rope


class PMAOptions(HeadPhaseOptions):
    """Options of the ``pma`` attention (besides :class:`~lotsim.model.head_phase.HeadPhaseOptions`:
    ``n_steps``, ``dt``, ``method``, ``omega_init``, ``implementation``).

    Attributes:
        key_phases: ``oscillator`` (psi = phi) or ``position`` (psi_u = Omega_h u, the published phi_pos).
        adaptive_temperature: tau from R and Var(P) (False: tau = tau_base, a learned per-head
            temperature; with gate 0 that is the ``no-oscillator`` ablation).
        gate_init: initial residual gate lambda (published: 0.1).
        temperature_init: initial tau_base (> 0).
        variance_weight_init: initial beta (> 0).
        order_weight_init: initial alpha (> 0).
        coupling_init: initial context coupling K (its bias; > 0).
    """

    key_phases: Literal["oscillator", "position"] = "oscillator"
    adaptive_temperature: bool = True
    gate_init: float = 0.1
    temperature_init: float = Field(default=1.0, gt=0)
    variance_weight_init: float = Field(default=0.1, gt=0)
    order_weight_init: float = Field(default=0.1, gt=0)
    coupling_init: float = Field(default=1.0, gt=0)


@dataclass
class PMAIntermediates(PhaseIntermediates):
    """Telemetry of one ``pma`` layer (tensors keep their graph; detach to log).

    Attributes:
        content_phases: (b, t, h) theta0.
        theta: (b, t, h) phases after the Kuramoto steps (the oscillators: node = head).
        phases: (b, t, h) query phases phi = theta + Omega t (or the override).
        order_parameter: (b, t) r = |mean_h exp(i theta)| across the heads of each token.
        mean_order_parameter: () mean of r.
        key_phases: (b, t, h) psi.
        coupling: (b, t, h) context coupling K.
        prefix_order_parameter: (b, t, h) R over the prefix (enters tau).
        coherence_variance: (b, t, h) Var(P) over the prefix of each query row.
        temperature: (b, t, h) tau.
        gate, omega, sequence_frequency: (h,).
    """

    key_phases: torch.Tensor
    coupling: torch.Tensor
    prefix_order_parameter: torch.Tensor
    coherence_variance: torch.Tensor
    temperature: torch.Tensor
    gate: torch.Tensor
    omega: torch.Tensor
    sequence_frequency: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalar summaries (floats) for logging."""
        return {
            "order_parameter": float(self.mean_order_parameter.detach()),
            "prefix_order_parameter": float(self.prefix_order_parameter.detach().mean()),
            "coherence_variance": float(self.coherence_variance.detach().mean()),
            "temperature": float(self.temperature.detach().mean()),
            "coupling": float(self.coupling.detach().mean()),
            "gate_abs": float(self.gate.detach().abs().mean()),
        }


def prefix_mean(x: torch.Tensor) -> torch.Tensor:
    """Running mean over the token axis 1: ``y[:, t] = mean_{u<=t} x[:, u]`` (exactly causal)."""
    count = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)
    return x.cumsum(1) / count.view(-1, *([1] * (x.dim() - 2)))


def prefix_statistics(phases: torch.Tensor, key_phases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R and Var(P) over the prefix of each query, in O(T) from running means.

    Args:
        phases: (b, t, h) query phases phi (also the population of R).
        key_phases: (b, t, h) psi.

    Returns:
        (R, Var) each (b, t, h).
    """
    c1, s1 = prefix_mean(torch.cos(phases)), prefix_mean(torch.sin(phases))
    r = torch.sqrt((c1 * c1 + s1 * s1).clamp_min(1e-30))
    feats = torch.stack([torch.cos(key_phases), torch.sin(key_phases), torch.cos(2 * key_phases),
                         torch.sin(2 * key_phases)], dim=-1)
    kc1, ks1, kc2, ks2 = prefix_mean(feats).unbind(-1)
    mean = torch.cos(phases) * kc1 + torch.sin(phases) * ks1
    mean_sq = 0.5 + 0.5 * (torch.cos(2 * phases) * kc2 + torch.sin(2 * phases) * ks2)
    return r, (mean_sq - mean * mean).clamp_min(0.0)


@register_attention("pma")
class PMAAttention(HeadPhaseAttention):
    """Phase-modulated attention (see the module docstring for the equations).

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``, and ``phase`` (D -> 2h)):
    ``coupling`` (D -> h, no bias) and ``coupling_bias`` (h,) for K, and (h,) each of ``omega``,
    ``sequence_frequency``, ``gate``, ``temperature_raw``, ``variance_weight_raw``, ``order_weight_raw``.

    Interventions (numbers/tensors broadcast to the quantity's shape, or callables of it):
    ``phases`` (phi, (b, t, h)), ``key_phases`` (psi), ``coupling`` (K, (b, t, h)), ``omega`` (h,),
    ``order_parameter`` (R, (b, t, h)), ``coherence_variance`` (Var(P), (b, t, h)), ``temperature``
    (tau, (b, t, h); replaces the adaptive formula), ``gate`` (lambda, (h,)).
    """

    Options = PMAOptions
    # (options, frozen parameter suffixes) per ablation, for `lotsim compare` arms ATTENTION:ABLATION
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "no-oscillator": {"options": {"gate_init": 0.0, "adaptive_temperature": False}, "freeze": ["gate"]},
        "frozen-phases": {"options": {}, "freeze": ["phase.weight", "omega", "sequence_frequency",
                                                    "coupling.weight", "coupling_bias"]},
        "no-coupling": {"options": {"n_steps": 0}, "freeze": ["omega", "coupling.weight", "coupling_bias"]},
    }
    intervention_names = ("phases", "key_phases", "coupling", "omega", "order_parameter",
                          "coherence_variance", "temperature", "gate")

    def __init__(self, config, options: PMAOptions, layer: int = 0):
        super().__init__(config, options, layer)
        h = self.n_heads
        self.coupling = nn.Linear(self.d_model, h, bias=False)
        self.coupling_bias = nn.Parameter(torch.empty(h))
        self.omega = nn.Parameter(torch.empty(h))
        self.sequence_frequency = nn.Parameter(torch.empty(h))
        self.gate = nn.Parameter(torch.empty(h))
        self.temperature_raw = nn.Parameter(torch.empty(h))
        self.variance_weight_raw = nn.Parameter(torch.empty(h))
        self.order_weight_raw = nn.Parameter(torch.empty(h))
        self.init_parameters(config.init_std)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """Phases and frequencies as the head-phase base; the coupling projection keeps the trunk's N(0, std)."""
        o: PMAOptions = self.options
        self.init_head_phases(self.omega, self.sequence_frequency)
        self.coupling_bias.fill_(inverse_softplus(o.coupling_init))
        self.gate.fill_(o.gate_init)
        self.temperature_raw.fill_(inverse_softplus(o.temperature_init))
        self.variance_weight_raw.fill_(inverse_softplus(o.variance_weight_init))
        self.order_weight_raw.fill_(inverse_softplus(o.order_weight_init))

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, PMAIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`PMAIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: PMAOptions = self.options
        b, t, _ = x.shape
        h = self.n_heads
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each
        coupling = apply_intervention(iv, "coupling", F.softplus(self.coupling(x) + self.coupling_bias))  # (b, t, h)
        omega = apply_intervention(iv, "omega", self.omega)
        # mean-field Kuramoto over the heads of each token, every token a replica
        system = KuramotoSystem(omega=omega, coupling=coupling.reshape(-1, h), operator=MeanFieldOperator(h, 1.0 / h))
        theta0, theta, phases = self.head_phases(x, system, self.sequence_frequency, iv)  # (b, t, h) each
        key_phases = phases if o.key_phases == "oscillator" else \
            advance(torch.zeros_like(theta), self.sequence_frequency)
        key_phases = apply_intervention(iv, "key_phases", key_phases)
        tau_base = F.softplus(self.temperature_raw)
        r = var = None
        if o.adaptive_temperature or return_intermediates:
            materialised = o.implementation == "materialised"
            r, var = (materialised_prefix_statistics if materialised else prefix_statistics)(phases, key_phases)
            r, var = apply_intervention(iv, "order_parameter", r), apply_intervention(iv, "coherence_variance", var)
        if o.adaptive_temperature:
            alpha, beta = F.softplus(self.order_weight_raw), F.softplus(self.variance_weight_raw)
            temperature = tau_base * (1 + beta * var) * (1 + alpha * (1 - r))
        else:
            temperature = tau_base.expand(b, t, -1)
        temperature = apply_intervention(iv, "temperature", temperature)
        gate = apply_intervention(iv, "gate", self.gate)
        y = self.phase_attention(q, k, v, phases, gate, "multiplicative", key_phases=key_phases,
                                 temperature=temperature)
        y = self.merge_heads(y)
        if not return_intermediates:
            return y, None
        return y, PMAIntermediates(
            **self.phase_telemetry(theta0, theta, phases), key_phases=key_phases, coupling=coupling,
            prefix_order_parameter=r, coherence_variance=var, temperature=temperature, gate=gate, omega=omega,
            sequence_frequency=self.sequence_frequency)

    def extra_repr(self) -> str:
        o: PMAOptions = self.options
        return (f"key_phases={o.key_phases}, n_steps={o.n_steps}, dt={o.dt}, method={o.method}, "
                f"{o.implementation}")


__all__ = ["PMAAttention", "PMAIntermediates", "PMAOptions", "prefix_mean", "prefix_statistics"]
