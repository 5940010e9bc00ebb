"""``ssa``: Selective Synchronization Attention (Hays 2026, arXiv 2602.14445; the OSN block).

Provenance: only the abstract was readable (``../seeds/ssa-selective-synchronization-attention.md``;
``design/oscillator-attention-notes.md`` §1.3). The abstract fixes: a closed-form operator from the
*steady state* of the Kuramoto model; tokens are oscillators with learnable natural frequencies;
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
low-rank feature map, so no plain SDPA rewrite. ``materialised`` builds the (b, h, t, t) weights —
T x T memory is accepted for this variant. ``flex`` runs the same math as a FlexAttention
``score_mod`` (log w, double-``where`` so unlocked pairs get -inf and no NaN gradient) with a causal
block mask: fused under ``torch.compile`` on GPU; eager CPU FlexAttention materialises anyway and has
no backward, so it is for inference checks there. ``auto`` (default) uses flex only while
``torch.compile`` traces (and never under ``torch.export``/ONNX, which cannot export it), else the
materialised path. Closed form, no integrator: the core's ODE would only approach this fixed point.

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
from lotsim.model.interventions import override
from lotsim.model.phase import inverse_softplus
from lotsim.model.rope import Rope, apply_rope


class SSAOptions(AttentionOptions):
    """Options of the ``ssa`` attention.

    Attributes:
        locking: the oscillator locking weights (False: all frequencies equal, i.e. softmax attention
            through SDPA; with ``rope=True`` that is vanilla: the ``no-oscillator`` ablation).
        rope: also apply RoPE to q and k (default off: the frequencies are the positional encoding).
        coupling_init: initial kappa (> 0).
        content_frequency_init: std of the content-frequency projection's init, times 1/sqrt(D).
        lock_epsilon: eps of g(r) (bounds d w / d r at the locking threshold by 1/sqrt(eps)).
        implementation: ``auto``, ``materialised`` or ``flex`` (see the module docstring).
    """

    locking: bool = True
    rope: bool = False
    coupling_init: float = Field(default=1.0, gt=0)
    content_frequency_init: float = Field(default=0.1, ge=0)
    lock_epsilon: float = Field(default=1e-4, gt=0, lt=1)
    implementation: Literal["auto", "materialised", "flex"] = "auto"


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


def locking(scores: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor, epsilon: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steady-state locking factor g and locked mask for explicit scores.

    Args:
        scores: (b, h, t, t) q.k/sqrt(d).
        omega: (b, t, h) natural frequencies.
        coupling: (h,) kappa.
        epsilon: eps of g.

    Returns:
        (g, locked), each (b, h, t, t); the diagonal is always locked; causality is not applied.
    """
    om = omega.transpose(1, 2)  # (b, h, t)
    detuning = (om[..., :, None] - om[..., None, :]).abs()  # |omega_t - omega_u|
    # r = |dw| / (2 kappa e^s); the exponent is clamped so float32 cannot overflow to inf * 0
    r = detuning * torch.exp((-scores).clamp_max(60.0)) / (2 * coupling.abs().clamp_min(1e-30)).view(-1, 1, 1)
    slack = torch.relu(1 - r * r)
    g = (torch.sqrt(slack + epsilon) - math.sqrt(epsilon)) / (math.sqrt(1 + epsilon) - math.sqrt(epsilon))
    t = scores.shape[-1]
    eye = torch.eye(t, dtype=torch.bool, device=scores.device)
    return g, (slack > 0) | eye


def materialised_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor,
                     coupling: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSA with explicit (b, h, t, t) weights.

    ``A_tu = e^{s_tu} g_tu / sum_{u' <= t, locked} e^{s_tu'} g_tu'`` (kappa cancels in the ratio except
    through r).

    Args:
        q, k, v: (b, h, t, d); omega: (b, t, h); coupling: (h,) kappa; epsilon: eps of g.

    Returns:
        (y (b, h, t, d), locked fraction (b, t, h) over the prefix).
    """
    d, t = q.shape[-1], q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    g, locked = locking(scores, omega, coupling, epsilon)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    keep = locked & causal
    # stabiliser: the row max over kept keys (the ratio is unchanged; detached)
    top = scores.masked_fill(~keep, float("-inf")).amax(-1, keepdim=True).detach()
    w = torch.where(keep, torch.exp(scores - top) * g, torch.zeros_like(g))
    y = (w / w.sum(-1, keepdim=True)) @ v
    fraction = keep.to(q.dtype).sum(-1) / causal.to(q.dtype).sum(-1)  # (b, h, t)
    return y, fraction.transpose(1, 2)


def flex_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor,
             epsilon: float) -> torch.Tensor:
    """The same weights as :func:`materialised_ssa` through FlexAttention (log-weights as a score_mod).

    Args:
        q, k, v: (b, h, t, d); omega: (b, t, h); coupling: (h,); epsilon: eps of g.

    Returns:
        (b, h, t, d).
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    om = omega.transpose(1, 2).contiguous()  # (b, h, t)
    two_kappa = 2 * coupling.abs().clamp_min(1e-30)
    sqrt_eps = math.sqrt(epsilon)
    g_zero = math.sqrt(1 + epsilon) - sqrt_eps

    def score_mod(score, b, h, q_idx, kv_idx):
        r = (om[b, h, q_idx] - om[b, h, kv_idx]).abs() * torch.exp((-score).clamp_max(60.0)) / two_kappa[h]
        slack = torch.relu(1 - r * r)
        self_pair = q_idx == kv_idx
        g = (torch.sqrt(slack + epsilon) - sqrt_eps) / g_zero
        keep = ((slack > 0) | self_pair) & (kv_idx <= q_idx)
        return torch.where(keep, score + torch.log(torch.where(keep, g, 1.0)), float("-inf"))

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    t = q.shape[-2]
    mask = create_block_mask(causal, None, None, t, t, device=q.device)
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, scale=1.0 / math.sqrt(q.shape[-1]))


def _use_flex(implementation: str) -> bool:
    if implementation != "auto":
        return implementation == "flex"
    compiler = getattr(torch, "compiler", None)
    if compiler is None or not compiler.is_compiling():
        return False
    is_exporting = getattr(compiler, "is_exporting", None)
    return not (is_exporting is not None and is_exporting())


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
        h = self.n_heads
        nn.init.normal_(self.frequency.weight, std=o.content_frequency_init / math.sqrt(self.d_model))
        idx = torch.arange(h, dtype=self.sequence_frequency.dtype, device=self.sequence_frequency.device)
        self.sequence_frequency.copy_(float(self.seq_len) ** (-idx / max(h - 1, 1)))
        self.coupling_raw.fill_(inverse_softplus(o.coupling_init))

    def natural_frequencies(self, x: torch.Tensor, sequence_frequency: torch.Tensor) -> torch.Tensor:
        """omega (b, t, h) = Omega_h t + f_h(x_t)."""
        position = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)[:, None]
        return position * sequence_frequency + self.frequency(x)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, SSAIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`SSAIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: SSAOptions = self.options
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if o.rope:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        sequence_frequency = self.sequence_frequency
        if "sequence_frequency" in iv:
            sequence_frequency = override(sequence_frequency, iv["sequence_frequency"])
        omega = self.natural_frequencies(x, sequence_frequency)
        if not o.locking:
            omega = torch.zeros_like(omega)
        if "omega" in iv:
            omega = override(omega, iv["omega"])
        coupling = F.softplus(self.coupling_raw)
        if "coupling" in iv:
            coupling = override(coupling, iv["coupling"])
        fraction = None
        if not o.locking and not iv:
            y = self.attend(q, k, v)  # equal frequencies: every pair locked, A = softmax (one SDPA call)
        elif _use_flex(o.implementation):
            y = flex_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        else:
            y, fraction = materialised_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        y = self.merge_heads(y)
        if not return_intermediates:
            return y, None
        if fraction is None:
            _, fraction = materialised_ssa(q, k, v, omega, coupling, o.lock_epsilon)
        return y, SSAIntermediates(layer=self.layer, omega=omega, locked_fraction=fraction, coupling=coupling,
                                   sequence_frequency=sequence_frequency)

    def extra_repr(self) -> str:
        o: SSAOptions = self.options
        return f"rope={o.rope}, implementation={o.implementation}"


__all__ = ["SSAAttention", "SSAIntermediates", "SSAOptions", "flex_ssa", "locking", "materialised_ssa"]
