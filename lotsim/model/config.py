"""The model config: the ``[model]`` section of a training recipe.

A frozen pydantic v2 model with unknown keys refused. ``attention_options`` is validated by the
chosen attention class's own ``Options`` model, so ``attention_options = {n_step = 3}`` is an error
naming ``n_step`` and the allowed keys. Derived values live here, in one place: ``d_ff`` (when not
given) is 8/3 * d_model rounded up to a multiple of 8, and the head dim is d_model / n_heads.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lotsim.model.attention import AttentionOptions, get_attention


def default_ffn_hidden(d_model: int) -> int:
    """SwiGLU hidden width: 8/3 * d_model rounded up to a multiple of 8."""
    return 8 * math.ceil(8 * d_model / 3 / 8)


class ModelConfig(BaseModel):
    """Decoder-only LOT model config (every attention variant shares this trunk).

    Attributes:
        vocab_size: number of token ids.
        seq_len: maximum sequence length (RoPE tables and frequency advance are built for it).
        d_model: residual width D; must be divisible by n_heads with an even head dim.
        n_layers: number of blocks.
        n_heads: attention heads H (the lattice variant puts them on a lattice with H nodes).
        d_ff: SwiGLU hidden width; None -> 8/3 * d_model rounded up to a multiple of 8 (filled in
            at validation, so a resolved config always holds the number used).
        attention: registered attention name, see :func:`~lotsim.model.attention.available_attentions`.
        attention_options: options of that attention, validated by its ``Options`` model.
        rope_base: RoPE base frequency.
        dropout: dropout probability on attention weights and residual branches (training only).
        init_std: std of the normal init of embeddings and linear layers (residual output
            projections get init_std / sqrt(2 n_layers)).
        norm_eps: RMSNorm epsilon.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    d_model: int = Field(ge=2)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_ff: int | None = Field(default=None, ge=1)
    attention: str = "vanilla"
    attention_options: dict[str, Any] = Field(default_factory=dict)
    rope_base: float = Field(default=10000.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    init_std: float = Field(default=0.02, gt=0)
    norm_eps: float = Field(default=1e-6, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("d_ff") is None and isinstance(data.get("d_model"), int):
            data = {**data, "d_ff": default_ffn_hidden(data["d_model"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim d_model/n_heads = {self.head_dim} must be even for RoPE")
        cls = get_attention(self.attention)
        cls.check_config(self, self.options())
        return self

    @property
    def head_dim(self) -> int:
        """d = d_model / n_heads."""
        return self.d_model // self.n_heads

    def options(self) -> AttentionOptions:
        """The validated ``Options`` of the chosen attention (defaults filled in).

        Raises:
            ValueError: one line naming every unknown or invalid key and the allowed keys.
        """
        cls = get_attention(self.attention)
        try:
            return cls.Options.model_validate(self.attention_options)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"]) or "attention_options"
                if e["type"] == "extra_forbidden":
                    problems.append(f"unknown option {key!r}")
                else:
                    problems.append(f"{key}: {e['msg']}")
            allowed = ", ".join(cls.Options.model_fields) or "none"
            raise ValueError(f"attention_options for {self.attention!r}: {'; '.join(problems)} "
                             f"(allowed: {allowed})") from None
