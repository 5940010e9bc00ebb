"""The ``lattice`` attention's sequence mode (``dynamics="sequence"``): the token index as a second
lattice dimension, so information travels along the sequence within a layer.

On the space-time lattice (token x head) each oscillator is, besides the head-lattice coupling within
its token, driven by the exponentially decayed mean of the same head's phasors at strictly earlier
tokens::

    dtheta_{t,h}/ds += sigma_h (1 - g_h) sum_{u<t} g_h^(t-1-u) sin(theta_{u,h} - theta_{t,h}),  g_h = exp(-1/lambda_h)

with learned sigma (``sequence_coupling``) and lambda > 0 (``sequence_length``, in tokens). The
decayed sum is :func:`causal_decayed_mean`, a log2(T)-depth doubling scan: no Python loop over
tokens, exactly causal. :class:`SpaceTimeOperator` is that coupling as an operator of the Kuramoto
core and :func:`space_time_system` the system, so the sequence mode runs through the same integrator
as the simulator. With sigma = 0 it equals the parallel mode. :class:`SequenceMode` adds the mode's
parameters to the attention (their names are the attention's own, as checkpoints hold them).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``c`` feature channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import CouplingOperator, KuramotoSystem
from lotsim.model.attention import AttentionOptions
from lotsim.model.interventions import apply_intervention
from lotsim.model.phase import inverse_softplus


class SequenceModeOptions(AttentionOptions):
    """The ``lattice`` options of the sequence mode.

    Attributes:
        dynamics: ``parallel`` (each token's phases evolve on the head lattice independently) or
            ``sequence`` (plus causal coupling along the token axis).
        sequence_coupling_init: initial coupling sigma along the sequence (``dynamics="sequence"``).
        sequence_length_init: initial decay length lambda, in tokens, of that coupling (> 0).
    """

    dynamics: Literal["parallel", "sequence"] = "parallel"
    sequence_coupling_init: float = 0.5
    sequence_length_init: float = Field(default=4.0, gt=0)


class SequenceMode:
    """Mixin of an attention with :class:`SequenceModeOptions` (``self.options``) and ``self.n_heads``:
    the mode's (h,) parameters ``sequence_coupling`` (sigma) and ``sequence_length_raw``
    (lambda = softplus), present only with ``dynamics="sequence"``."""

    def add_sequence_parameters(self) -> None:
        """Register the parameters (with ``dynamics="sequence"``; nothing otherwise)."""
        if self.options.dynamics == "sequence":
            self.sequence_coupling = nn.Parameter(torch.empty(self.n_heads))
            self.sequence_length_raw = nn.Parameter(torch.empty(self.n_heads))

    @torch.no_grad()
    def init_sequence_parameters(self) -> None:
        """sigma = ``sequence_coupling_init``, lambda = ``sequence_length_init``."""
        o: SequenceModeOptions = self.options
        if o.dynamics == "sequence":
            self.sequence_coupling.fill_(o.sequence_coupling_init)
            self.sequence_length_raw.fill_(inverse_softplus(o.sequence_length_init))

    def sequence_parameters(self, interventions: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"sequence_coupling": sigma, "sequence_length": lambda}`` with the interventions of those
        names applied; empty with ``dynamics="parallel"``."""
        if self.options.dynamics != "sequence":
            return {}
        return {"sequence_coupling": apply_intervention(interventions, "sequence_coupling", self.sequence_coupling),
                "sequence_length": apply_intervention(interventions, "sequence_length",
                                                      F.softplus(self.sequence_length_raw))}


def causal_decayed_mean(x: torch.Tensor, decay: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Exponentially decayed mean over strictly earlier tokens.

    ``y[:, t] = (1 - g) * sum_{u < t} g ** (t - 1 - u) * x[:, u]`` with ``g = decay`` per head;
    computed by a doubling (Hillis-Steele) scan in ceil(log2 max_len) shift-and-add rounds, which
    only ever reads earlier positions (exactly causal, no loop over tokens). The round count
    depends on ``max_len`` only, not on the actual length, so an exported graph (ONNX, torch.export)
    with a dynamic sequence length is right for every length up to ``max_len``.

    Args:
        x: (b, t, h, c).
        decay: (h,) in [0, 1).
        max_len: longest sequence the graph must handle (default: t).

    Returns:
        (b, t, h, c).
    """
    t = x.shape[1]
    g = decay[:, None]  # (h, 1), g ** shift
    z = x  # inclusive scan z_t = sum_{k < shift} g^k x_{t-k}
    for r in range(math.ceil(math.log2(max(max_len or t, 2)))):
        shift = 2**r
        z = z + g * F.pad(z, (0, 0, 0, 0, shift, 0))[:, :t]  # z_t += g^shift z_{t-shift}
        g = g * g
    return (1 - decay[:, None]) * F.pad(z, (0, 0, 0, 0, 1, 0))[:, :t]  # exclusive: strictly past


@dataclass(frozen=True)
class SpaceTimeOperator(CouplingOperator):
    """Coupling on the (token x head) space-time lattice for ``dynamics="sequence"``.

    Node index = t * h_count + h. ``aggregate`` = head-lattice coupling within each token plus the
    causal decayed mean of the same head over earlier tokens; both couplings are folded in, so
    the system's ``coupling`` is 1.

    Attributes:
        head_weight: (h, h) kappa_h W_hg.
        sequence_weight: (h,) coupling along the sequence.
        decay: (h,) exp(-1 / sequence_length).
        tokens: t.
        max_tokens: the model's seq_len (fixes the scan depth, see :func:`causal_decayed_mean`).
    """

    head_weight: torch.Tensor
    sequence_weight: torch.Tensor
    decay: torch.Tensor
    tokens: int
    max_tokens: int | None = None

    @property
    def n(self) -> int:
        return self.tokens * self.head_weight.shape[-1]

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(c, b, t * h) -> (c, b, t * h)."""
        x4 = x.reshape(-1, self.tokens, self.head_weight.shape[-1], 1)  # c b (t h) -> (c b) t h 1
        past = causal_decayed_mean(x4, self.decay, self.max_tokens)
        out = torch.matmul(self.head_weight, x4) + self.sequence_weight[:, None] * past
        return out.reshape(x.shape)

    def to(self, device=None, dtype=None):
        return SpaceTimeOperator(*(w.to(device=device, dtype=dtype) for w in
                                   (self.head_weight, self.sequence_weight, self.decay)),
                                 self.tokens, self.max_tokens)


def space_time_system(head_weight: torch.Tensor, omega: torch.Tensor, sequence_coupling: torch.Tensor,
                      sequence_length: torch.Tensor, tokens: int, max_tokens: int | None = None) -> KuramotoSystem:
    """The Kuramoto system of the sequence mode, state (b, t * h); both couplings are folded into the
    operator, so the system's coupling is 1.

    Args:
        head_weight: (h, h) kappa_h W_hg, the head-lattice coupling within each token.
        omega: (h,) intrinsic frequencies (the same at every token).
        sequence_coupling, sequence_length: (h,) sigma and lambda.
        tokens: t; max_tokens: the model's seq_len (fixes the scan depth).
    """
    operator = SpaceTimeOperator(head_weight, sequence_coupling, torch.exp(-1.0 / sequence_length), tokens,
                                 max_tokens)
    return KuramotoSystem(omega=omega.repeat(tokens), coupling=torch.ones_like(omega[0]), operator=operator)


__all__ = ["SequenceMode", "SequenceModeOptions", "SpaceTimeOperator", "causal_decayed_mean", "space_time_system"]
