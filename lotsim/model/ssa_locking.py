"""SSA's locking attention weights, computed three ways (the maths of :mod:`lotsim.model.ssa`).

``A_tu = e^{s_tu} g_tu / sum_{u' <= t, locked} e^{s_tu'} g_tu'`` with ``g`` the steady-state locking
factor of two Kuramoto oscillators. ``materialised_ssa`` builds the (b, h, t, t) weights in one block
(the reference, and what ``torch.export`` traces); ``chunked_ssa`` computes the same weights by blocks
of query rows against their causal key prefix (memory O(t x chunk), recomputed in the backward);
``flex_ssa`` runs them as a FlexAttention ``score_mod`` (fused under ``torch.compile``).

Legend: ``b`` batch, ``t`` tokens, ``c`` query rows of a block, ``u`` keys, ``h`` heads, ``d`` head dim.
"""

from __future__ import annotations

import math

import torch

from lotsim.model.phase import causal_mask


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


__all__ = ["chunked_ssa", "flex_ssa", "locking", "materialised_ssa", "ssa_score_mod"]
