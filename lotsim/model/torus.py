"""``torus``: Kuramoto attention on the torus (Nunley 2026, "Kuramoto Attention: Synchronizing
Self-Attention on the Torus", arXiv 2606.11585).

Provenance: only the abstract was readable (``../seeds/kuramoto-attention-and-fsn-abstracts.md``;
``design/oscillator-attention-notes.md`` §1.4). The abstract fixes the ingredients — angle-valued
hidden coordinates, gated cosine scores, causal attention over previous phase states, values = the
raw phase states, update = tangent component of the attention-weighted circular mean (exactly the
Kuramoto coupling term), rotary position as a phase drift in the score. The concrete equations
below (content phases from two projections, per-channel gates and rotary rates, a learned step,
the cos/sin readout) are our reconstruction, not the paper's code.

Per token t, head h and channel c = 0..m-1 (m angles per head, default d/2):

1. content phases ``theta0[t,h,c] = atan2(p1, p0)``, (p0, p1) two projections of x_t (no raw angle
   ever enters a linear layer);
2. gated cosine scores with rotary drift ``s_h(t, u) = sum_c g_hc cos(a_tc - a_uc)``,
   ``a_tc = theta0_tc + rho_hc t``; gates ``g = softplus(.) >= 0`` (a learned metric on the torus),
   rotary rates rho learned (initialised to the RoPE spectrum ``base ** (-c/m)``);
3. ``A = causal-softmax(s)`` (the adaptive, content-dependent coupling kernel);
4. Kuramoto dynamics with A as the coupling matrix, through THE core
   (:class:`~lotsim.dynamics.core.KuramotoSystem`, :func:`~lotsim.dynamics.core.kuramoto_integrator`)::

       dtheta_tc/ds = eta_hc sum_u A_tu sin(theta_uc - theta_tc)

   with the coupling ``eta`` learned per (h, c). The default, ``n_steps=1, dt=1, method="euler"``, is
   the paper's single tangent update ``theta' = theta0 + eta sum_u A_tu sin(theta_u - theta0_t)``;
   more steps re-use the same kernel A with the moving phases as values;
5. readout ``y = W_out [cos theta', sin theta']`` (b, t, D).

**Fused formulation.** ``cos(a_t - a_u) = cos a_t cos a_u + sin a_t sin a_u``:
``q' = [g cos a, g sin a]``, ``k' = [cos a, sin a]`` (2m columns, ``scale=1``) gives the scores
(the gate sits on the query side only, so it may take any sign under an intervention; the paper's
symmetric ``q' = k' = [sqrt(g) cos a, sqrt(g) sin a]`` is the same number for g >= 0). With the
values ``v = [sin theta, cos theta]`` one causal SDPA call returns ``(S_t, C_t) = sum_u A_tu (sin,
cos) theta_u``, and ``sum_u A_tu sin(theta_u - theta_t) = S_t cos theta_t - C_t sin theta_t``: the
core's :func:`~lotsim.dynamics.core.coupling_term` computes exactly this once the coupling operator
is the attention (:class:`AttentionOperator`). O(T) memory, one SDPA call per drift evaluation.
``implementation="materialised"`` builds A explicitly (a test oracle).

No RoPE on q/k (the rotary drift replaces it), no qkv projection: parameters are ``phase``
(D -> 2hm), ``out`` (2hm -> D), and (h, m) each of ``gate_raw``, ``rotary_rate``, ``coupling``.
Gain 0 does not give vanilla here (there is no dot-product path); ``coupling = 0`` switches all
token-token interaction off.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``m`` angles per head, ``d`` head dim, ``D`` width.
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

from lotsim.dynamics.core import CouplingOperator, KuramotoSystem, kuramoto_integrator, order_parameter
from lotsim.model.attention import Attention, AttentionOptions, Intermediates, register_attention
from lotsim.model.interventions import override
from lotsim.model.rope import Rope


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Causal ``F.scaled_dot_product_attention`` with q/k and v zero-padded to one width.

    Zero columns change no dot product and no output column; equal widths keep torch's fused CPU
    kernel (it otherwise falls back to the T x T math path).

    Args:
        q, k: (b, h, t, e); v: (b, h, t, f).

    Returns:
        (b, h, t, f).
    """
    e, f = q.shape[-1], v.shape[-1]
    if e < f:
        q, k = F.pad(q, (0, f - e)), F.pad(k, (0, f - e))
    elif f < e:
        v = F.pad(v, (0, e - f))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
    return y[..., :f]


def _drifted(theta: torch.Tensor, rotary_rate: torch.Tensor) -> torch.Tensor:
    """``a = theta + rho * position``, (b, t, h, m) -> (b, h, t, m)."""
    position = torch.arange(theta.shape[1], dtype=theta.dtype, device=theta.device)
    return (theta + position[:, None, None] * rotary_rate).transpose(1, 2)


def drifted_features(theta: torch.Tensor, rotary_rate: torch.Tensor, gate: torch.Tensor,
                     key_theta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score features of the gated cosine similarity with rotary drift.

    Args:
        theta: (b, t, h, m) query phases (and key phases unless ``key_theta`` is given).
        rotary_rate: (h, m) rho.
        gate: (h, m) g.
        key_theta: (b, t, h, m) separate key phases (the ``score="qk"`` reading), or None.

    Returns:
        q', k' each (b, h, t, 2m) with ``q'_t . k'_u = sum_c g_c cos(a_tc - b_uc)``,
        ``a = theta + rho * position``, ``b`` the same of the key phases.
    """
    a = _drifted(theta, rotary_rate)
    bk = a if key_theta is None else _drifted(key_theta, rotary_rate)
    q = torch.cat([gate[:, None, :] * torch.cos(a), gate[:, None, :] * torch.sin(a)], -1)
    return q, torch.cat([torch.cos(bk), torch.sin(bk)], -1)


def materialised_scores(theta: torch.Tensor, rotary_rate: torch.Tensor, gate: torch.Tensor,
                        key_theta: torch.Tensor | None = None) -> torch.Tensor:
    """Reference scores ``s[b, h, t, u] = sum_c g_c cos(a_tc - b_uc)`` from explicit differences
    (tests only; (b, h, t, t, m) memory)."""
    a = _drifted(theta, rotary_rate)
    bk = a if key_theta is None else _drifted(key_theta, rotary_rate)
    return (gate[:, None, None, :] * torch.cos(a[:, :, :, None, :] - bk[:, :, None, :, :])).sum(-1)


def causal_softmax(scores: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """Row softmax of (..., t, t) scores over keys u <= t (``strict``: u <= t - 1; row 0 is then 0)."""
    t = scores.shape[-1]
    future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(0 if strict else 1)
    if strict:
        future[0, 0] = False  # a finite row; zeroed below (no NaN in the backward)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    if strict:
        first = torch.zeros(t, 1, dtype=scores.dtype, device=scores.device)
        first[0] = 1.0
        weights = weights * (1 - first)
    return weights


@dataclass(frozen=True)
class AttentionOperator(CouplingOperator):
    """Causal softmax attention as a coupling operator of the core, over a (token x channel) state.

    Node index = u * m + c (token u, channel c); replicas = (batch, head). ``aggregate(x)[r, t*m+c]
    = sum_u A_tu x[r, u*m+c]``: channel c of token t receives from channel c of every token u <= t,
    with the head's attention weights A (the same for every channel).

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

    @property
    def n(self) -> int:
        return self.query.shape[2] * self.channels

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(b*h, t*m, f) -> (b*h, t*m, f)."""
        bh, n, f = x.shape
        b, h, t, _ = self.query.shape
        v = x.reshape(b, h, t, self.channels * f)  # (b h) (t m) f -> b h t (m f)
        if self.weights is not None:
            out = self.weights @ v
        else:
            out = causal_attention(self.query, self.key, v, scale=1.0, dropout_p=self.dropout_p)
        return out.reshape(bh, n, f)

    def to(self, device=None, dtype=None):
        def move(w):
            return None if w is None else w.to(device=device, dtype=dtype)
        return AttentionOperator(move(self.query), move(self.key), self.channels, move(self.weights),
                                 self.dropout_p)


class PhaseStateOptions(AttentionOptions):
    """Options shared by the phase-state variants (``torus``, ``fsn``): the readings of the papers'
    text that the abstracts leave open (docs/attentions.md, "Readings").

    Attributes:
        angles: m, angles per head (default d/2, so the score features are d wide).
        gate_init: initial score gate g (> 0); None -> 1/sqrt(m), so the score of independent uniform
            phases has variance m g^2 / 2 = 1/2 whatever m.
        score: ``shared`` (query and key are the token's own phase state: ``cos(theta_t - theta_u)``)
            or ``qk`` (the gated cosine similarity of separate query and key phases, each the atan2 of
            two learned projections of x; the values stay the phase state).
        readout: ``phase`` (``out([cos theta', sin theta'])``) or ``mean`` (also the attention-weighted
            circular mean ``sum_u A_tu e^{i theta_u}`` the update is the tangent component of:
            ``out([cos theta', sin theta', Re, Im])``).
        implementation: ``fused`` (SDPA) or ``materialised`` (explicit T x T weights; test oracle).
    """

    angles: int | None = Field(default=None, ge=1)
    gate_init: float | None = Field(default=None, gt=0)
    score: Literal["shared", "qk"] = "shared"
    readout: Literal["phase", "mean"] = "phase"
    implementation: Literal["fused", "materialised"] = "fused"


class TorusOptions(PhaseStateOptions):
    """Options of the ``torus`` attention (besides :class:`PhaseStateOptions`).

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


@dataclass
class TorusIntermediates(Intermediates):
    """Telemetry of one ``torus``/``fsn`` layer (tensors keep their graph; detach to log).

    Attributes:
        content_phases: (b, t, h, m) theta0.
        phases: (b, t, h, m) theta' after the update.
        theta: (b, t, h*m) theta' flattened head-major (node = h * m + c): the token's oscillators.
        order_parameter: (b, t) r = |mean over the token's h*m oscillators of exp(i theta')|.
        head_order_parameter: (b, t, h) r over each head's m channels.
        mean_order_parameter: () mean of r.
        coupling: the coupling used ((h, m) eta for ``torus``; (h, m, M) |c_M| for ``fsn``).
        gate, rotary_rate: (h, m).
    """

    content_phases: torch.Tensor
    phases: torch.Tensor
    theta: torch.Tensor
    order_parameter: torch.Tensor
    head_order_parameter: torch.Tensor
    mean_order_parameter: torch.Tensor
    coupling: torch.Tensor
    gate: torch.Tensor
    rotary_rate: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalar summaries (floats) for logging."""
        return {
            "order_parameter": float(self.mean_order_parameter.detach()),
            "head_order_parameter": float(self.head_order_parameter.detach().mean()),
            "coupling_abs": float(self.coupling.detach().abs().mean()),
            "gate": float(self.gate.detach().mean()),
        }


class PhaseStateAttention(Attention):
    """Shared plumbing of the phase-state variants (``torus``, ``fsn``): content phases, gated
    cosine scores with rotary drift, cos/sin readout. Parameters ``phase`` (D -> 2hm), ``out``
    (2hm -> D, or 4hm -> D with ``readout="mean"``), ``gate_raw`` and ``rotary_rate`` (h, m), and with
    ``score="qk"`` ``score_phase`` (D -> 4hm: query and key pairs)."""

    # named readings of the papers' text (options only; `lotsim compare` arms ATTENTION:READING)
    readings: ClassVar[dict[str, dict[str, Any]]] = {
        "qk": {"options": {"score": "qk"}},
        "mean": {"options": {"readout": "mean"}},
        "qk-mean": {"options": {"score": "qk", "readout": "mean"}},
    }

    def __init__(self, config, options, layer: int = 0):
        super().__init__(config, options, layer)
        self.angles = options.angles or self.head_dim // 2
        self.rope_base = config.rope_base
        width = 2 * self.n_heads * self.angles
        self.phase = nn.Linear(self.d_model, width, bias=False)
        self.score_phase = nn.Linear(self.d_model, 2 * width, bias=False) if options.score == "qk" else None
        self.out = nn.Linear(2 * width if options.readout == "mean" else width, self.d_model, bias=False)
        self.gate_raw = nn.Parameter(torch.empty(self.n_heads, self.angles))
        self.rotary_rate = nn.Parameter(torch.empty(self.n_heads, self.angles))

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """Phase projections ~ N(0, 1/D) (unit-size complex pairs), gates, RoPE-spectrum rotary rates."""
        nn.init.normal_(self.phase.weight, std=1.0 / math.sqrt(self.d_model))
        if self.score_phase is not None:
            nn.init.normal_(self.score_phase.weight, std=1.0 / math.sqrt(self.d_model))
        gate = self.options.gate_init or 1.0 / math.sqrt(self.angles)
        self.gate_raw.fill_(inverse_softplus(gate))
        c = torch.arange(self.angles, dtype=self.rotary_rate.dtype, device=self.rotary_rate.device)
        self.rotary_rate.copy_((self.rope_base ** (-c / self.angles)).expand(self.n_heads, -1))

    def _angles_of(self, projection: torch.Tensor) -> torch.Tensor:
        """(b, t, k*2hm) pairs -> (b, t, k*h, m) angles atan2(p1, p0)."""
        b, t, _ = projection.shape
        pair = projection.view(b, t, -1, self.angles, 2)
        return torch.atan2(pair[..., 1], pair[..., 0])

    def content_phases(self, x: torch.Tensor) -> torch.Tensor:
        """theta0 (b, t, h, m) = atan2 of two projections of x (b, t, D)."""
        return self._angles_of(self.phase(x))

    def score_features(self, x: torch.Tensor, theta0: torch.Tensor, gate: torch.Tensor, rate: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused score features q', k' (b, h, t, 2m) of the gated cosine similarity."""
        if self.score_phase is None:
            return drifted_features(theta0, rate, gate)
        query, key = self._angles_of(self.score_phase(x)).chunk(2, dim=2)
        return drifted_features(query, rate, gate, key_theta=key)

    def score_weights(self, x: torch.Tensor, theta0: torch.Tensor, gate: torch.Tensor, rate: torch.Tensor
                      ) -> torch.Tensor:
        """Materialised scores (b, h, t, t) (the reference of :meth:`score_features`)."""
        if self.score_phase is None:
            return materialised_scores(theta0, rate, gate)
        query, key = self._angles_of(self.score_phase(x)).chunk(2, dim=2)
        return materialised_scores(query, rate, gate, key_theta=key)

    def score_parameters(self, iv: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate, rotary_rate), each (h, m), with interventions applied."""
        gate = F.softplus(self.gate_raw)
        rate = self.rotary_rate
        if "gate" in iv:
            gate = override(gate, iv["gate"])
        if "rotary_rate" in iv:
            rate = override(rate, iv["rotary_rate"])
        return gate, rate

    def initial_phases(self, x: torch.Tensor, iv: Mapping[str, Any]) -> torch.Tensor:
        theta0 = self.content_phases(x)
        return override(theta0, iv["phases"]) if "phases" in iv else theta0

    def readout(self, theta: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
        """(b, t, h, m) -> (b, t, D) = out([cos theta, sin theta]), with ``readout="mean"`` also the
        circular mean ``mean`` (b, h, t, 2m) = sum_u A_tu [cos, sin] theta_u."""
        b, t = theta.shape[:2]
        features = torch.cat([torch.cos(theta), torch.sin(theta)], -1)  # (b, t, h, 2m)
        if self.options.readout == "mean":
            features = torch.cat([features, mean.transpose(1, 2)], -1)
        return self.out(features.reshape(b, t, -1))

    def telemetry(self, theta0, theta, coupling, gate, rate) -> TorusIntermediates:
        b, t = theta.shape[:2]
        flat = theta.reshape(b, t, -1)
        r, _ = order_parameter(flat)  # (b, t)
        head_r, _ = order_parameter(theta)  # (b, t, h)
        return TorusIntermediates(layer=self.layer, content_phases=theta0, phases=theta, theta=flat,
                                  order_parameter=r, head_order_parameter=head_r,
                                  mean_order_parameter=r.mean(), coupling=coupling, gate=gate,
                                  rotary_rate=rate)


@register_attention("torus")
class TorusAttention(PhaseStateAttention):
    """Kuramoto attention on the torus (see the module docstring for the equations).

    Interventions: ``phases`` (theta0, (b, t, h, m) tensor or callable), ``coupling`` (eta),
    ``gate`` (g), ``rotary_rate`` (rho) — numbers or tensors broadcast to (h, m), or callables.
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
        return AttentionOperator(q2, k2, m, dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, TorusIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`TorusIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: TorusOptions = self.options
        theta0 = self.initial_phases(x, iv)  # (b, t, h, m)
        gate, rate = self.score_parameters(iv)
        coupling = override(self.coupling, iv["coupling"]) if "coupling" in iv else self.coupling
        b, t, h, m = theta0.shape
        operator = self.attention_operator(x, theta0, gate, rate)
        eta = coupling[None, :, None, :].expand(b, h, t, m).reshape(b * h, t * m)
        system = KuramotoSystem(omega=theta0.new_zeros(()), coupling=eta, operator=operator)
        integrator = kuramoto_integrator(system, method=o.method, dt=o.dt)
        state0 = theta0.transpose(1, 2).reshape(b * h, t * m)  # b t h m -> (b h) (t m)
        theta = integrator.step_fn(integrator.init_fn(state0), o.n_steps).theta
        theta = theta.reshape(b, h, t, m).transpose(1, 2)  # -> b t h m
        mean = None
        if o.readout == "mean":  # sum_u A_tu [cos, sin] theta0_u, channel by channel
            values = torch.stack([torch.cos(state0), torch.sin(state0)], -1)  # (b h, t m, 2)
            mean = operator.aggregate(values).reshape(b, h, t, m, 2).transpose(-1, -2).reshape(b, h, t, 2 * m)
        y = self.readout(theta, mean)
        if not return_intermediates:
            return y, None
        return y, self.telemetry(theta0, theta, coupling, gate, rate)

    def extra_repr(self) -> str:
        o: TorusOptions = self.options
        return (f"angles={self.angles}, n_steps={o.n_steps}, dt={o.dt}, method={o.method}, score={o.score}, "
                f"readout={o.readout}, {o.implementation}")


__all__ = [
    "AttentionOperator",
    "PhaseStateAttention",
    "PhaseStateOptions",
    "TorusAttention",
    "TorusIntermediates",
    "TorusOptions",
    "causal_attention",
    "causal_softmax",
    "drifted_features",
    "inverse_softplus",
    "materialised_scores",
]
