"""Parameter counting and matching for fair comparisons (match ALL learnable parameters within 2%,
report non-embedding counts too).

Counting builds the model on the ``meta`` device: no memory, no init cost, any size.
"""

from __future__ import annotations

import torch
from torch import nn

from lotsim.model.config import ModelConfig


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Learnable parameters of a model (tied weights counted once).

    Returns:
        ``{"total": ..., "non_embedding": ...}``; non-embedding excludes the token embedding (which
        is also the tied output layer).
    """
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = getattr(model, "tok_emb", None)
    emb = embedding.weight.numel() if isinstance(embedding, nn.Embedding) else 0
    return {"total": total, "non_embedding": total - emb}


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """:func:`count_parameters` of ``LOTModel(config)``, built on the meta device."""
    from lotsim.model.transformer import LOTModel

    with torch.device("meta"):
        return count_parameters(LOTModel(config))


def match_parameters(configs: dict[str, ModelConfig], reference: str | None = None,
                     tolerance: float = 0.02) -> dict[str, ModelConfig]:
    """Size every arm's SwiGLU width ``d_ff`` so its total parameters match the reference arm.

    The count is affine in d_ff (3 * d_model * n_layers per unit), so the matching width is solved
    for, not searched.

    Args:
        configs: arm name -> config.
        reference: the arm everyone matches; default ``"lattice"`` if present, else the largest.
        tolerance: allowed relative difference of total parameters.

    Returns:
        arm name -> config (the reference unchanged, the others with a new d_ff).

    Raises:
        ValueError: unknown reference, or an arm that cannot be matched within ``tolerance``.
    """
    if not configs:
        return {}
    counts = {name: parameter_counts(cfg)["total"] for name, cfg in configs.items()}
    if reference is None:
        reference = "lattice" if "lattice" in configs else max(counts, key=counts.__getitem__)
    if reference not in configs:
        raise ValueError(f"reference arm {reference!r} is not among the arms: {', '.join(configs)}")
    target = counts[reference]
    out: dict[str, ModelConfig] = {}
    for name, cfg in configs.items():
        if name == reference:
            out[name] = cfg
            continue
        per_unit = parameter_counts(cfg.model_copy(update={"d_ff": cfg.d_ff + 1}))["total"] - counts[name]
        d_ff = round(cfg.d_ff + (target - counts[name]) / per_unit)
        if d_ff < 1:
            raise ValueError(f"arm {name!r} has {counts[name]} parameters without its MLP to spare; cannot "
                             f"shrink it to the reference {reference!r} ({target})")
        matched = ModelConfig.model_validate({**cfg.model_dump(), "d_ff": d_ff})
        got = parameter_counts(matched)["total"]
        if abs(got - target) > tolerance * target:
            raise ValueError(f"arm {name!r}: {got} parameters vs reference {reference!r} {target}, "
                             f"more than {tolerance:.0%} apart after sizing d_ff={d_ff}")
        out[name] = matched
    return out


def parameter_report(configs: dict[str, ModelConfig], reference: str | None = None) -> dict[str, dict]:
    """Per arm: total and non-embedding counts, d_ff, and the relative difference to the reference.

    Returns:
        ``{arm: {"total", "non_embedding", "d_ff", "relative_to_reference"}}``.
    """
    counts = {name: parameter_counts(cfg) for name, cfg in configs.items()}
    if reference is None:
        reference = "lattice" if "lattice" in configs else max(counts, key=lambda n: counts[n]["total"])
    target = counts[reference]["total"]
    return {name: {**c, "d_ff": configs[name].d_ff, "relative_to_reference": c["total"] / target - 1.0}
            for name, c in counts.items()}
