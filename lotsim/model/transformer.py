"""The decoder-only trunk shared by every attention variant (nanoGPT-shaped, forward order).

token embedding -> n_layers x [x + attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> tied
unembedding. RoPE tables are built once for ``seq_len`` and handed to every attention layer; no
biases anywhere; only the attention module differs between arms (picked by name from the registry).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width, ``f`` SwiGLU
hidden width, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lotsim.model.attention import Attention, Intermediates, QKVAttention, get_attention
from lotsim.model.config import ModelConfig
from lotsim.model.rope import Rope, rope_tables


@dataclass
class ModelOutput:
    """What :meth:`LOTModel.forward` returns.

    Attributes:
        logits: (b, t, v).
        loss: () mean cross-entropy over positions whose target != ignore_index, or None without targets.
        intermediates: one :class:`Intermediates` per layer when asked, else None.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    intermediates: list[Intermediates] | None = None


# torch's fused RMS-norm forward that also returns 1/rms (a private op; absent -> the public path)
_HAS_FUSED_RMS_NORM = hasattr(torch.ops.aten, "_fused_rms_norm")


class _RMSNormFunction(torch.autograd.Function):
    """RMS norm with torch's fused forward and a hand-written backward (CPU training).

    torch's own ``F.rms_norm`` backward on the CPU is composite (about fifteen elementwise passes);
    this one takes five: with ``r = rsqrt(mean(x^2) + eps)`` and ``g`` the output gradient,
    ``dx = r g w - x r^3 <g w, x> / D`` and ``dw = sum over rows of g x r``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)  # rstd (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        gw = grad * weight
        coefficient = rstd.pow(3) * torch.linalg.vecdot(gw, x).unsqueeze(-1) / x.shape[-1]  # (..., 1)
        dx = torch.addcmul(gw * rstd, x, coefficient, value=-1)
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (grad * x).reshape(-1, x.shape[-1]).t() @ rstd.reshape(-1)  # (D,)
        return dx, dw, None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias): (..., D) -> (..., D)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_HAS_FUSED_RMS_NORM and x.device.type == "cpu" and torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and (x.requires_grad or self.weight.requires_grad)):
            return _RMSNormFunction.apply(x, self.weight, self.eps)  # CPU training: the cheaper backward
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """``w_down(silu(w_gate x) * w_up x)``: (b, t, D) -> (b, t, D), hidden width f."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm transformer block around a registered attention variant."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.norm_attn = RMSNorm(config.d_model, config.norm_eps)
        self.attn: Attention = get_attention(config.attention)(config, config.options(), layer)
        self.norm_mlp = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, Intermediates | None]:
        """(b, t, D) -> ((b, t, D), this layer's intermediates or None)."""
        a, inter = self.attn(self.norm_attn(x), rope, return_intermediates=return_intermediates,
                             interventions=interventions)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, inter


class LOTModel(nn.Module):
    """Decoder-only language model; the attention variant is ``config.attention``.

    Args:
        config: a validated :class:`ModelConfig`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings
        cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_base, torch.get_default_dtype())
        self.register_buffer("rope_cos", cos, persistent=False)  # (seq_len, d)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for embeddings and linear layers, init_std / sqrt(2 n_layers) for the
        residual output projections (GPT-2), then each attention's own :meth:`Attention.init_parameters`."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
        for block in self.blocks:
            nn.init.normal_(block.mlp.w_down.weight, std=std / math.sqrt(2 * self.config.n_layers))
            if isinstance(getattr(block.attn, "out", None), nn.Linear):
                nn.init.normal_(block.attn.out.weight, std=std / math.sqrt(2 * self.config.n_layers))
            block.attn.init_parameters(std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                return_intermediates: bool = False,
                interventions: Mapping[int, Mapping[str, Any]] | None = None,
                ignore_index: int = -100) -> ModelOutput:
        """Logits (and loss, and per-layer telemetry) for a batch of token ids.

        Args:
            idx: (b, t) int64 token ids, t <= seq_len.
            targets: (b, t) int64 next-token ids, or None.
            return_intermediates: collect each layer's :class:`Intermediates`.
            interventions: ``{layer index: {name: value}}`` inference-time overrides passed to that
                layer's attention (see its ``intervention_names``).
            ignore_index: target id excluded from the loss.

        Returns:
            :class:`ModelOutput` (logits (b, t, v), loss () or None, intermediates list or None).
        """
        b, t = idx.shape
        if t > self.config.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len={self.config.seq_len}")
        interventions = interventions or {}
        bad = sorted(set(interventions) - set(range(self.config.n_layers)), key=str)
        if bad:
            raise ValueError(f"interventions name layer(s) {bad}; the model has layers "
                             f"0..{self.config.n_layers - 1}")
        rope = Rope(self.rope_cos[:t], self.rope_sin[:t])
        x = self.drop(self.tok_emb(idx))  # (b, t, D)
        collected: list[Intermediates] = []
        for layer, block in enumerate(self.blocks):
            x, inter = block(x, rope, return_intermediates, interventions.get(layer))
            if return_intermediates:
                collected.append(inter)
        logits = self.lm_head(self.norm(x))  # (b, t, v)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(b * t),
                                   ignore_index=ignore_index)
        return ModelOutput(logits, loss, collected if return_intermediates else None)

    def regularization_losses(self, intermediates: list[Intermediates]) -> dict[str, torch.Tensor]:
        """Each attention's named regularisers, averaged over the layers that report them."""
        sums: dict[str, list[torch.Tensor]] = {}
        for block, inter in zip(self.blocks, intermediates):
            for name, value in block.attn.regularization_losses(inter).items():
                sums.setdefault(name, []).append(value)
        return {name: torch.stack(values).mean() for name, values in sums.items()}

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue each row of ``idx`` by ``max_new_tokens`` sampled tokens (eval mode; restored after).

        Args:
            idx: (b, t0) int64 prompt token ids, t0 >= 1.
            max_new_tokens: tokens to add.
            temperature: softmax temperature; 0 is greedy (argmax).
            top_k: sample among the k most likely tokens only (None: all).
            seed: seed of the sampling generator (None: torch's global generator).
            use_cache: keep the keys and values of past positions (a KV cache) when every layer is
                ``vanilla`` attention; other variants recompute the window every token (their
                oscillator phases are not a per-position cache). Both give the same tokens.

        Returns:
            (b, t0 + max_new_tokens) int64: the prompt followed by the new tokens. Beyond ``seq_len``
            tokens the model sees the last ``seq_len`` (a sliding window, recomputed every token).
        """
        if idx.ndim != 2 or idx.shape[1] < 1 or idx.dtype != torch.long:
            raise ValueError(f"idx must be (batch, tokens) int64 with at least one token, got {tuple(idx.shape)} "
                             f"{idx.dtype}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None for all tokens), got {top_k}")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        cached = use_cache and all(isinstance(b.attn, QKVAttention) and b.attn.name == "vanilla" for b in self.blocks)
        cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        seq_len, was_training = self.config.seq_len, self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                t = idx.shape[1]
                if cached and t <= seq_len:
                    logits = self._decode_cached(idx if not cache else idx[:, -1:], cache, 0 if not cache else t - 1)
                else:
                    logits = self(idx[:, -seq_len:]).logits[:, -1]  # (b, v)
                idx = torch.cat([idx, _sample(logits, temperature, top_k, generator)], dim=1)
        finally:
            self.train(was_training)
        return idx

    def _decode_cached(self, idx: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]],
                       start: int) -> torch.Tensor:
        """Last-position logits (b, v) of ``idx`` (b, s) at positions ``start..start+s-1`` of an
        all-``vanilla`` model, appending each layer's keys and values to ``cache``: the whole prompt
        first (``start`` 0, empty cache), then one token at a time. Same blocks as :meth:`forward`."""
        s = idx.shape[1]
        rope = Rope(self.rope_cos[start:start + s], self.rope_sin[start:start + s])
        x = self.tok_emb(idx)  # (b, s, D)
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.project_qkv(block.norm_attn(x), rope)  # (b, h, s, d) each
            if layer < len(cache):
                k, v = torch.cat([cache[layer][0], k], dim=2), torch.cat([cache[layer][1], v], dim=2)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
            # the prompt is causal within itself; one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and s > 1)
            x = x + block.attn.merge_heads(y)
            x = x + block.mlp(block.norm_mlp(x))
        return self.lm_head(self.norm(x[:, -1]))


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (b, 1) from last-position logits (b, v): argmax at temperature 0, else a draw
    from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
