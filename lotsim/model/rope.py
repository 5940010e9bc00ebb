"""Rotary position embedding (RoPE, Su et al. 2021), rotate-half layout.

Legend: ``b`` batch, ``h`` heads, ``t`` tokens, ``d`` head dim (even).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Rope(NamedTuple):
    """Rotary tables for the first ``t`` positions.

    Attributes:
        cos: (t, d) cosines, the two halves of the head dim repeated.
        sin: (t, d) sines, same layout.
    """

    cos: torch.Tensor
    sin: torch.Tensor


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> Rope:
    """Rotary tables for positions ``0..seq_len-1``, computed in float64 and cast to ``dtype``.

    Returns:
        :class:`Rope` with cos, sin of shape (seq_len, head_dim).
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (t, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (t, d)
    return Rope(angles.cos().to(dtype), angles.sin().to(dtype))


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate ``x`` (b, h, t, d) by the tables ``rope`` (t, d); returns (b, h, t, d).

    ``x cos + rotate_half(x) sin`` with ``rotate_half(x) = (-x2, x1)``, written as
    ``x cos + roll(x, d/2) sin'`` where ``sin'`` carries rotate-half's sign on its first half: three
    elementwise passes (roll, mul, addcmul) instead of five, which on a CPU cuts RoPE's forward +
    backward time by about a third (docs/performance.md, "Training performance").
    """
    half = x.shape[-1] // 2
    signed_sin = torch.cat([-rope.sin[..., :half], rope.sin[..., half:]], dim=-1)  # (t, d), tiny
    return torch.addcmul(x * rope.cos, x.roll(half, -1), signed_sin)
