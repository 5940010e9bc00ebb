"""``pma``: Phase-Modulated Attention (Vasquez 2026, "Entropy Regime Switching in Language Models via
Phase-Modulated Attention"; templetwo/phase-modulated-attention).

Provenance: the repository's README only (``../seeds/pma-phase-modulated-attention.md``;
``design/oscillator-attention-notes.md`` §1.6) — the code could not be fetched. The README gives::

    P[h,i,j] = cos(phi[h,i] - phi_pos[j])                  # phase coherence matrix
    P_eff    = lambda P + (1 - lambda)                       # residual gate, lambda init 0.1
    tau      = tau_base (1 + beta Var(P)) (1 + alpha (1 - R)) # adaptive temperature
    A[h]     = softmax((Q K^T / sqrt(d)) * P_eff / tau) V
    K = f(h_SSM)                                             # coupling from the context

and interventions overriding R, K, tau, lambda and the phases. Reconstructed here (the README does
not say): which oscillators, their ODE, what Var and R run over, and the shapes of tau.

Per token t and head h, in this trunk (no SSM blocks; the context is the residual stream x_t,
which carries the earlier layers' attention):

1. content phases ``theta0[t,h] = atan2(p1, p0)`` from two projections of x_t;
2. the heads of each token are coupled Kuramoto oscillators with a context-derived coupling,
   integrated by THE core (:class:`~lotsim.dynamics.core.KuramotoSystem` with a mean-field
   operator over heads, :func:`~lotsim.dynamics.core.kuramoto_integrator`), all b*t tokens as
   replicas::

       dtheta_h/ds = omega_h + K_{t,h} (1/H) sum_g sin(theta_g - theta_h),
       K_{t,h} = softplus(w_h . x_t + k_h)        # "K = f(context)", per token and head

3. query phases ``phi_t = theta_t + Omega_h t`` (a per-head frequency advance along the sequence);
   key phases ``psi_u = phi_u`` (``key_phases="oscillator"``) or the README's positional phase
   ``psi_u = Omega_h u`` (``key_phases="position"``);
4. **prefix statistics** (causal: over keys u <= t only, running sums, O(T)):
   ``R_t = |mean_{u<=t} exp(i phi_u)|`` (the head's order parameter over the prefix) and
   ``Var_t(P) = mean_{u<=t} P_tu^2 - (mean_{u<=t} P_tu)^2`` with ``P_tu = cos(phi_t - psi_u)``, from
   ``mean P = cos phi_t Cbar_1 + sin phi_t Sbar_1`` and ``mean P^2 = 1/2 + (cos 2phi_t Cbar_2 +
   sin 2phi_t Sbar_2)/2``, ``(Cbar_k, Sbar_k)`` the prefix means of ``(cos, sin)(k psi_u)``;
5. ``tau_t = tau_base (1 + beta Var_t) (1 + alpha (1 - R_t))`` per head and query row;
   ``tau_base, alpha, beta = softplus(.)`` (so tau > 0); lambda per head, learned, any sign;
6. scores ``(q.k / sqrt(d)) (lambda P_tu + 1 - lambda) / tau_t``, causal softmax, RoPE on q and k.

**Fused formulation** (one SDPA call, 3d columns, O(T) memory):
``q' = [(1 - lambda) q, lambda q cos phi, lambda q sin phi] / tau``,
``k' = [k, k cos psi, k sin psi]``, scale 1/sqrt(d): ``q'.k'/sqrt(d)`` is the score above (the signed
gate sits on the query side only, so any lambda works; tau per query row folds into q).
``implementation="materialised"`` computes P, Var, R with explicit (t, t) masks (a test oracle).
``gate = 0`` and ``temperature = 1`` give vanilla attention exactly (tested).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import KuramotoSystem, MeanFieldOperator, kuramoto_integrator, order_parameter
from lotsim.model.attention import AttentionOptions, Intermediates, QKVAttention, register_attention
from lotsim.model.interventions import override
from lotsim.model.rope import Rope
from lotsim.model.torus import inverse_softplus


class PMAOptions(AttentionOptions):
    """Options of the ``pma`` attention.

    Attributes:
        n_steps: Kuramoto steps of the head oscillators per forward (0 = content phases).
        dt: integrator step.
        method: euler | heun | rk4.
        key_phases: ``oscillator`` (psi = phi) or ``position`` (psi_u = Omega_h u, the README's phi_pos).
        adaptive_temperature: tau from R and Var(P) (False: tau = tau_base, a learned per-head
            temperature; with gate 0 that is the ``no-oscillator`` ablation).
        gate_init: initial residual gate lambda (README: 0.1).
        temperature_init: initial tau_base (> 0).
        variance_weight_init: initial beta (> 0).
        order_weight_init: initial alpha (> 0).
        coupling_init: initial context coupling K (its bias; > 0).
        omega_init: (low, high) of the uniform init of the intrinsic frequencies omega_h.
        implementation: ``fused`` (one SDPA call) or ``materialised`` (explicit; test oracle).
    """

    n_steps: int = Field(default=2, ge=0, le=64)
    dt: float = Field(default=0.25, gt=0)
    method: Literal["euler", "heun", "rk4"] = "heun"
    key_phases: Literal["oscillator", "position"] = "oscillator"
    adaptive_temperature: bool = True
    gate_init: float = 0.1
    temperature_init: float = Field(default=1.0, gt=0)
    variance_weight_init: float = Field(default=0.1, gt=0)
    order_weight_init: float = Field(default=0.1, gt=0)
    coupling_init: float = Field(default=1.0, gt=0)
    omega_init: tuple[float, float] = (0.9, 1.1)
    implementation: Literal["fused", "materialised"] = "fused"


@dataclass
class PMAIntermediates(Intermediates):
    """Telemetry of one ``pma`` layer (tensors keep their graph; detach to log).

    Attributes:
        content_phases: (b, t, h) theta0.
        theta: (b, t, h) phases after the Kuramoto steps (the oscillators: node = head).
        phases: (b, t, h) query phases phi = theta + Omega t (or the override).
        key_phases: (b, t, h) psi.
        coupling: (b, t, h) context coupling K.
        order_parameter: (b, t) r = |mean_h exp(i theta)| across the heads of each token.
        prefix_order_parameter: (b, t, h) R over the prefix (enters tau).
        coherence_variance: (b, t, h) Var(P) over the prefix of each query row.
        temperature: (b, t, h) tau.
        mean_order_parameter: () mean of r.
        gate, omega, sequence_frequency: (h,).
    """

    content_phases: torch.Tensor
    theta: torch.Tensor
    phases: torch.Tensor
    key_phases: torch.Tensor
    coupling: torch.Tensor
    order_parameter: torch.Tensor
    prefix_order_parameter: torch.Tensor
    coherence_variance: torch.Tensor
    temperature: torch.Tensor
    mean_order_parameter: torch.Tensor
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


def materialised_prefix_statistics(phases: torch.Tensor, key_phases: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`prefix_statistics` with explicit (t, t) masks (tests only)."""
    t = phases.shape[1]
    mask = torch.ones(t, t, dtype=phases.dtype, device=phases.device).tril()  # [t, u]: u <= t
    count = mask.sum(-1)[:, None]
    ph, kp = phases.transpose(1, 2), key_phases.transpose(1, 2)  # (b, h, t)
    c = (mask * torch.cos(ph)[..., None, :]).sum(-1) / count[:, 0]
    s = (mask * torch.sin(ph)[..., None, :]).sum(-1) / count[:, 0]
    r = torch.sqrt((c * c + s * s).clamp_min(1e-30))
    coherence = torch.cos(ph[..., :, None] - kp[..., None, :])  # (b, h, t, u)
    mean = (mask * coherence).sum(-1, keepdim=True) / count
    var = (mask * (coherence - mean) ** 2).sum(-1) / count[:, 0]
    return r.transpose(1, 2), var.transpose(1, 2)


def fused_pma_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                        key_phases: torch.Tensor, gate: torch.Tensor, temperature: torch.Tensor,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """PMA as ONE causal ``scaled_dot_product_attention`` call with 3d feature columns.

    Args:
        q, k, v: (b, h, t, d).
        phases, key_phases: (b, t, h) phi (queries) and psi (keys).
        gate: (h,) lambda.
        temperature: (b, t, h) tau per query row.
        dropout_p: attention dropout.

    Returns:
        (b, h, t, d).
    """
    d = q.shape[-1]
    phi = phases.transpose(1, 2).unsqueeze(-1)  # b t h -> b h t 1
    psi = key_phases.transpose(1, 2).unsqueeze(-1)
    lam = gate.view(-1, 1, 1)
    inv_tau = 1.0 / temperature.transpose(1, 2).unsqueeze(-1)  # (b, h, t, 1)
    q2 = torch.cat([(1 - lam) * q, (lam * torch.cos(phi)) * q, (lam * torch.sin(phi)) * q], -1) * inv_tau
    k2 = torch.cat([k, torch.cos(psi) * k, torch.sin(psi) * k], -1)
    y = F.scaled_dot_product_attention(q2, k2, F.pad(v, (0, 2 * d)), is_causal=True, scale=1.0 / math.sqrt(d),
                                       dropout_p=dropout_p)
    return y[..., :d]


def materialised_pma_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                               key_phases: torch.Tensor, gate: torch.Tensor, temperature: torch.Tensor
                               ) -> torch.Tensor:
    """Reference for :func:`fused_pma_attention` with explicit (b, h, t, t) coherence and scores."""
    d, t = q.shape[-1], q.shape[-2]
    ph, kp = phases.transpose(1, 2), key_phases.transpose(1, 2)
    coherence = torch.cos(ph[..., :, None] - kp[..., None, :])  # P (b, h, t, t)
    lam = gate.view(-1, 1, 1)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)) * (lam * coherence + 1 - lam)
    scores = scores / temperature.transpose(1, 2)[..., None]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


@register_attention("pma")
class PMAAttention(QKVAttention):
    """Phase-modulated attention (see the module docstring for the equations).

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``): ``phase`` (D -> 2h),
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
        self.seq_len = config.seq_len
        self.phase = nn.Linear(self.d_model, 2 * h, bias=False)
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
        """Phase projection ~ N(0, 1/D); the coupling projection keeps the trunk's N(0, std)."""
        o: PMAOptions = self.options
        h = self.n_heads
        nn.init.normal_(self.phase.weight, std=1.0 / math.sqrt(self.d_model))
        self.coupling_bias.fill_(inverse_softplus(o.coupling_init))
        self.omega.uniform_(*o.omega_init)
        idx = torch.arange(h, dtype=self.omega.dtype, device=self.omega.device)
        spread = float(self.seq_len) ** (-idx / max(h - 1, 1))  # 1 .. 1/seq_len rad per token
        self.sequence_frequency.copy_(spread)
        self.gate.fill_(o.gate_init)
        self.temperature_raw.fill_(inverse_softplus(o.temperature_init))
        self.variance_weight_raw.fill_(inverse_softplus(o.variance_weight_init))
        self.order_weight_raw.fill_(inverse_softplus(o.order_weight_init))

    def content_phases(self, x: torch.Tensor) -> torch.Tensor:
        """theta0 (b, t, h) = atan2 of two projections of x (b, t, D)."""
        b, t, _ = x.shape
        pair = self.phase(x).view(b, t, self.n_heads, 2)
        return torch.atan2(pair[..., 1], pair[..., 0])

    def integrate(self, theta0: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor) -> torch.Tensor:
        """Mean-field Kuramoto over the heads of each token: (b, t, h) -> (b, t, h)."""
        o: PMAOptions = self.options
        if o.n_steps == 0:
            return theta0
        b, t, h = theta0.shape
        system = KuramotoSystem(omega=omega, coupling=coupling.reshape(b * t, h),
                                operator=MeanFieldOperator(h, 1.0 / h))
        integrator = kuramoto_integrator(system, method=o.method, dt=o.dt)
        state = integrator.step_fn(integrator.init_fn(theta0.reshape(b * t, h)), o.n_steps)
        return state.theta.reshape(b, t, h)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, PMAIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`PMAIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: PMAOptions = self.options
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each

        def use(name: str, current: torch.Tensor) -> torch.Tensor:
            return override(current, iv[name]) if name in iv else current

        coupling = use("coupling", F.softplus(self.coupling(x) + self.coupling_bias))  # (b, t, h)
        omega = use("omega", self.omega)
        theta0 = self.content_phases(x)
        theta = self.integrate(theta0, omega, coupling)  # (b, t, h)
        position = torch.arange(t, dtype=theta.dtype, device=theta.device)[:, None]
        phases = use("phases", theta + position * self.sequence_frequency)
        key_phases = phases if o.key_phases == "oscillator" else \
            (position * self.sequence_frequency).expand(b, t, -1)
        key_phases = use("key_phases", key_phases)
        materialised = o.implementation == "materialised"
        tau_base = F.softplus(self.temperature_raw)
        r = var = None
        if o.adaptive_temperature or return_intermediates:
            statistics = materialised_prefix_statistics if materialised else prefix_statistics
            r, var = statistics(phases, key_phases)
            r, var = use("order_parameter", r), use("coherence_variance", var)
        if o.adaptive_temperature:
            alpha, beta = F.softplus(self.order_weight_raw), F.softplus(self.variance_weight_raw)
            temperature = use("temperature", tau_base * (1 + beta * var) * (1 + alpha * (1 - r)))
        else:
            temperature = use("temperature", tau_base.expand(b, t, -1))
        gate = use("gate", self.gate)
        if materialised:
            y = materialised_pma_attention(q, k, v, phases, key_phases, gate, temperature)
        else:
            y = fused_pma_attention(q, k, v, phases, key_phases, gate, temperature,
                                    dropout_p=self.dropout if self.training else 0.0)
        y = self.merge_heads(y)
        if not return_intermediates:
            return y, None
        head_r, _ = order_parameter(theta)  # (b, t), across the heads of each token
        return y, PMAIntermediates(
            layer=self.layer, content_phases=theta0, theta=theta, phases=phases, key_phases=key_phases,
            coupling=coupling, order_parameter=head_r, prefix_order_parameter=r, coherence_variance=var,
            temperature=temperature, mean_order_parameter=head_r.mean(), gate=gate, omega=omega,
            sequence_frequency=self.sequence_frequency)

    def extra_repr(self) -> str:
        o: PMAOptions = self.options
        return (f"key_phases={o.key_phases}, n_steps={o.n_steps}, dt={o.dt}, method={o.method}, "
                f"{o.implementation}")


__all__ = ["PMAAttention", "PMAIntermediates", "PMAOptions", "fused_pma_attention",
           "materialised_pma_attention", "materialised_prefix_statistics", "prefix_mean", "prefix_statistics"]
