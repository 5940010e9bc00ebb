"""Attention registry and the base class every attention variant implements.

The contract (every variant, every mode):

* ``forward(x, rope, *, return_intermediates=False, interventions=None) -> (y, intermediates)``
  maps the pre-normed residual stream ``x`` (b, t, D) to ``y`` (b, t, D). It is **causal**: ``y`` at
  position ``t`` depends on ``x`` at positions ``<= t`` only, and so does every per-token telemetry
  statistic. It is **pure** in eval mode: no state advances between calls.
* ``intermediates`` is ``None`` unless asked for; when asked, an :class:`Intermediates` (or a
  subclass) with the variant's telemetry. Variants with oscillator phases return a
  :class:`PhaseIntermediates` (what phase telemetry records). Nothing telemetry-only is computed
  when not asked.
* ``Options`` is a pydantic model (``extra="forbid"``) of the variant's own settings; the trunk's
  :class:`~lotsim.model.config.ModelConfig` validates ``attention_options`` with it, so a typo is
  an error that names the key.
* ``regularization_losses(intermediates) -> dict[str, Tensor]``: named scalar losses with real
  gradients (the training recipe weighs them by name); empty by default.
* ``migrate_options(options, weights)``: a checkpoint's stored options completed from its weights
  where it predates an option (the checkpoint reader calls it); unchanged by default.
* ``interventions``: a mapping ``{name: value}`` of inference-time overrides the forward consults
  (e.g. ``{"gain": 0.0}`` switches the lattice variant's phase term off). A variant lists the names
  it understands in ``intervention_names``; any other name is an error. Every name takes a number,
  a tensor or a callable ``current -> new``, applied by
  :func:`lotsim.model.interventions.apply_intervention` (one semantics for every variant).

Register a variant with :func:`register_attention`; the trunk picks it by name. See
``docs/model.md`` ("Add your own attention") for a runnable example.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width (h * d),
``n`` lattice nodes (= h).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from lotsim.model.phase import causal_attention
from lotsim.model.rope import Rope, apply_rope

if TYPE_CHECKING:
    from lotsim.model.config import ModelConfig

_REGISTRY: dict[str, type[Attention]] = {}


class AttentionOptions(BaseModel):
    """Base of every variant's ``Options``: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Intermediates:
    """Per-layer telemetry; variants subclass it with their own fields.

    Attributes:
        layer: index of the layer that produced it.
    """

    layer: int

    def summary(self) -> dict[str, float]:
        """Scalar summaries for logging (detached floats); empty for variants with no telemetry."""
        return {}


@dataclass
class PhaseIntermediates(Intermediates):
    """Telemetry of a variant whose tokens carry oscillator phases (what phase telemetry records).

    Every field keeps its graph (detach to log). ``n`` is the number of oscillators per token:
    the heads, or heads x channels for variants with several phases per head.

    Attributes:
        content_phases: (b, t, h) or (b, t, h, m) phases from content, before any dynamics.
        theta: (b, t, n) the token's oscillator phases after the layer's dynamics.
        phases: (b, t, h) or (b, t, h, m) the phases the scores (or readout) use.
        order_parameter: (b, t) r = |mean over the token's n oscillators of exp(i theta)|.
        mean_order_parameter: () mean of r.
        local_order_parameter: (b, t, n) r over each oscillator's neighbourhood, for variants whose
            oscillators sit on a lattice; None otherwise.
    """

    content_phases: torch.Tensor
    theta: torch.Tensor
    phases: torch.Tensor
    order_parameter: torch.Tensor
    mean_order_parameter: torch.Tensor
    local_order_parameter: torch.Tensor | None = field(default=None, kw_only=True)


class Attention(nn.Module):
    """Base class of attention variants (see the module docstring for the contract).

    Subclasses set ``Options`` (a subclass of :class:`AttentionOptions`), implement
    :meth:`forward`, and may override :meth:`regularization_losses`, :meth:`init_parameters`,
    :meth:`check_config` and ``intervention_names``.

    Args:
        config: the model config (width, heads, dropout, max length...).
        options: the validated ``Options`` of this variant.
        layer: index of the layer this module sits in.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[AttentionOptions]] = AttentionOptions
    intervention_names: ClassVar[tuple[str, ...]] = ()
    # `lotsim compare` arms ATTENTION:ABLATION: name -> {"options": {...}, "freeze": [parameter suffixes]}
    ablations: ClassVar[dict[str, dict[str, Any]]] = {}
    # `lotsim compare` arms ATTENTION:READING: alternative readings of a paper, name -> {"options": {...}}
    readings: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def arm_presets(cls) -> dict[str, dict[str, Any]]:
        """Every named arm variant (ablations and readings) as ``{"options": {...}, "freeze": [...]}``."""
        presets = {name: {"options": {}, "freeze": [], **spec} for name, spec in cls.readings.items()}
        return {**presets, **cls.ablations}

    def __init__(self, config: ModelConfig, options: AttentionOptions, layer: int = 0):
        super().__init__()
        self.d_model = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.dropout = config.dropout
        self.layer = layer
        self.options = options

    @classmethod
    def migrate_options(cls, options: Mapping[str, Any], weights: Mapping[str, Any]) -> dict[str, Any]:
        """The stored ``attention_options`` of a checkpoint, completed with what its ``weights`` (a model
        state_dict) say about options that did not exist when it was written; the checkpoint reader
        uses it so an old checkpoint loads with the reading it was trained with. Default: unchanged."""
        return dict(options)

    @property
    def attention_dropout(self) -> float:
        """The dropout on attention weights: the config's in training, 0 in eval mode."""
        return self.dropout if self.training else 0.0

    @classmethod
    def check_config(cls, config: ModelConfig, options: AttentionOptions) -> None:
        """Validate the variant against the trunk config; raise ValueError (one line) if it does
        not fit. Called by :class:`~lotsim.model.config.ModelConfig` at validation time."""

    def init_parameters(self, std: float) -> None:
        """Initialise the variant's own parameters; called after the trunk's generic init
        (normal(0, std) on every Linear). Default: nothing."""

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, Intermediates | None]:
        """Causal self-attention.

        Args:
            x: (b, t, D) pre-normed residual stream.
            rope: rotary tables for the first t positions, each (t, d).
            return_intermediates: also return the layer's telemetry.
            interventions: inference-time overrides, names from ``intervention_names``.

        Returns:
            (y (b, t, D), intermediates or None).
        """
        raise NotImplementedError

    def regularization_losses(self, intermediates: Intermediates) -> dict[str, torch.Tensor]:
        """Named scalar regularisers computed from this layer's ``intermediates``."""
        return {}

    def check_interventions(self, interventions: Mapping[str, Any] | None) -> Mapping[str, Any]:
        """Return ``interventions`` (or ``{}``); raise ValueError on a name this variant ignores."""
        if not interventions:
            return {}
        unknown = sorted(set(interventions) - set(self.intervention_names))
        if unknown:
            allowed = ", ".join(self.intervention_names) or "none"
            raise ValueError(f"attention {self.name!r} has no intervention {', '.join(map(repr, unknown))}; "
                             f"allowed: {allowed}")
        return interventions


class QKVAttention(Attention):
    """Shared plumbing for variants built on softmax attention over q, k, v.

    Parameters: ``qkv`` (fused, D -> 3D, no bias) and ``out`` (D -> D, no bias). Variants that
    subclass it share these names, so weights copy between them (the zero-gain test relies on it).
    """

    def __init__(self, config: ModelConfig, options: AttentionOptions, layer: int = 0):
        super().__init__(config, options, layer)
        self.qkv = nn.Linear(self.d_model, 3 * self.d_model, bias=False)
        self.out = nn.Linear(self.d_model, self.d_model, bias=False)

    def project_qkv(self, x: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, t, D) -> q, k, v each (b, h, t, d), RoPE applied to q and k (none when ``rope`` is None)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)  # b t (3 h d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (b, h, t, d)
        if rope is None:
            return q, k, v
        return apply_rope(q, rope), apply_rope(k, rope), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scale: float | None = None) -> torch.Tensor:
        """Causal SDPA, (b, h, t, e) x3 -> (b, h, t, e); scale None = 1/sqrt(e); dropout only in training."""
        return causal_attention(q, k, v, scale=scale, dropout_p=self.attention_dropout)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(b, h, t, d) -> output projection of (b, t, D)."""
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.d_model))

    @property
    def scale(self) -> float:
        """The softmax scale 1/sqrt(d)."""
        return 1.0 / math.sqrt(self.head_dim)


def register_attention(name: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: register an :class:`Attention` subclass under ``name``.

    Raises:
        ValueError: if the name is taken or the class is not an Attention.
    """

    def decorator(cls: type[Attention]) -> type[Attention]:
        if not (isinstance(cls, type) and issubclass(cls, Attention)):
            raise ValueError(f"register_attention({name!r}) needs a subclass of Attention, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_attention(name: str) -> type[Attention]:
    """The attention class registered under ``name``.

    Raises:
        ValueError: naming the unknown attention and listing the available ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(available_attentions())
        raise ValueError(f"unknown attention {name!r}; available: {available}") from None


def available_attentions() -> tuple[str, ...]:
    """Names of all registered attention variants, sorted."""
    return tuple(sorted(_REGISTRY))


def unregister_attention(name: str) -> None:
    """Remove a registered variant (for tests and notebooks that register throwaway classes)."""
    _REGISTRY.pop(name, None)
