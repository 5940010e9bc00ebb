"""Materialised references: the attention maths with explicit (t, t) scores and masks.

Each function here computes what a fused O(T)-memory path of :mod:`lotsim.model.phase` (or of a
variant) computes, but the direct way: pairwise phase differences, explicit T x T scores, explicit
causal masks. They are the oracles the tests compare the fused paths with, and what a variant's
``implementation="materialised"`` option runs (never for training: T x T memory).

Legend: ``b`` batch, ``t`` tokens, ``u`` keys, ``h`` heads, ``d`` head dim.
"""

from __future__ import annotations

import math

import torch

from lotsim.model.phase import SCORES, advance, causal_mask, heads_first


def materialised_phase_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                                 gain: torch.Tensor, score: str = "additive", *,
                                 key_phases: torch.Tensor | None = None,
                                 temperature: torch.Tensor | None = None) -> torch.Tensor:
    """Reference for :func:`lotsim.model.phase.fused_phase_attention` with (b, h, t, t) scores.

    The phase term is ``cos(phi_q - psi_k)`` computed directly, not through the identity.

    Args:
        q, k, v: (b, h, t, d).
        phases: (b, t, h) phi; key_phases: (b, t, h) psi (default phi).
        gain: (h,) a.
        score: ``additive`` | ``multiplicative``.
        temperature: (b, t, h) tau per query row (default 1).

    Returns:
        (b, h, t, d).
    """
    d, t = q.shape[-1], q.shape[-2]
    phi = phases.transpose(1, 2)  # (b, h, t)
    psi = phi if key_phases is None else key_phases.transpose(1, 2)
    coherence = torch.cos(phi[..., :, None] - psi[..., None, :])  # (b, h, t, u)
    a = gain.view(-1, 1, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if score == "additive":
        scores = scores + a * coherence
    elif score == "multiplicative":
        scores = scores * (1 - a + a * coherence)
    else:
        raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
    if temperature is not None:
        scores = scores / temperature.transpose(1, 2)[..., None]
    return torch.softmax(scores.masked_fill(causal_mask(t, q.device), float("-inf")), dim=-1) @ v


def materialised_prefix_statistics(phases: torch.Tensor, key_phases: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`lotsim.model.pma.prefix_statistics` with explicit (t, t) masks.

    Args:
        phases: (b, t, h) query phases phi (also the population of R).
        key_phases: (b, t, h) psi.

    Returns:
        (R, Var(P)) each (b, t, h), over the keys u <= t of each query t.
    """
    t = phases.shape[1]
    mask = (~causal_mask(t, phases.device)).to(phases.dtype)  # [t, u]: u <= t
    count = mask.sum(-1)[:, None]
    ph, kp = phases.transpose(1, 2), key_phases.transpose(1, 2)  # (b, h, t)
    c = (mask * torch.cos(ph)[..., None, :]).sum(-1) / count[:, 0]
    s = (mask * torch.sin(ph)[..., None, :]).sum(-1) / count[:, 0]
    r = torch.sqrt((c * c + s * s).clamp_min(1e-30))
    coherence = torch.cos(ph[..., :, None] - kp[..., None, :])  # (b, h, t, u)
    mean = (mask * coherence).sum(-1, keepdim=True) / count
    var = (mask * (coherence - mean) ** 2).sum(-1) / count[:, 0]
    return r.transpose(1, 2), var.transpose(1, 2)


def materialised_scores(theta: torch.Tensor, rotary_rate: torch.Tensor, gate: torch.Tensor,
                        key_theta: torch.Tensor | None = None) -> torch.Tensor:
    """Reference for the phase-state scores ``s[b, h, t, u] = sum_c g_c cos(a_tc - b_uc)`` from
    explicit differences ((b, h, t, t, m) memory); see :func:`lotsim.model.phase_state.drifted_features`.

    Args:
        theta: (b, t, h, m) query phases (and key phases unless ``key_theta`` is given).
        rotary_rate: (h, m) rho; ``a = theta + rho * position``, ``b`` the same of the key phases.
        gate: (h, m) g.
        key_theta: (b, t, h, m) separate key phases, or None.

    Returns:
        (b, h, t, u) scores (no mask).
    """
    a = heads_first(advance(theta, rotary_rate))  # (b, h, t, m)
    bk = a if key_theta is None else heads_first(advance(key_theta, rotary_rate))
    return (gate[:, None, None, :] * torch.cos(a[:, :, :, None, :] - bk[:, :, None, :, :])).sum(-1)


def materialised_frustrated_update(theta: torch.Tensor, weights: torch.Tensor, delay_weights: torch.Tensor,
                                   kernel: torch.Tensor) -> torch.Tensor:
    """Reference for ``fsn``'s update from explicit pairwise differences ((b, h, t, t, m) memory).

    ``sum_k sum_u A_tu [a_k sin(k(theta_u - theta_t)) + b_k cos(k(theta_u - theta_t))]`` plus the same
    with A' and theta_{u+1}; ``a sin x + b cos x = |c| sin(x - alpha)`` for ``c = a + ib = |c| e^{-i alpha}``.

    Args:
        theta: (b, t, h, m); weights, delay_weights: (b, h, t, t) A and A'; kernel: (4, h, m, M)
            (Re c, Im c, Re d, Im d).

    Returns:
        (b, t, h, m).
    """
    th = theta.transpose(1, 2)  # (b, h, t, m)
    successor = th.roll(-1, dims=2)  # theta_{u+1}; the wrapped last row gets weight 0 in A'
    total = torch.zeros_like(th)
    for k in range(kernel.shape[-1]):
        branches = ((weights, th, kernel[0], kernel[1]), (delay_weights, successor, kernel[2], kernel[3]))
        for w, src, re, im in branches:
            diff = (k + 1) * (src[:, :, None, :, :] - th[:, :, :, None, :])  # (b, h, t, u, m)
            pair = re[:, None, None, :, k] * torch.sin(diff) + im[:, None, None, :, k] * torch.cos(diff)
            total = total + (w[..., None] * pair).sum(3)
    return total.transpose(1, 2)


__all__ = ["materialised_frustrated_update", "materialised_phase_attention", "materialised_prefix_statistics",
           "materialised_scores"]
