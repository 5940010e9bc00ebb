"""``fsn``: the Frustrated Synchronization Network's attention (Nunley 2026, "Attention as
Frustrated Synchronization", arXiv 2606.18694; what the source states and what is reconstructed:
docs/attentions.md).

With the phase state and the gated cosine scores of :mod:`lotsim.model.phase_state` (A = causal
softmax over u <= t; A' = the same scores, softmax over u <= t - 1), per token t, head h, channel c::

    theta'_t = theta_t + sum_{k=1..M} Im[ c_k e^{-ik theta_t} sum_{u<=t}   A_tu  e^{ik theta_u}
                                        + d_k e^{-ik theta_t} sum_{u<=t-1} A'_tu e^{ik theta_{u+1}} ]

with complex coefficients c_k, d_k per (h, c). Writing ``c_k = |c_k| e^{-i alpha_k}`` each direct
term is ``|c_k| sum_u A_tu sin(k (theta_u - theta_t) - alpha_k)``: Kuramoto-Sakaguchi coupling of
harmonic k with frustration alpha_k (Daido harmonics; a negative real part is a repulsive
component). The delay term is the same coupling to theta_{u+1}, i.e. Sakaguchi coupling whose
frustration angle is the data's own transition theta_{u+1} - theta_u. At t = 0 it is zero.

Real parametrisation (no complex dtypes, exportable): ``c_k = a_k + i b_k`` gives
``Im(c_k e^{-ik theta_t} Z_k) = a_k Y_k + b_k X_k`` with ``X_k = sum_u A_tu cos(k(theta_u - theta_t))
= C_k cos k theta_t + S_k sin k theta_t`` and ``Y_k = S_k cos k theta_t - C_k sin k theta_t``, where
``(C_k, S_k) = sum_u A_tu (cos, sin)(k theta_u)``.

**Fused formulation.** Both branches are single causal SDPA calls with values
``[cos k theta, sin k theta]_{k=1..M}`` (2mM columns):
``direct = SDPA(q', k', v)`` and ``delay[1:] = SDPA(q'[1:], k'[:-1], v[1:], is_causal=True)``,
``delay[0] = 0``. In the shifted call query row i is token t = i + 1, key column j is token u = j
and its value is token j + 1 = u + 1; the causal mask j <= i is u <= t - 1, so token t reads
phases of tokens u + 1 <= t only — never t + 1. ``implementation="materialised"`` computes A, A'
and the pairwise sines explicitly (:func:`lotsim.model.oracles.materialised_frustrated_update`).

Why not the core's integrator: the update is one explicit step of a frustrated Kuramoto-Daido model
whose harmonic amplitudes and frustration angles are learned per oscillator, while
:class:`~lotsim.dynamics.core.KuramotoSystem` takes them as per-system Python floats (right for the
simulator, not learnable). The direct term is checked against the core's
:func:`~lotsim.dynamics.core.coupling_term` with the attention as a dense coupling matrix in
``tests/test_attentions.py``.

Parameters: ``phase``, ``out``, ``gate_raw``, ``rotary_rate`` (as ``torus``) and (h, m, M) each of
``coupling_real``, ``coupling_imag`` (c = a + ib), ``delay_real``, ``delay_imag`` (d), separate so an
ablation can freeze one part (e.g. the imaginary parts at 0: no Sakaguchi frustration).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``m`` angles per head, ``M`` harmonics, ``D`` width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from lotsim.model.attention import register_attention
from lotsim.model.interventions import apply_intervention
from lotsim.model.oracles import materialised_frustrated_update
from lotsim.model.phase import causal_attention, causal_softmax
from lotsim.model.phase_state import PhaseStateAttention, PhaseStateOptions, TorusIntermediates
from lotsim.model.rope import Rope


class FSNOptions(PhaseStateOptions):
    """Options of the ``fsn`` attention (besides :class:`~lotsim.model.phase_state.PhaseStateOptions`).

    Attributes:
        harmonics: M, harmonics of the coupling kernel.
        coupling_init: initial Re c_1 (attractive first harmonic); other coefficients start at 0.
        delay_init: initial Re d_1.
    """

    harmonics: int = Field(default=2, ge=1, le=8)
    coupling_init: float = 0.5
    delay_init: float = 0.5


def harmonic_values(theta: torch.Tensor, harmonics: int) -> torch.Tensor:
    """(b, t, h, m) -> values (b, h, t, 2mM): [cos k theta, sin k theta] for k = 1..M, layout (M, 2, m)."""
    k = torch.arange(1, harmonics + 1, dtype=theta.dtype, device=theta.device)
    kt = theta.transpose(1, 2)[..., None, :] * k[:, None]  # (b, h, t, M, m)
    return torch.stack([torch.cos(kt), torch.sin(kt)], dim=-2).flatten(-3)


def frustrated_coupling(values: torch.Tensor, *terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                        ) -> torch.Tensor:
    """``sum_k Im(c_k e^{-ik theta_t} Z_k) = sum_k a_k Y_k + b_k X_k`` summed over coupling terms.

    With ``X_k = C_k cos + S_k sin``, ``Y_k = S_k cos - C_k sin`` (of k theta_t) this is
    ``sum_k cos(k theta_t) (a_k S_k + b_k C_k) + sin(k theta_t) (b_k S_k - a_k C_k)``: each term's
    mean field is rotated by its coefficients, the terms are added, and the receiving phasors are
    applied once. The receiving phasors are the token's own values, so no trigonometry is redone.

    Args:
        values: (b, h, t, 2mM) ``[cos k theta_t, sin k theta_t]`` (:func:`harmonic_values` of theta).
        terms: ``(mean_field, real, imag)`` each: (b, h, t, 2mM) ``(C_k, S_k)`` in the same layout, and
            (h, m, M) ``a_k``, ``b_k``.

    Returns:
        (b, t, h, m).
    """
    b, h, t, _ = values.shape
    m, n_harm = terms[0][1].shape[1], terms[0][1].shape[2]
    # split (not index) the (cos, sin) pairs: its backward is one cat, not a zero-filled tensor per part;
    # contiguous coefficients: elementwise passes over strided operands are several times slower
    cos, sin = values.reshape(b, h, t, n_harm, 2, m).split(1, dim=-2)  # (b, h, t, M, 1, m) each
    u = v = 0.0
    for mean_field, real, imag in terms:
        big_c, big_s = mean_field.reshape(b, h, t, n_harm, 2, m).split(1, dim=-2)
        a, bb = (part.transpose(1, 2)[:, None, :, None].contiguous() for part in (real, imag))  # (h, 1, M, 1, m)
        u = u + a * big_s + bb * big_c
        v = v + bb * big_s - a * big_c
    return (u * cos + v * sin).sum((-3, -2)).transpose(1, 2)  # b h t m -> b t h m


@register_attention("fsn")
class FSNAttention(PhaseStateAttention):
    """Frustrated synchronization attention (see the module docstring for the equations).

    Interventions: ``phases`` (theta0), ``gate``, ``rotary_rate`` (as ``torus``); ``coupling`` and
    ``delay_coupling`` replace the magnitudes |c_k|, |d_k| keeping the angles (0 switches a branch
    off); ``frustration`` and ``delay_frustration`` replace the angles alpha_k keeping the magnitudes.
    Numbers or tensors broadcast to (h, m, M), or callables of the current value.
    """

    Options = FSNOptions
    # (options, frozen parameter suffixes) per ablation, for `lotsim compare` arms ATTENTION:ABLATION
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "no-coupling": {"options": {"coupling_init": 0.0, "delay_init": 0.0},
                        "freeze": ["coupling_real", "coupling_imag", "delay_real", "delay_imag"]},
        "no-delay": {"options": {"delay_init": 0.0}, "freeze": ["delay_real", "delay_imag"]},
        "no-frustration": {"options": {}, "freeze": ["coupling_imag", "delay_imag"]},
        "frozen-phases": {"options": {}, "freeze": ["phase.weight"]},
    }
    intervention_names = ("phases", "coupling", "frustration", "delay_coupling", "delay_frustration", "gate",
                          "rotary_rate")

    def __init__(self, config, options: FSNOptions, layer: int = 0):
        super().__init__(config, options, layer)
        self.harmonics = options.harmonics
        shape = (self.n_heads, self.angles, self.harmonics)
        self.coupling_real = nn.Parameter(torch.empty(shape))
        self.coupling_imag = nn.Parameter(torch.empty(shape))
        self.delay_real = nn.Parameter(torch.empty(shape))
        self.delay_imag = nn.Parameter(torch.empty(shape))
        self.init_parameters(config.init_std)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """As ``torus``; c_1 = coupling_init, d_1 = delay_init (real), every other coefficient 0."""
        super().init_parameters(std)
        for p in (self.coupling_real, self.coupling_imag, self.delay_real, self.delay_imag):
            p.zero_()
        self.coupling_real[..., 0] = self.options.coupling_init
        self.delay_real[..., 0] = self.options.delay_init

    def coefficients(self, iv: Mapping[str, Any]) -> torch.Tensor:
        """The kernel (4, h, m, M) = (Re c, Im c, Re d, Im d) with interventions applied."""
        kernel = torch.stack([self.coupling_real, self.coupling_imag, self.delay_real, self.delay_imag])
        if not any(n in iv for n in ("coupling", "frustration", "delay_coupling", "delay_frustration")):
            return kernel
        parts = []
        for re, im, mag_key, ang_key in ((kernel[0], kernel[1], "coupling", "frustration"),
                                         (kernel[2], kernel[3], "delay_coupling", "delay_frustration")):
            if mag_key in iv or ang_key in iv:
                magnitude = apply_intervention(iv, mag_key, torch.hypot(re, im))
                alpha = apply_intervention(iv, ang_key, -torch.atan2(im, re))
                re, im = magnitude * torch.cos(alpha), -magnitude * torch.sin(alpha)
            parts += [re, im]
        return torch.stack(parts)

    def update(self, x: torch.Tensor, theta: torch.Tensor, kernel: torch.Tensor, gate: torch.Tensor,
               rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frustrated coupling plus delay term (b, t, h, m) of phases theta (b, t, h, m), and the
        first-harmonic circular mean ``sum_u A_tu [cos, sin] theta_u`` (b, h, t, 2m) of the direct branch."""
        m = theta.shape[-1]
        if self.options.implementation == "materialised":
            scores = self.score_weights(x, theta, gate, rate)
            weights, delay_weights = causal_softmax(scores), causal_softmax(scores, strict=True)
            mean = weights @ harmonic_values(theta, 1)
            return materialised_frustrated_update(theta, weights, delay_weights, kernel), mean
        q2, k2 = self.score_features(x, theta, gate, rate)  # (b, h, t, 2m)
        values = harmonic_values(theta, self.harmonics)  # (b, h, t, 2mM)
        p = self.attention_dropout
        direct = causal_attention(q2, k2, values, scale=1.0, dropout_p=p)
        # The delay call at full length t with rolled rows (query row i = token i + 1, value at key u =
        # token u + 1; the wrapped-around row and value reach only row t - 1, which is dropped by the
        # roll back and the mask): slices of t - 1 rows make torch.export guard on t - 1 != 1, i.e.
        # the exported graph would lose its dynamic sequence axis.
        shifted = causal_attention(q2.roll(-1, 2), k2, values.roll(-1, 2), scale=1.0, dropout_p=p)
        first = torch.arange(theta.shape[1], device=theta.device) == 0
        delay = shifted.roll(1, 2).masked_fill(first[:, None], 0.0)  # token 0 has no predecessor
        delta = frustrated_coupling(values, (direct, kernel[0], kernel[1]), (delay, kernel[2], kernel[3]))
        return delta, direct[..., :2 * m]

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, TorusIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`TorusIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        theta0 = self.initial_phases(x, iv)  # (b, t, h, m)
        gate, rate = self.score_parameters(iv)
        kernel = self.coefficients(iv)
        delta, mean = self.update(x, theta0, kernel, gate, rate)
        theta = theta0 + delta
        y = self.readout(theta, mean)
        if not return_intermediates:
            return y, None
        return y, self.telemetry(theta0, theta, torch.hypot(kernel[0], kernel[1]), gate, rate)

    def extra_repr(self) -> str:
        o: FSNOptions = self.options
        return (f"angles={self.angles}, harmonics={self.harmonics}, score={o.score}, readout={o.readout}, "
                f"{o.implementation}")


__all__ = ["FSNAttention", "FSNOptions", "frustrated_coupling", "harmonic_values"]
