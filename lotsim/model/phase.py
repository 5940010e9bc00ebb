"""The phase toolbox every oscillator attention builds on: pure functions, no modules.

Each attention variant (``lattice``, ``pma``, ``torus``, ``fsn``, ``ssa``) keeps only its own maths
and takes the shared pieces from here:

* :func:`inverse_softplus`, :func:`frequency_spectrum` and :func:`init_content_projection` —
  parameter initialisation;
* :func:`content_phases` — a token's phases from its content, never a raw angle into a linear layer;
* :func:`advance` — the frequency-driven advance along the sequence, ``phi_t = theta_t + Omega t``;
* :func:`integrate` — ``n`` steps of THE Kuramoto core (:mod:`lotsim.dynamics.core`), in any layout
  of replicas and nodes;
* :func:`causal_mask`, :func:`causal_softmax` and :func:`causal_attention` (one padded causal
  ``scaled_dot_product_attention`` call);
* :func:`phase_features` — the phase-modulated q/k feature map behind every fused score, and
  :func:`fused_phase_attention`, the one SDPA call that uses it.

**The feature map.** ``cos(a - b) = cos a cos b + sin a sin b`` turns a phase term of the scores
into extra q/k columns, so attention stays one SDPA call with O(T) memory instead of a T x T score
tensor. With phases ``phi`` on the query side and ``psi`` on the key side (per channel ``c``):

* additive: ``q' = [q, g cos phi, g sin phi]``, ``k' = [k, cos psi, sin psi]``, so
  ``q'.k' = q.k + sum_c g_c cos(phi_c - psi_c)`` (``lattice``'s additive score with
  ``g = sqrt(d) a``; ``torus``'s gated cosine score with no q/k part);
* multiplicative: ``q' = [(1 - g) q, g q cos phi, g q sin phi]``, ``k' = [k, k cos psi, k sin psi]``,
  so ``q'.k' = q.k (1 - g + g cos(phi - psi))`` (``lattice``'s multiplicative score; ``pma``'s score
  is the same with its own key phases and the temperature tau per query row folded into q', so the
  multiplicative lattice score is PMA's with tau = 1).

The gain sits on the query side only, so any sign works; q and k enter unchanged, so gain 0 gives
the plain dot-product scores. The explicit-scores references live in :mod:`lotsim.model.oracles`.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``m`` phase channels per head, ``d`` head dim,
``e``/``f`` feature widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lotsim.dynamics.core import KuramotoSystem, Method, kuramoto_integrator

SCORES = ("additive", "multiplicative")


# --------------------------------------------------------------------------------------------------
# Initialisation


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0): the raw value that initialises a softplus-positive parameter."""
    return y + math.log(-math.expm1(-y))


def frequency_spectrum(n: int, seq_len: int, *, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) geometric spread of frequencies ``seq_len ** (-i / (n - 1))``, i = 0..n-1.

    From 1 rad per token (head 0) down to 1/seq_len rad per token (the last head): each head gets
    its own relative-position scale, from neighbouring tokens to the whole context.
    """
    idx = torch.arange(n, dtype=dtype, device=device)
    return float(seq_len) ** (-idx / max(n - 1, 1))


def init_content_projection(projection: nn.Linear) -> None:
    """Initialise a :func:`content_phases` projection D -> 2n as N(0, 1/D): each pair (p0, p1) of a
    token of unit-size features is then a complex number of size ~1, so its angle is well defined."""
    nn.init.normal_(projection.weight, std=1.0 / math.sqrt(projection.in_features))


# --------------------------------------------------------------------------------------------------
# Phases


def _pair_parts(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(re, im) of the pairs (..., 2) as contiguous tensors: torch's CPU atan2 vectorises only then
    (16x faster on (12, 64, 4, 16))."""
    return pairs[..., 0].contiguous(), pairs[..., 1].contiguous()


class _PairAngle(torch.autograd.Function):
    """``atan2(p1, p0)`` of the pairs (..., 2) with a hand-written backward (training).

    torch's own backward recomputes ``p0^2 + p1^2`` for each operand and goes back through the
    unbinding of the pairs (a stack along a trailing axis of size 2, a slow strided copy); this one
    forms ``w = g / (p0^2 + p1^2)`` once and writes ``(-w p1, w p0)`` interleaved in one pass
    (through a complex view). About 1.6x faster forward + backward on (12, 64, 8, 16) phases.
    """

    @staticmethod
    def forward(ctx, pairs: torch.Tensor) -> torch.Tensor:
        re, im = _pair_parts(pairs)
        ctx.save_for_backward(re, im)
        return torch.atan2(im, re)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        re, im = ctx.saved_tensors
        w = grad / (re * re + im * im)
        return torch.view_as_real(torch.complex(-w * im, w * re))


def content_phases(projection: nn.Module, x: torch.Tensor, *shape: int) -> torch.Tensor:
    """Phases from content: two projections of each token read as a complex number.

    Args:
        projection: a map D -> 2 * prod(shape) (an ``nn.Linear``).
        x: (b, t, D).
        shape: the phase shape per token, e.g. ``(h,)`` or ``(h, m)``.

    Returns:
        (b, t, *shape) ``atan2(p1, p0)``.
    """
    b, t, _ = x.shape
    pairs = projection(x).view(b, t, *shape, 2)
    if (pairs.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and pairs.dtype in (torch.float32, torch.float64)):
        return _PairAngle.apply(pairs)  # training: the cheaper backward
    re, im = _pair_parts(pairs)
    return torch.atan2(im, re)


def advance(theta: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """``phi_t = theta_t + frequency * t`` along the token axis 1.

    Args:
        theta: (b, t, *s) phases.
        frequency: broadcastable to ``s`` (e.g. (h,) or (h, m)), radians per token.

    Returns:
        (b, t, *s).
    """
    position = torch.arange(theta.shape[1], dtype=theta.dtype, device=theta.device)
    return theta + position.view(-1, *([1] * frequency.dim())) * frequency


def integrate(system: KuramotoSystem, theta0: torch.Tensor, *, method: Method, dt: float,
              n_steps: int) -> torch.Tensor:
    """``n_steps`` steps of the core's integrator from ``theta0``; ``theta0`` itself when 0.

    Args:
        system: the Kuramoto system (its coupling operator, frequencies, couplings; the tensors
            broadcast against the state (replicas, nodes)).
        theta0: initial phases whose trailing axes hold the system's nodes in its layout, e.g.
            (replicas, nodes), or (b, t, h) with h nodes (every token a replica) or t * h nodes
            (every sequence a replica).
        method, dt, n_steps: the integrator and its step.

    Returns:
        Phases after the steps, of theta0's shape.
    """
    if n_steps == 0:
        return theta0
    integrator = kuramoto_integrator(system, method=method, dt=dt)
    state = integrator.init_fn(theta0.reshape(-1, system.operator.n))
    return integrator.step_fn(state, n_steps).theta.reshape(theta0.shape)


def heads_first(phases: torch.Tensor) -> torch.Tensor:
    """(b, t, h) -> (b, h, t, 1), or (b, t, h, m) -> (b, h, t, m): the layout of q and k."""
    return phases.transpose(1, 2).unsqueeze(-1) if phases.dim() == 3 else phases.transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Causal attention


def causal_mask(t: int, device: torch.device | str | None = None, *, strict: bool = False, keys: int | None = None,
                query_start: int = 0) -> torch.Tensor:
    """(t, keys) bool, True where key u is NOT visible from the query at position p: u > p
    (``strict``: u >= p).

    The default is the (t, t) square (query row i at position i); a block of ``t`` query rows at
    positions ``query_start ..`` against the keys ``0 .. keys - 1`` gives those rows of the square.
    """
    return torch.ones(t, keys or t, dtype=torch.bool, device=device).triu(query_start + (0 if strict else 1))


def causal_softmax(scores: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """Row softmax of (..., t, t) scores over keys u <= t (``strict``: u <= t - 1; row 0 is then 0)."""
    t = scores.shape[-1]
    future = causal_mask(t, scores.device, strict=strict)
    if strict:
        future[0, 0] = False  # a finite row; zeroed below (no NaN in the backward)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    if strict:
        first = torch.zeros(t, 1, dtype=scores.dtype, device=scores.device)
        first[0] = 1.0
        weights = weights * (1 - first)
    return weights


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = 1.0,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Causal ``F.scaled_dot_product_attention`` with q/k and v zero-padded to one width.

    Zero columns change no dot product and no output column; equal widths keep torch's fused CPU
    kernel (it otherwise falls back to the T x T math path).

    Args:
        q, k: (b, h, t, e); v: (b, h, t, f).
        scale: the softmax scale applied to q.k (None: 1/sqrt of the padded width).
        dropout_p: attention dropout.

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


# --------------------------------------------------------------------------------------------------
# The phase-modulated feature map


def phase_features(phases: torch.Tensor, gain: torch.Tensor, q: torch.Tensor | None = None,
                   k: torch.Tensor | None = None, score: str = "additive",
                   key_phases: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q', k' whose dot product is the phase-modulated score (see the module docstring).

    Args:
        phases: (b, h, t, m) query phases phi (heads first, see :func:`heads_first`).
        gain: (h, m) g, one per head and channel (any sign).
        q, k: (b, h, t, d), or None for a pure phase score (additive only).
        score: ``additive`` (``q.k + sum_c g_c cos(phi_c - psi_c)``) or ``multiplicative``
            (``q.k (1 - g + g cos(phi - psi))``, m = 1).
        key_phases: (b, h, t, m) psi; default phi.

    Returns:
        (q', k'), each (b, h, t, e): e = d + 2m (additive; 2m without q, k) or 3d (multiplicative).
    """
    g = gain[:, None, :]  # (h, 1, m)
    cos_phi, sin_phi = torch.cos(phases), torch.sin(phases)
    cos_psi, sin_psi = (cos_phi, sin_phi) if key_phases is None else (torch.cos(key_phases), torch.sin(key_phases))
    if score == "additive":
        qs, ks = [g * cos_phi, g * sin_phi], [cos_psi, sin_psi]
        if q is not None:
            qs, ks = [q, *qs], [k, *ks]
        return torch.cat(qs, dim=-1), torch.cat(ks, dim=-1)
    if score == "multiplicative":
        q2 = torch.cat([(1 - g) * q, (g * cos_phi) * q, (g * sin_phi) * q], dim=-1)
        k2 = torch.cat([k, cos_psi * k, sin_psi * k], dim=-1)
        return q2, k2
    raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")


def fused_phase_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                          gain: torch.Tensor, score: str = "additive", dropout_p: float = 0.0, *,
                          key_phases: torch.Tensor | None = None,
                          temperature: torch.Tensor | None = None) -> torch.Tensor:
    """Phase-modulated causal attention as ONE ``scaled_dot_product_attention`` call.

    Scores, per head h (softmax over keys u <= t), divided by tau_t when a temperature is given::

        additive:        q.k / sqrt(d) + a_h cos(phi_t - psi_u)
        multiplicative: (q.k / sqrt(d)) (1 - a_h + a_h cos(phi_t - psi_u))

    Args:
        q, k, v: (b, h, t, d).
        phases: (b, t, h) phi.
        gain: (h,) a.
        score: ``additive`` | ``multiplicative``.
        dropout_p: attention dropout.
        key_phases: (b, t, h) psi; default phi.
        temperature: (b, t, h) tau per query row (multiplied into q'); default 1.

    Returns:
        (b, h, t, d).
    """
    d = q.shape[-1]
    g = gain.view(-1, 1)  # (h, m = 1)
    if score == "additive":
        g = math.sqrt(d) * g  # the phase columns are scaled by 1/sqrt(d) with q.k
    psi = None if key_phases is None else heads_first(key_phases)
    q2, k2 = phase_features(heads_first(phases), g, q, k, score, psi)
    if temperature is not None:
        q2 = q2 * (1.0 / heads_first(temperature))
    return causal_attention(q2, k2, v, scale=1.0 / math.sqrt(d), dropout_p=dropout_p)


__all__ = [
    "SCORES",
    "advance",
    "causal_attention",
    "causal_mask",
    "causal_softmax",
    "content_phases",
    "frequency_spectrum",
    "fused_phase_attention",
    "heads_first",
    "init_content_projection",
    "integrate",
    "inverse_softplus",
    "phase_features",
]
