"""Interventions: override or freeze oscillator quantities at inference, and measure what they do.

The idea comes from Phase-Modulated Attention (its coupling override and its R, K, tau, lambda and
phase hooks; see docs/attentions.md), generalised to every attention variant of the registry.

Three ways to intervene, all ending in the same per-layer mapping ``{name: value}`` that an
attention's ``forward(..., interventions=...)`` consults (see
:meth:`lotsim.model.attention.Attention.check_interventions`):

1. per call: ``model(idx, interventions={0: {"coupling": 0.0}, 1: {...}})`` (layer index -> values);
2. for a block of code: ``with intervene(model, coupling=0.0): ...`` (every layer, or ``layers=[0]``);
   the values are injected by forward pre-hooks and removed on exit; nested blocks and per-call
   values win over enclosing ones;
3. from the command line / a recipe: :func:`parse_intervention_specs` turns
   ``["coupling=0", "1.gate=0.5", "all.temperature=1"]`` into the per-layer mapping.

A value is a number (broadcast to the quantity's shape), a tensor (broadcast likewise), or a
callable ``current -> new`` (e.g. ``lambda phi: phi + noise``), for every name of every variant;
a variant applies it with :func:`apply_intervention` (see :func:`override`). To *freeze* a
quantity, read it from a forward with ``return_intermediates=True`` and pass it back as a tensor.
Unknown names are errors that list the names the layer's attention allows.

:func:`intervention_sweep` measures the loss on a batch for a list of forced values (e.g. loss vs
forced coupling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

InterventionValue = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def override(current: torch.Tensor, value: Any) -> torch.Tensor:
    """Apply one intervention value to the quantity ``current``.

    Args:
        current: the value the forward would use, any shape.
        value: a number or array-like (broadcast to ``current.shape``), or a callable
            ``current -> replacement`` (its result is broadcast likewise).

    Returns:
        A tensor of ``current``'s shape, dtype and device.
    """
    new = value(current) if callable(value) else value
    new = torch.as_tensor(new, dtype=current.dtype, device=current.device)
    return new.broadcast_to(current.shape)


def apply_intervention(interventions: Mapping[str, Any], name: str, current: torch.Tensor) -> torch.Tensor:
    """``current`` with the intervention ``name`` applied (:func:`override`), or unchanged if absent.

    Args:
        interventions: the checked ``{name: value}`` of one layer's forward.
        name: the quantity's intervention name.
        current: the value the forward would use.

    Returns:
        A tensor of ``current``'s shape, dtype and device.
    """
    return override(current, interventions[name]) if name in interventions else current


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention module of every block of a :class:`~lotsim.model.LOTModel`, in layer order."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no `blocks`; interventions need a LOTModel")
    return [block.attn for block in blocks]


def intervention_names(model: nn.Module) -> dict[int, tuple[str, ...]]:
    """Layer index -> the intervention names that layer's attention understands."""
    return {i: tuple(attn.intervention_names) for i, attn in enumerate(attention_layers(model))}


def _layer_indices(model: nn.Module, layers: Iterable[int] | None) -> list[int]:
    n = len(attention_layers(model))
    if layers is None:
        return list(range(n))
    chosen = sorted(set(int(i) for i in layers))
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"interventions name layer(s) {bad}; the model has layers 0..{n - 1}")
    return chosen


def resolve_interventions(model: nn.Module, values: Mapping[str, Any], layers: Iterable[int] | None = None
                          ) -> dict[int, dict[str, Any]]:
    """The same ``values`` for each chosen layer, checked against each layer's allowed names.

    Args:
        model: a LOTModel.
        values: ``{name: value}``.
        layers: layer indices, or None for every layer.

    Returns:
        ``{layer: dict(values)}``, the form ``model(..., interventions=...)`` takes.

    Raises:
        ValueError: an unknown layer, or a name a layer's attention does not allow (the message
            lists the allowed names).
    """
    attns = attention_layers(model)
    out = {}
    for i in _layer_indices(model, layers):
        try:
            attns[i].check_interventions(values)
        except ValueError as err:
            raise ValueError(f"layer {i}: {err}") from None
        out[i] = dict(values)
    return out


@contextlib.contextmanager
def intervene(model: nn.Module, *, layers: Iterable[int] | None = None, **values: Any) -> Iterator[nn.Module]:
    """Context manager: every forward of ``model`` inside the block uses these interventions.

    ``with intervene(model, coupling=0.0): loss = model(idx, targets).loss`` is the same as passing
    ``interventions={i: {"coupling": 0.0} for i in layers}`` to each call. Values given per call, or
    by a nested ``intervene``, win over the enclosing block's for the same name.

    Args:
        model: a LOTModel.
        layers: layer indices to intervene on (default: all).
        **values: ``name=value`` (see :func:`override` for the value forms).

    Raises:
        ValueError: on entry, for an unknown layer or a name a layer does not allow.
    """
    per_layer = resolve_interventions(model, values, layers)
    attns = attention_layers(model)
    handles = []

    def make_hook(layer_values: dict[str, Any]):
        def hook(module, args, kwargs):
            given = kwargs.get("interventions") or {}
            return args, {**kwargs, "interventions": {**layer_values, **given}}
        return hook

    try:
        for i, layer_values in per_layer.items():
            # prepend: the innermost block's hook runs first, so inner values end up on top
            handles.append(attns[i].register_forward_pre_hook(make_hook(layer_values), with_kwargs=True,
                                                              prepend=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def parse_intervention_specs(specs: Sequence[str], n_layers: int) -> dict[int, dict[str, float]]:
    """Parse command-line interventions (``lotsim eval --intervene SPEC``, repeatable).

    ``SPEC`` is ``[LAYERS.]NAME=VALUE`` with LAYERS ``all`` (the default), one index ``2`` or a
    comma list ``0,2``; VALUE is a float. Later specs win for the same layer and name.

    Examples: ``coupling=0`` (every layer), ``1.gate=0.5``, ``0,3.temperature=1``.

    Returns:
        ``{layer: {name: value}}``.

    Raises:
        ValueError: one line naming the malformed spec.
    """
    out: dict[int, dict[str, float]] = {}
    for spec in specs:
        target, sep, raw = spec.partition("=")
        if not sep or not target.strip():
            raise ValueError(f"intervention {spec!r} is not [LAYERS.]NAME=VALUE")
        layers_part, dot, name = target.strip().rpartition(".")
        if not dot:
            layers_part, name = "all", target.strip()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"intervention {spec!r}: value {raw!r} is not a number") from None
        if layers_part == "all":
            layers = list(range(n_layers))
        else:
            try:
                layers = [int(p) for p in layers_part.split(",")]
            except ValueError:
                raise ValueError(f"intervention {spec!r}: layers {layers_part!r} are not 'all' or "
                                 f"comma-separated indices") from None
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"intervention {spec!r}: layer(s) {bad}; the model has layers 0..{n_layers - 1}")
        for i in layers:
            out.setdefault(i, {})[name] = value
    return out


@torch.no_grad()
def intervention_sweep(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], key: str,
                       values: Iterable[Any], *, layers: Iterable[int] | None = None,
                       ignore_index: int = -100) -> list[dict[str, Any]]:
    """Loss on one batch with ``key`` forced to each of ``values`` (eval mode, no gradients).

    Example: ``intervention_sweep(model, (idx, targets), "coupling", [0, 0.5, 1, 2])`` gives loss vs
    forced coupling. The model's train/eval mode is restored afterwards.

    Args:
        model: a LOTModel.
        batch: ``(idx, targets)``, both (b, t) int64.
        key: an intervention name the chosen layers allow.
        values: the values to force (numbers, tensors or callables).
        layers: layer indices to intervene on (default: all).
        ignore_index: target id excluded from the loss.

    Returns:
        ``[{"value": v, "loss": float}, ...]`` in the order of ``values``.
    """
    idx, targets = batch
    was_training = model.training
    model.eval()
    try:
        rows = []
        for value in values:
            per_layer = resolve_interventions(model, {key: value}, layers)
            loss = model(idx, targets, interventions=per_layer, ignore_index=ignore_index).loss
            rows.append({"value": value, "loss": float(loss)})
        return rows
    finally:
        model.train(was_training)


__all__ = [
    "apply_intervention",
    "attention_layers",
    "intervene",
    "intervention_names",
    "intervention_sweep",
    "override",
    "parse_intervention_specs",
    "resolve_interventions",
]
