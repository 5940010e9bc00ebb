"""The ``vanilla`` baseline attention: fused QKV (no bias), RoPE on q and k, causal SDPA, output
projection. It is what every oscillator variant must beat at matched parameters.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lotsim.model.attention import AttentionOptions, Intermediates, QKVAttention, register_attention
from lotsim.model.rope import Rope


class VanillaOptions(AttentionOptions):
    """``vanilla`` has no options; any key is an error."""


@register_attention("vanilla")
class VanillaAttention(QKVAttention):
    """Multi-head causal softmax attention (one fused SDPA call, O(t) memory)."""

    Options = VanillaOptions

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, Intermediates | None]:
        """(b, t, D) -> ((b, t, D), an empty :class:`Intermediates` if asked, else None)."""
        self.check_interventions(interventions)
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each
        y = self.merge_heads(self.attend(q, k, v))
        return y, Intermediates(self.layer) if return_intermediates else None
