"""What a training run is built from: the device and its precision, the seeded model with its frozen
parameters, the optimiser and its learning-rate schedule, and the seeds of the other generators.
"""

from __future__ import annotations

import fnmatch
import math
import random

import numpy as np
import torch

from lotsim.model import LOTModel, ModelConfig


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use auto or cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def autocast_for(precision: str, device: torch.device):
    """A factory of the autocast context: bf16 on GPUs only (``auto``/``bf16``), else none."""
    if device.type != "cuda":
        if precision == "bf16":
            raise ValueError("train.precision='bf16' needs a CUDA device; use auto or fp32 on the CPU")
        return None
    if precision == "fp32" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return None
    return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def build_model(config: ModelConfig, seed: int, freeze: list[str] = ()) -> LOTModel:
    """The model initialised from ``seed`` (identical on every process), with ``freeze`` patterns
    (fnmatch over parameter names) excluded from training.

    Raises:
        ValueError: a freeze pattern that matches no parameter (naming some that exist).
    """
    torch.manual_seed(seed)
    model = LOTModel(config)
    names = [n for n, _ in model.named_parameters()]
    for pattern in freeze:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"train.freeze pattern {pattern!r} matches no parameter; parameters are e.g. "
                             f"{', '.join(names[:6])}")
        for name, p in model.named_parameters():
            if name in hits:
                p.requires_grad_(False)
    return model


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only.

    Decayed: every trainable parameter with >= 2 dimensions except embeddings (qkv, out, MLP and
    phase projections). Not decayed: norms' gains, the (tied) token embedding and every 1-D
    parameter, i.e. the oscillators' per-head scalars (omega, kappa, lattice constants, gains).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float, schedule: str) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based): linear warm-up to 1, then
    cosine to ``min_ratio`` at the last step (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (dropout and the like; the model has its own seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
