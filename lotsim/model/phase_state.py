"""The shared base of the phase-state attentions (``torus``, ``fsn``): a token's state IS phases.

Per token t, head h and channel c = 0..m-1 (m angles per head, default d/2):

* content phases ``theta0[t,h,c] = atan2(p1, p0)`` from two projections of x_t (no raw angle ever
  enters a linear layer);
* gated cosine scores with rotary drift ``s_h(t, u) = sum_c g_hc cos(a_tc - b_uc)``,
  ``a_tc = theta_tc + rho_hc t`` (``b`` the same of the key phases); gates ``g = softplus(.) >= 0``
  (a learned metric on the torus), rotary rates rho learned (initialised to the RoPE spectrum
  ``base ** (-c/m)``). ``score="shared"`` scores the token's own phase state (b = a);
  ``score="qk"`` separate query and key phases, each from two more projections of x_t;
* readout ``y = W_out [cos theta', sin theta']`` (``readout="mean"``: also the attention-weighted
  circular mean ``sum_u A_tu [cos, sin] theta_u``).

The scores are the additive phase feature map of :mod:`lotsim.model.phase` with no q/k part:
``q' = [g cos a, g sin a]``, ``k' = [cos b, sin b]`` (2m columns, ``scale=1``); the gate sits on the
query side only, so it may take any sign under an intervention (for g >= 0 it equals the symmetric
``[sqrt(g) cos a, sqrt(g) sin a]``). :func:`lotsim.model.oracles.materialised_scores` is the
explicit reference.

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

from lotsim.dynamics.core import order_parameter
from lotsim.model.attention import Attention, AttentionOptions, PhaseIntermediates
from lotsim.model.interventions import apply_intervention
from lotsim.model.oracles import materialised_scores
from lotsim.model.phase import (
    advance,
    content_phases,
    heads_first,
    init_content_projection,
    inverse_softplus,
    phase_features,
)


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
    a = heads_first(advance(theta, rotary_rate))  # b t h m -> b h t m
    b = a if key_theta is None else heads_first(advance(key_theta, rotary_rate))
    return phase_features(a, gate, key_phases=b)


class PhaseStateOptions(AttentionOptions):
    """Options shared by the phase-state variants (``torus``, ``fsn``): the readings of the papers'
    text that the abstracts leave open (docs/attentions.md, "Readings").

    Attributes:
        angles: m, angles per head (default d/2, so the score features are d wide).
        gate_init: initial score gate g (> 0); None -> 1/sqrt(m), so the score of independent uniform
            phases has variance m g^2 / 2 = 1/2 whatever m.
        score: ``qk`` (default: the gated cosine similarity of separate query and key phases, each the
            atan2 of two learned projections of x; the values stay the phase state) or ``shared``
            (query and key are the token's own phase state: ``cos(theta_t - theta_u)``).
        readout: ``mean`` (default: ``out([cos theta', sin theta', Re, Im])`` with the attention-weighted
            circular mean ``sum_u A_tu e^{i theta_u}`` whose tangent component is the update) or ``phase``
            (``out([cos theta', sin theta'])`` only).
        The defaults are the reading that screened best (docs/results.md).
        implementation: ``fused`` (SDPA) or ``materialised`` (explicit T x T weights; test oracle).
    """

    angles: int | None = Field(default=None, ge=1)
    gate_init: float | None = Field(default=None, gt=0)
    score: Literal["shared", "qk"] = "qk"
    readout: Literal["phase", "mean"] = "mean"
    implementation: Literal["fused", "materialised"] = "fused"


@dataclass
class TorusIntermediates(PhaseIntermediates):
    """Telemetry of one ``torus``/``fsn`` layer (tensors keep their graph; detach to log).

    Attributes:
        content_phases: (b, t, h, m) theta0.
        theta: (b, t, h*m) theta' flattened head-major (node = h * m + c): the token's oscillators.
        phases: (b, t, h, m) theta' after the update.
        order_parameter: (b, t) r = |mean over the token's h*m oscillators of exp(i theta')|.
        mean_order_parameter: () mean of r.
        head_order_parameter: (b, t, h) r over each head's m channels.
        coupling: the coupling used ((h, m) eta for ``torus``; (h, m, M) |c_M| for ``fsn``).
        gate, rotary_rate: (h, m).
    """

    head_order_parameter: torch.Tensor
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
        "shared-phase": {"options": {"score": "shared", "readout": "phase"}},  # the first reconstruction
        "qk": {"options": {"score": "qk", "readout": "phase"}},
        "mean": {"options": {"score": "shared", "readout": "mean"}},
        "qk-mean": {"options": {"score": "qk", "readout": "mean"}},  # the default
    }

    @classmethod
    def migrate_options(cls, options: Mapping[str, Any], weights: Mapping[str, Any]) -> dict[str, Any]:
        """Checkpoints written before ``score`` and ``readout`` existed hold the reading ``shared`` +
        ``phase`` and store neither key; newer ones trained with the defaults store neither key either.
        So a missing key is read from the weights: ``score_phase`` weights mean ``qk`` (else ``shared``),
        an ``out`` projection twice as wide as ``phase`` means ``mean`` (else ``phase``); it is set only
        where the weights disagree with the default."""
        def first(suffix: str) -> Any:
            return next((value for key, value in weights.items() if key.endswith(suffix)), None)

        phase, out = first(".attn.phase.weight"), first(".attn.out.weight")
        if phase is None or out is None:
            return dict(options)  # not this attention's weights: loading reports the mismatch
        trained = {"score": "qk" if first(".attn.score_phase.weight") is not None else "shared",
                   "readout": "mean" if out.shape[1] == 2 * phase.shape[0] else "phase"}
        defaults = cls.Options.model_fields
        missing = {key: value for key, value in trained.items() if key not in options}
        return {**{key: value for key, value in missing.items() if value != defaults[key].default}, **options}

    def __init__(self, config, options: PhaseStateOptions, layer: int = 0):
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
        init_content_projection(self.phase)
        if self.score_phase is not None:
            init_content_projection(self.score_phase)
        gate = self.options.gate_init or 1.0 / math.sqrt(self.angles)
        self.gate_raw.fill_(inverse_softplus(gate))
        c = torch.arange(self.angles, dtype=self.rotary_rate.dtype, device=self.rotary_rate.device)
        self.rotary_rate.copy_((self.rope_base ** (-c / self.angles)).expand(self.n_heads, -1))

    def score_phases(self, x: torch.Tensor, theta0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(query, key) phases (b, t, h, m) of the scores: (theta0, None) unless ``score="qk"``."""
        if self.score_phase is None:
            return theta0, None
        query, key = content_phases(self.score_phase, x, 2 * self.n_heads, self.angles).chunk(2, dim=2)
        return query, key

    def score_features(self, x: torch.Tensor, theta0: torch.Tensor, gate: torch.Tensor, rate: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused score features q', k' (b, h, t, 2m) of the gated cosine similarity."""
        query, key = self.score_phases(x, theta0)
        return drifted_features(query, rate, gate, key_theta=key)

    def score_weights(self, x: torch.Tensor, theta0: torch.Tensor, gate: torch.Tensor, rate: torch.Tensor
                      ) -> torch.Tensor:
        """Materialised scores (b, h, t, t) (the reference of :meth:`score_features`)."""
        query, key = self.score_phases(x, theta0)
        return materialised_scores(query, rate, gate, key_theta=key)

    def score_parameters(self, iv: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate, rotary_rate), each (h, m), with interventions applied."""
        return (apply_intervention(iv, "gate", F.softplus(self.gate_raw)),
                apply_intervention(iv, "rotary_rate", self.rotary_rate))

    def initial_phases(self, x: torch.Tensor, iv: Mapping[str, Any]) -> torch.Tensor:
        """theta0 (b, t, h, m) from content, with the ``phases`` intervention applied."""
        return apply_intervention(iv, "phases", content_phases(self.phase, x, self.n_heads, self.angles))

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


__all__ = ["PhaseStateAttention", "PhaseStateOptions", "TorusIntermediates", "drifted_features"]
