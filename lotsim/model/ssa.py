"""``ssa``: Selective Synchronization Attention (Hays 2026, arXiv 2602.14445; the OSN block).

Provenance (what the paper states and what is reconstructed): docs/attentions.md. The paper fixes: a
closed-form operator from the *steady state* of the Kuramoto model; tokens are oscillators with
learnable natural frequencies;
the synchronisation strength between token pairs, from a frequency-dependent coupling and a
phase-locking condition, is the attention weight; incompatible frequencies get exactly zero weight;
the natural frequencies are the positional encoding; single pass, no ODE integration. The
concrete equations below are our reconstruction from the two-oscillator steady state.

Two oscillators ``dtheta_i/ds = omega_i + K sin(theta_j - theta_i)`` (and i <-> j) lock iff
``|omega_i - omega_j| <= 2K``; the locked phase lag ``phi*`` has ``sin phi* = Delta omega / 2K``, and the
effective (frequency-dependent) coupling of the locked pair is ``K cos phi* = sqrt(K^2 - Delta omega^2/4)``.
Per head h, query t, key u <= t:

* natural frequencies ``omega_{t,h} = Omega_h t + f_h(x_t)`` — a per-head spectrum over positions
  (``Omega`` learned, initialised from 1 to 1/seq_len rad per token across heads) plus a content
  shift ``f = W_f x_t``; no RoPE by default (``rope=True`` adds it to q, k);
* content coupling ``K_tu = kappa_h exp(q_t . k_u / sqrt(d))`` (kappa = softplus(.) > 0);
* ``r_tu = |omega_t - omega_u| / (2 K_tu)``; locked iff ``r_tu < 1`` (the threshold |Delta omega| > 2K
  gives an exact zero); weight ``w_tu = K_tu g(r_tu)`` with
  ``g(r) = (sqrt(relu(1 - r^2) + eps) - sqrt(eps)) / (sqrt(1 + eps) - sqrt(eps))``
  (= cos phi* for eps -> 0, g(0) = 1; eps bounds the gradient at the threshold, g(r >= 1) = 0 exactly);
* ``A_tu = w_tu / sum_{u' <= t} w_tu'`` (row-normalised, causal); ``y = A V``.

With all frequencies equal (``omega`` intervention 0) every pair is locked and A is softmax
attention; with ``rope=True`` that is vanilla exactly (tested).

**Guard for rows with no locked key:** the self pair has Delta omega = 0 and is locked by
definition (it is included in the locked set even when kappa = 0), so every row keeps at least its
own token; a token that locks to nothing attends to itself. No row is ever empty, no NaN.

**Implementation.** The weights are a non-separable function of (q.k, omega_t - omega_u): there is no
low-rank feature map, so no plain SDPA rewrite. ``materialised`` builds the (b, h, t, t) weights in one
block: the reference. ``chunked`` (what ``auto`` runs in eager mode) computes the same weights by
blocks of 128 query rows against their causal key prefix, recomputing each block in the backward:
memory O(t x 128), no T x T tensor. ``flex`` runs the same math as a FlexAttention ``score_mod``
(log w, double-``where`` so unlocked pairs get -inf and no NaN gradient) with a causal block mask:
fused under ``torch.compile`` on GPU; CPU FlexAttention has no backward (eager or compiled), so it
serves inference there. ``auto`` uses flex while ``torch.compile`` traces, except for a CPU
backward and under ``torch.export``/ONNX (which cannot export it; export gets the materialised
block), else chunked. Masked keys are excluded before the exponential, so large float32 scores
never give inf and no NaN gradients. Closed form, no integrator: the core's ODE would only
approach this fixed point. The three ways live in :mod:`lotsim.model.ssa_locking`; the shared
pieces come from :mod:`lotsim.model.phase` (the frequency spectrum, the advance along the sequence,
the causal mask of a block of query rows) and the interventions from
:func:`lotsim.model.interventions.apply_intervention`.

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

from lotsim.model.attention import AttentionOptions, Intermediates, QKVAttention, register_attention
from lotsim.model.interventions import apply_intervention
from lotsim.model.phase import advance, frequency_spectrum, inverse_softplus
from lotsim.model.rope import Rope
from lotsim.model.ssa_locking import _exporting, _use_flex, chunked_ssa, flex_ssa, materialised_ssa


class SSAOptions(AttentionOptions):
    """Options of the ``ssa`` attention.

    Attributes:
        locking: the oscillator locking weights (False: all frequencies equal, i.e. softmax attention
            through SDPA; with ``rope=True`` that is vanilla: the ``no-oscillator`` ablation).
        rope: also apply RoPE to q and k (default off: the frequencies are the positional encoding).
        coupling_init: initial kappa (> 0).
        content_frequency_init: std of the content-frequency projection's init, times 1/sqrt(D).
        lock_epsilon: eps of g(r) (bounds d w / d r at the locking threshold by 1/sqrt(eps)).
        implementation: ``auto``, ``chunked``, ``materialised`` or ``flex`` (see the module docstring).
    """

    locking: bool = True
    rope: bool = False
    coupling_init: float = Field(default=1.0, gt=0)
    content_frequency_init: float = Field(default=0.1, ge=0)
    lock_epsilon: float = Field(default=1e-4, gt=0, lt=1)
    implementation: Literal["auto", "chunked", "materialised", "flex"] = "auto"


@dataclass
class SSAIntermediates(Intermediates):
    """Telemetry of one ``ssa`` layer (tensors keep their graph; detach to log).

    Attributes:
        omega: (b, t, h) natural frequencies of the token oscillators.
        locked_fraction: (b, t, h) fraction of the prefix keys u <= t locked to query t.
        coupling: (h,) kappa; sequence_frequency: (h,) Omega.
    """

    omega: torch.Tensor
    locked_fraction: torch.Tensor
    coupling: torch.Tensor
    sequence_frequency: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalar summaries (floats) for logging."""
        return {"locked_fraction": float(self.locked_fraction.detach().mean()),
                "coupling": float(self.coupling.detach().mean())}


@register_attention("ssa")
class SSAAttention(QKVAttention):
    """Selective synchronization attention (see the module docstring for the equations).

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``): ``frequency`` (D -> h, no bias:
    the content shift f), and (h,) each of ``sequence_frequency`` (Omega) and ``coupling_raw``
    (kappa = softplus).

    Interventions (numbers/tensors broadcast, or callables of the current value): ``omega`` (the
    natural frequencies (b, t, h); 0 switches locking off: plain softmax attention),
    ``sequence_frequency`` (Omega, (h,)), ``coupling`` (kappa, (h,); 0: every token attends to itself).
    """

    Options = SSAOptions
    # (options, frozen parameter suffixes) per ablation, for `lotsim compare` arms ATTENTION:ABLATION;
    # SSA has no phase state: "frozen-phases" holds the natural frequencies at init
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "no-oscillator": {"options": {"locking": False, "rope": True}, "freeze": []},
        "frozen-phases": {"options": {}, "freeze": ["frequency.weight", "sequence_frequency"]},
    }
    intervention_names = ("omega", "sequence_frequency", "coupling")

    def __init__(self, config, options: SSAOptions, layer: int = 0):
        super().__init__(config, options, layer)
        h = self.n_heads
        self.seq_len = config.seq_len
        self.frequency = nn.Linear(self.d_model, h, bias=False)
        self.sequence_frequency = nn.Parameter(torch.empty(h))
        self.coupling_raw = nn.Parameter(torch.empty(h))
        self.init_parameters(config.init_std)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """Frequency spectrum 1 .. 1/seq_len rad per token over heads, small content shifts, kappa."""
        o: SSAOptions = self.options
        nn.init.normal_(self.frequency.weight, std=o.content_frequency_init / math.sqrt(self.d_model))
        spectrum = self.sequence_frequency
        spectrum.copy_(frequency_spectrum(self.n_heads, self.seq_len, dtype=spectrum.dtype, device=spectrum.device))
        self.coupling_raw.fill_(inverse_softplus(o.coupling_init))

    def natural_frequencies(self, x: torch.Tensor, sequence_frequency: torch.Tensor) -> torch.Tensor:
        """omega (b, t, h) = Omega_h t + f_h(x_t): the content shifts advanced along the sequence."""
        return advance(self.frequency(x), sequence_frequency)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, SSAIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`SSAIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: SSAOptions = self.options
        q, k, v = self.project_qkv(x, rope if o.rope else None)  # (b, h, t, d) each
        sequence_frequency = apply_intervention(iv, "sequence_frequency", self.sequence_frequency)
        omega = self.natural_frequencies(x, sequence_frequency)
        if not o.locking:
            omega = torch.zeros_like(omega)
        omega = apply_intervention(iv, "omega", omega)
        coupling = apply_intervention(iv, "coupling", F.softplus(self.coupling_raw))
        fraction = None
        if not o.locking and not iv:
            y = self.attend(q, k, v)  # equal frequencies: every pair locked, A = softmax (one SDPA call)
        elif _use_flex(o.implementation, q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad):
            y = flex_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        elif o.implementation == "materialised" or _exporting():
            y, fraction = materialised_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        else:
            y, fraction = chunked_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        y = self.merge_heads(y)
        if not return_intermediates:
            return y, None
        if fraction is None:
            with torch.no_grad():
                _, fraction = chunked_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        return y, SSAIntermediates(layer=self.layer, omega=omega, locked_fraction=fraction, coupling=coupling,
                                   sequence_frequency=sequence_frequency)

    def extra_repr(self) -> str:
        o: SSAOptions = self.options
        return f"rope={o.rope}, implementation={o.implementation}"


__all__ = ["SSAAttention", "SSAIntermediates", "SSAOptions"]
