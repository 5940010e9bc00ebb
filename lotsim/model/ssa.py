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
approach this fixed point. The shared pieces come from :mod:`lotsim.model.phase` (the frequency
spectrum, the advance along the sequence, the causal mask of a block of query rows) and the
interventions from :func:`lotsim.model.interventions.apply_intervention`.

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
from lotsim.model.phase import advance, causal_mask, frequency_spectrum, inverse_softplus
from lotsim.model.rope import Rope


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


def _log_two_kappa(coupling: torch.Tensor) -> torch.Tensor:
    """log(2 kappa), (h,); kappa is floored at 1e-30 (kappa = 0: only the self pair locks)."""
    return torch.log(2 * coupling.abs().clamp_min(1e-30))


def _locking_factor(detuning: torch.Tensor, scores: torch.Tensor, log_two_kappa: torch.Tensor, epsilon: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(slack + eps) - sqrt(eps)`` (g up to its constant normaliser, which cancels in the
    attention weights) and the slack ``relu(1 - r^2)`` of ``r = |dw| / (2 kappa e^s)``; elementwise.

    r^2 is formed directly (``dw^2 e^{-2(s + log 2 kappa)}``) and stays NaN-free in float32: the
    exponent is clamped at 80 (e^80 is finite, so the self pair's 0 * e^80 stays 0; a pair that far
    from locking stays unlocked), and r^2 is capped at 4 (g(r >= 1) = 0), whose backward passes a
    zero gradient instead of multiplying 0 by an overflowed product.
    """
    r2 = (detuning.square() * torch.exp((-2 * (scores + log_two_kappa)).clamp_max(80.0))).clamp_max(4.0)
    slack = torch.relu(1 - r2)
    return torch.sqrt(slack + epsilon) - math.sqrt(epsilon), slack


def locking(scores: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor, epsilon: float,
            query_start: int = 0, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Steady-state locking factor g and locked mask for explicit scores.

    Args:
        scores: (b, h, c, u) q.k/sqrt(d) of the queries ``query_start .. query_start + c - 1`` against
            the keys ``0 .. u - 1`` (c = u = t and query_start 0 for the whole square).
        omega: (b, t', h) natural frequencies, t' >= max(u, query_start + c).
        coupling: (h,) kappa.
        epsilon: eps of g.
        query_start: position of the first query row.
        normalise: divide g by its constant so that g(0) = 1 (the attention weights do without).

    Returns:
        (g, locked), each (b, h, c, u); the self pair is always locked; causality is not applied.
    """
    c, u = scores.shape[-2:]
    om = omega.transpose(1, 2)  # (b, h, t')
    detuning = om[..., query_start:query_start + c, None] - om[..., None, :u]  # omega_t - omega_u
    g, slack = _locking_factor(detuning, scores, _log_two_kappa(coupling).view(-1, 1, 1), epsilon)
    if normalise:
        g = g / (math.sqrt(1 + epsilon) - math.sqrt(epsilon))  # g(0) = 1
    rows = torch.arange(query_start, query_start + c, device=scores.device)[:, None]
    self_pair = rows == torch.arange(u, device=scores.device)
    return g, (slack > 0) | self_pair


def _ssa_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor,
              epsilon: float, query_start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SSA output of the query rows ``q`` (b, h, c, d) at positions ``query_start ..`` against the keys
    ``k, v`` (b, h, u, d) at positions ``0 .. u - 1`` (u >= query_start + c: every key a row may see).

    Returns:
        (y (b, h, c, d), kept keys per row (b, h, c)).
    """
    c, u = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (b, h, c, u)
    g, locked = locking(scores, omega, coupling, epsilon, query_start, normalise=False)
    keep = locked & ~causal_mask(c, q.device, keys=u, query_start=query_start)
    # masked before the exponential (masked keys give exp(-inf) = 0 and a zero gradient, never inf);
    # stabiliser: the row max over kept keys (the ratio is unchanged; detached; the self pair is kept)
    masked = scores.masked_fill(~keep, float("-inf"))
    top = masked.amax(-1, keepdim=True).detach()
    w = torch.exp(masked - top) * g
    y = (w / w.sum(-1, keepdim=True)) @ v
    return y, keep.sum(-1)


def _prefix_fraction(kept: torch.Tensor) -> torch.Tensor:
    """Kept keys per query row (b, h, t) -> their fraction (b, t, h) of the row's prefix u <= t."""
    prefix = torch.arange(1, kept.shape[-1] + 1, device=kept.device, dtype=kept.dtype)
    return (kept / prefix).transpose(1, 2)


def materialised_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor,
                     coupling: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSA with explicit (b, h, t, t) weights (the reference of the chunked and flex paths).

    ``A_tu = e^{s_tu} g_tu / sum_{u' <= t, locked} e^{s_tu'} g_tu'`` (kappa cancels in the ratio except
    through r).

    Args:
        q, k, v: (b, h, t, d); omega: (b, t, h); coupling: (h,) kappa; epsilon: eps of g.

    Returns:
        (y (b, h, t, d), locked fraction (b, t, h) over the prefix).
    """
    y, kept = _ssa_rows(q, k, v, omega, coupling, epsilon, 0)
    return y, _prefix_fraction(kept.to(q.dtype))


def chunked_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor,
                epsilon: float, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`materialised_ssa` by blocks of ``chunk`` query rows, each against its causal key prefix.

    A block's weights are (b, h, chunk, <= t): memory O(t chunk) instead of O(t^2). Each row sees all
    of its keys in its block, so no online softmax is needed; the keys past a block's last row are
    skipped (half the work of the square at long t). With several blocks and gradients on, every
    block is recomputed in the backward (activation checkpointing) instead of keeping its weights.

    Args:
        q, k, v: (b, h, t, d); omega: (b, t, h); coupling: (h,); epsilon: eps of g; chunk: rows per block.

    Returns:
        (y (b, h, t, d), locked fraction (b, t, h) over the prefix), equal to :func:`materialised_ssa`.
    """
    t = q.shape[-2]
    if t <= chunk:
        return materialised_ssa(q, k, v, omega, coupling, epsilon)
    from torch.utils.checkpoint import checkpoint

    recompute = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, omega, coupling))
    ys, kept = [], []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        args = (q[..., start:end, :], k[..., :end, :], v[..., :end, :], omega, coupling, epsilon, start)
        y, n = checkpoint(_ssa_rows, *args, use_reentrant=False) if recompute else _ssa_rows(*args)
        ys.append(y)
        kept.append(n)
    return torch.cat(ys, dim=-2), _prefix_fraction(torch.cat(kept, dim=-1).to(q.dtype))


def ssa_score_mod(omega: torch.Tensor, coupling: torch.Tensor, epsilon: float):
    """FlexAttention ``score_mod`` of SSA: ``score + log g`` for kept pairs, -inf for the others.

    Args:
        omega: (b, t, h) natural frequencies; coupling: (h,) kappa; epsilon: eps of g.

    Returns:
        ``score_mod(score, b, h, q_idx, kv_idx)`` (elementwise; broadcasts over index tensors).
    """
    om = omega.transpose(1, 2).contiguous()  # (b, h, t)
    log_two_kappa = _log_two_kappa(coupling)

    def score_mod(score, b, h, q_idx, kv_idx):
        g, slack = _locking_factor(om[b, h, q_idx] - om[b, h, kv_idx], score, log_two_kappa[h], epsilon)
        keep = ((slack > 0) | (q_idx == kv_idx)) & (kv_idx <= q_idx)
        # -inf for masked pairs; the inner where keeps log's argument positive on either branch
        return torch.where(keep, score + torch.log(torch.where(keep, g, 1.0)), float("-inf"))

    return score_mod


def flex_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor,
             epsilon: float) -> torch.Tensor:
    """The same weights as :func:`materialised_ssa` through FlexAttention (log-weights as a score_mod).

    Args:
        q, k, v: (b, h, t, d); omega: (b, t, h); coupling: (h,); epsilon: eps of g.

    Returns:
        (b, h, t, d).
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    score_mod = ssa_score_mod(omega, coupling, epsilon)

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    t = q.shape[-2]
    mask = create_block_mask(causal, None, None, t, t, device=q.device)
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, scale=1.0 / math.sqrt(q.shape[-1]))


def _use_flex(implementation: str, backward_on_cpu: bool = False) -> bool:
    """Whether ``implementation`` runs through FlexAttention: ``flex``, or ``auto`` while
    ``torch.compile`` traces (never under ``torch.export``/ONNX, which cannot export it, nor when a
    backward on the CPU is needed: FlexAttention has none there, compiled or not)."""
    if implementation != "auto":
        return implementation == "flex"
    compiler = getattr(torch, "compiler", None)
    if compiler is None or not compiler.is_compiling() or backward_on_cpu:
        return False
    return not _exporting()


def _exporting() -> bool:
    """Whether ``torch.export`` (and so the ONNX exporter) is tracing: it gets the one-block
    materialised path (a loop over blocks would fix the exported length)."""
    is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
    return is_exporting is not None and is_exporting()


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


__all__ = ["SSAAttention", "SSAIntermediates", "SSAOptions", "chunked_ssa", "flex_ssa", "locking",
           "materialised_ssa", "ssa_score_mod"]
