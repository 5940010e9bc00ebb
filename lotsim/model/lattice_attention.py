"""``lattice``: LOT attention done right (design/attention.md).

Heads h = 0..H-1 sit on a lattice built by :func:`lotsim.lattice.build_lattice`. For every token
and head:

1. content phase ``theta0[t, h] = atan2(p1, p0)`` with ``(p0, p1)`` two projections of ``x_t``
   (read as a complex number; no raw angle ever enters a linear layer);
2. Kuramoto dynamics on the head lattice through THE core (:mod:`lotsim.dynamics.core`),
   ``dtheta_h/dt = omega_h + kappa_h sum_g W_hg sin(theta_g - theta_h)`` with
   ``W_hg = exp(-d_hg / ell_h)`` (d_hg lattice distances, ell_h = softplus(.) > 0), integrated for
   ``n_steps`` steps of ``dt`` with ``kuramoto_integrator``, all (b * t) tokens as replicas;
   omega, kappa, ell are learned and differentiable (no buffers, no no_grad);
3. frequency-driven advance along the sequence ``phi[t, h] = theta[t, h] + Omega_h * t`` (Omega
   learned; ``tie_frequencies=True`` uses Omega = omega): a per-head relative-position kernel;
4. scores ``s_h(q, k) = q.k / sqrt(d) + a_h cos(phi_q - phi_k)`` (``score="additive"``) or
   ``q.k (1 - a_h + a_h cos(phi_q - phi_k)) / sqrt(d)`` (``score="multiplicative"``), a_h learned.

The scores never exist as a T x T tensor: ``cos(a - b) = cos a cos b + sin a sin b`` turns the
phase term into extra q/k feature columns, so attention is ONE causal
``F.scaled_dot_product_attention`` call with O(T) memory (:func:`fused_phase_attention`).
:func:`materialised_phase_attention` is the explicit-scores reference used by the tests.

``dynamics="sequence"`` adds causal coupling along the token axis (token index as a second lattice
dimension): each oscillator is also driven by the exponentially decayed mean of the same head's
phasors at earlier tokens (strictly past), computed with a log2(T)-depth doubling scan, so there
is no Python loop over tokens and the mode is exactly causal. It runs through the same integrator
with a space-time :class:`SpaceTimeOperator`.

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width, ``n`` lattice
nodes (= h), ``c`` feature channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import (
    CouplingOperator,
    DenseOperator,
    KuramotoSystem,
    kuramoto_integrator,
    order_parameter,
)
from lotsim.lattice import Lattice, Topology, build_lattice
from lotsim.model.attention import (
    AttentionOptions,
    Intermediates,
    QKVAttention,
    register_attention,
)
from lotsim.model.rope import Rope

GRID_TOPOLOGIES = ("square", "triangular", "hexagonal", "hypercubic")


class LatticeOptions(AttentionOptions):
    """Options of the ``lattice`` attention.

    Attributes:
        topology: head lattice topology (any of :data:`lotsim.lattice.TOPOLOGIES`).
        shape: grid shape; None -> the most square (rows, cols) with rows * cols = n_heads.
            Other topologies use n = n_heads unless a 1-D shape is given.
        periodic: periodic boundaries (a periodic square grid needs every side >= 3).
        file: edge-list / GraphML file for ``topology = "edgelist" | "graphml"``.
        coupling_range: ``all`` couples every pair of heads with W_hg = exp(-d_hg / ell_h) (so the
            learned lattice constant is an interaction range); ``neighbours`` masks W to lattice
            edges (on a regular grid ell then only rescales kappa).
        dynamics: ``parallel`` (each token's phases evolve on the head lattice independently) or
            ``sequence`` (plus causal coupling along the token axis).
        n_steps: Kuramoto steps per forward (0 = phases straight from content).
        dt: integrator step.
        method: euler | heun | rk4 (the simulator's integrators).
        score: ``additive`` a_h cos(dphi) or ``multiplicative`` q.k (1 - a_h + a_h cos(dphi)).
        gain_init: initial a_h (small, not 0, so the phase parameters get gradients).
        coupling_init: initial kappa_h.
        lattice_constant_init: initial ell_h (> 0).
        omega_init: (low, high) of the uniform init of omega_h (untied frequencies).
        tie_frequencies: use Omega_h = omega_h (one frequency per head for both roles); omega is then
            initialised with the sequence spread seq_len ** (-h / (H - 1)).
        sequence_coupling_init: initial coupling along the sequence (``dynamics="sequence"``).
        sequence_length_init: initial decay length, in tokens, of that coupling (> 0).
        implementation: ``fused`` (one SDPA call, O(T) memory) or ``materialised`` (explicit T x T
            scores; a test oracle, never for training).
    """

    topology: Topology = "square"
    shape: tuple[int, ...] | None = None
    periodic: bool = False
    file: str | None = None
    coupling_range: Literal["all", "neighbours"] = "all"
    dynamics: Literal["parallel", "sequence"] = "parallel"
    n_steps: int = Field(default=2, ge=0, le=64)
    dt: float = Field(default=0.25, gt=0)
    method: Literal["euler", "heun", "rk4"] = "heun"
    score: Literal["additive", "multiplicative"] = "additive"
    gain_init: float = 0.1
    coupling_init: float = 1.0
    lattice_constant_init: float = Field(default=1.0, gt=0)
    omega_init: tuple[float, float] = (0.9, 1.1)
    tie_frequencies: bool = False
    sequence_coupling_init: float = 0.5
    sequence_length_init: float = Field(default=4.0, gt=0)
    implementation: Literal["fused", "materialised"] = "fused"


def most_square_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols = n, rows <= cols, as close to square as possible."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def build_head_lattice(n_heads: int, options: LatticeOptions) -> Lattice:
    """The lattice the heads sit on.

    Raises:
        ValueError: one line, when the lattice cannot be built or its node count != n_heads.
    """
    topology = options.topology
    kwargs: dict[str, Any] = {"periodic": options.periodic}
    if topology in ("edgelist", "graphml"):
        kwargs["path"] = options.file
    elif topology in GRID_TOPOLOGIES:
        kwargs["shape"] = options.shape or most_square_shape(n_heads)
    elif options.shape is not None:
        kwargs["shape"] = options.shape
    else:
        kwargs["n"] = n_heads
    try:
        lattice = build_lattice(topology, **kwargs)
    except ValueError as err:
        raise ValueError(f"head lattice ({topology}, n_heads={n_heads}): {err}") from None
    if lattice.n != n_heads:
        raise ValueError(f"the head lattice {lattice.name!r} has {lattice.n} nodes but n_heads={n_heads}; "
                         f"pick a topology/shape with exactly {n_heads} nodes")
    return lattice


@dataclass(frozen=True)
class OscillatorParameters:
    """The oscillator quantities one forward uses (learned values or intervention overrides).

    All (h,): omega (intrinsic frequencies), coupling (kappa), lattice_constant (ell > 0),
    sequence_frequency (Omega), gain (a), and for ``dynamics="sequence"`` sequence_coupling and
    sequence_length (None otherwise).
    """

    omega: torch.Tensor
    coupling: torch.Tensor
    lattice_constant: torch.Tensor
    sequence_frequency: torch.Tensor
    gain: torch.Tensor
    sequence_coupling: torch.Tensor | None = None
    sequence_length: torch.Tensor | None = None


@dataclass
class LatticeIntermediates(Intermediates):
    """Telemetry of one ``lattice`` layer (tensors keep their graph; detach to log).

    Attributes:
        content_phases: (b, t, h) theta0 from content, before the dynamics.
        theta: (b, t, h) phases after the Kuramoto steps on the head lattice.
        phases: (b, t, h) phi = theta + Omega * t, the phases the scores use.
        order_parameter: (b, t) r = |mean_h exp(i theta)| across the head lattice, per token.
        mean_order_parameter: () mean of r (a summary over all tokens; not used by the forward).
        local_order_parameter: (b, t, h) |mean over {h} and its lattice neighbours of exp(i theta)|.
        omega, coupling, lattice_constant, sequence_frequency, gain: (h,) values used.
        coupling_weights: (h, h) W (row h = receiver, column g = sender), before kappa.
        sequence_coupling, sequence_length: (h,) for ``dynamics="sequence"``, else None.
    """

    content_phases: torch.Tensor
    theta: torch.Tensor
    phases: torch.Tensor
    order_parameter: torch.Tensor
    mean_order_parameter: torch.Tensor
    local_order_parameter: torch.Tensor
    omega: torch.Tensor
    coupling: torch.Tensor
    lattice_constant: torch.Tensor
    sequence_frequency: torch.Tensor
    gain: torch.Tensor
    coupling_weights: torch.Tensor
    sequence_coupling: torch.Tensor | None = None
    sequence_length: torch.Tensor | None = None

    def summary(self) -> dict[str, float]:
        """Scalar summaries (floats) for logging."""
        return {
            "order_parameter": float(self.mean_order_parameter.detach()),
            "local_order_parameter": float(self.local_order_parameter.detach().mean()),
            "gain_abs": float(self.gain.detach().abs().mean()),
            "coupling": float(self.coupling.detach().mean()),
            "lattice_constant": float(self.lattice_constant.detach().mean()),
            "omega_std": float(self.omega.detach().std(unbiased=False)),
        }


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
        """(b, t * h, c) -> (b, t * h, c)."""
        b, n, c = x.shape
        x4 = x.reshape(b, self.tokens, -1, c)  # b (t h) c -> b t h c
        past = causal_decayed_mean(x4, self.decay, self.max_tokens)
        out = torch.matmul(self.head_weight, x4) + self.sequence_weight[:, None] * past
        return out.reshape(b, n, c)

    def to(self, device=None, dtype=None):
        return SpaceTimeOperator(*(w.to(device=device, dtype=dtype) for w in
                                   (self.head_weight, self.sequence_weight, self.decay)),
                                 self.tokens, self.max_tokens)


def fused_phase_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                          gain: torch.Tensor, score: str = "additive",
                          dropout_p: float = 0.0) -> torch.Tensor:
    """Phase-modulated causal attention as ONE ``scaled_dot_product_attention`` call.

    additive: ``q' = [q, sqrt(d) a cos phi, sqrt(d) a sin phi]``, ``k' = [k, cos phi, sin phi]``,
    softmax scale 1/sqrt(d), so ``q'.k'/sqrt(d) = q.k/sqrt(d) + a cos(phi_q - phi_k)``. The signed
    gain sits on the query side only (no sqrt(a)); q enters unchanged, so a = 0 gives vanilla's scores.
    multiplicative: ``q' = [(1-a) q, a q cos phi, a q sin phi]``, ``k' = [k, k cos phi, k sin phi]`` (3d).
    The CPU flash kernel needs equal q/k and v widths, so v is zero-padded and the output sliced.

    Args:
        q, k, v: (b, h, t, d).
        phases: (b, t, h) phi.
        gain: (h,) a.
        score: "additive" | "multiplicative".
        dropout_p: attention dropout.

    Returns:
        (b, h, t, d).
    """
    d = q.shape[-1]
    phi = phases.transpose(1, 2).unsqueeze(-1)  # b t h -> b h t 1
    cos, sin = torch.cos(phi), torch.sin(phi)
    a = gain.view(-1, 1, 1)  # (h, 1, 1)
    if score == "additive":
        ga = math.sqrt(d) * a
        q2 = torch.cat([q, ga * cos, ga * sin], dim=-1)  # (b, h, t, d + 2)
        k2 = torch.cat([k, cos, sin], dim=-1)
    elif score == "multiplicative":
        q2 = torch.cat([(1 - a) * q, (a * cos) * q, (a * sin) * q], dim=-1)  # (b, h, t, 3d)
        k2 = torch.cat([k, cos * k, sin * k], dim=-1)
    else:
        raise ValueError(f"unknown score {score!r}; allowed: additive, multiplicative")
    v2 = F.pad(v, (0, q2.shape[-1] - d))
    y = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=1.0 / math.sqrt(d),
                                       dropout_p=dropout_p)
    return y[..., :d]


def materialised_phase_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phases: torch.Tensor,
                                 gain: torch.Tensor, score: str = "additive") -> torch.Tensor:
    """Reference for :func:`fused_phase_attention` with explicit (b, h, t, t) scores (tests only).

    The phase term is computed as ``cos(phi_q - phi_k)`` directly, not through the identity.
    """
    d = q.shape[-1]
    phi = phases.transpose(1, 2)  # (b, h, t)
    coherence = torch.cos(phi[..., :, None] - phi[..., None, :])  # (b, h, t, t)
    a = gain.view(-1, 1, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if score == "additive":
        scores = scores + a * coherence
    elif score == "multiplicative":
        scores = scores * (1 - a + a * coherence)
    else:
        raise ValueError(f"unknown score {score!r}; allowed: additive, multiplicative")
    t = q.shape[-2]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


@register_attention("lattice")
class LatticeAttention(QKVAttention):
    """LOT attention: heads on a lattice, Kuramoto phases per token, phase-coherent scores.

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``): ``phase`` (D -> 2h, no bias),
    ``omega``, ``coupling``, ``lattice_constant_raw`` (ell = softplus), ``sequence_frequency``
    (absent when tied), ``gain``; with ``dynamics="sequence"`` also ``sequence_coupling`` and
    ``sequence_length_raw``. All (h,).

    Interventions (``forward(..., interventions={...})``): ``omega``, ``coupling``,
    ``lattice_constant``, ``sequence_frequency``, ``gain``, ``sequence_coupling``,
    ``sequence_length`` (a float or an (h,) tensor replacing the value), and ``phases`` (a (b, t, h)
    tensor replacing phi, or a callable phi -> phi').
    """

    Options = LatticeOptions
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "no-oscillator": {"options": {"gain_init": 0.0}, "freeze": ["gain"]},
        # the phase machinery: content projection and every oscillator parameter
        "frozen-phases": {"options": {}, "freeze": ["phase.weight", "omega", "coupling", "lattice_constant_raw",
                                                    "sequence_frequency", "sequence_coupling",
                                                    "sequence_length_raw"]},
        "no-coupling": {"options": {"coupling_init": 0.0, "sequence_coupling_init": 0.0},
                        "freeze": ["coupling", "sequence_coupling"]},
    }
    intervention_names = ("omega", "coupling", "lattice_constant", "sequence_frequency", "gain",
                          "sequence_coupling", "sequence_length", "phases")

    def __init__(self, config, options: LatticeOptions, layer: int = 0):
        super().__init__(config, options, layer)
        h = self.n_heads
        self.seq_len = config.seq_len
        self.lattice = build_head_lattice(h, options)
        distances = self.lattice.pairwise_distances()
        adjacency = self.lattice.adjacency().toarray() != 0  # [i, j]: j drives i
        if options.coupling_range == "neighbours":
            mask = adjacency
        else:
            mask = np.isfinite(distances) & ~np.eye(h, dtype=bool)
        local = adjacency | np.eye(h, dtype=bool)
        dtype = torch.get_default_dtype()
        self.register_buffer("distances", torch.as_tensor(np.where(mask, distances, 0.0), dtype=dtype),
                             persistent=False)
        self.register_buffer("coupling_mask", torch.as_tensor(mask, dtype=dtype), persistent=False)
        local_weights = torch.as_tensor(local / local.sum(1, keepdims=True), dtype=dtype)
        self.register_buffer("local_weights", local_weights, persistent=False)

        self.phase = nn.Linear(self.d_model, 2 * h, bias=False)
        self.omega = nn.Parameter(torch.empty(h))
        self.coupling = nn.Parameter(torch.empty(h))
        self.lattice_constant_raw = nn.Parameter(torch.empty(h))
        self.gain = nn.Parameter(torch.empty(h))
        if not options.tie_frequencies:
            self.sequence_frequency = nn.Parameter(torch.empty(h))
        if options.dynamics == "sequence":
            self.sequence_coupling = nn.Parameter(torch.empty(h))
            self.sequence_length_raw = nn.Parameter(torch.empty(h))
        self.init_parameters(config.init_std)

    @classmethod
    def check_config(cls, config, options: LatticeOptions) -> None:
        """Build the head lattice once so a mismatch is a config error."""
        build_head_lattice(config.n_heads, options)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """Phase projection ~ N(0, 1/D) (unit-size complex pairs), oscillators from the options."""
        o: LatticeOptions = self.options
        h = self.n_heads
        nn.init.normal_(self.phase.weight, std=1.0 / math.sqrt(self.d_model))
        idx = torch.arange(h, dtype=self.omega.dtype, device=self.omega.device)
        spread = float(self.seq_len) ** (-idx / max(h - 1, 1))  # 1 .. 1/seq_len rad per token
        if o.tie_frequencies:
            self.omega.copy_(spread)
        else:
            self.omega.uniform_(*o.omega_init)
            self.sequence_frequency.copy_(spread)
        self.coupling.fill_(o.coupling_init)
        self.lattice_constant_raw.fill_(_inverse_softplus(o.lattice_constant_init))
        self.gain.fill_(o.gain_init)
        if o.dynamics == "sequence":
            self.sequence_coupling.fill_(o.sequence_coupling_init)
            self.sequence_length_raw.fill_(_inverse_softplus(o.sequence_length_init))

    # ---------------------------------------------------------------------------------------------
    # The oscillator pieces, in forward order

    def oscillator_parameters(self, interventions: Mapping[str, Any] | None = None) -> OscillatorParameters:
        """The values this forward uses: learned parameters, overridden by ``interventions``."""
        iv = interventions or {}
        sequence = self.options.dynamics == "sequence"
        values = {
            "omega": self.omega,
            "coupling": self.coupling,
            "lattice_constant": F.softplus(self.lattice_constant_raw),
            "gain": self.gain,
            "sequence_coupling": self.sequence_coupling if sequence else None,
            "sequence_length": F.softplus(self.sequence_length_raw) if sequence else None,
        }
        for name in values:
            if name in iv:
                values[name] = self._per_head(iv[name])
        if "sequence_frequency" in iv:
            values["sequence_frequency"] = self._per_head(iv["sequence_frequency"])
        else:
            values["sequence_frequency"] = values["omega"] if self.options.tie_frequencies \
                else self.sequence_frequency
        return OscillatorParameters(**values)

    def _per_head(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=self.omega.dtype, device=self.omega.device).broadcast_to(
            (self.n_heads,))

    def coupling_weights(self, lattice_constant: torch.Tensor) -> torch.Tensor:
        """W (h, h) = mask * exp(-d_hg / ell_h); row h receives, column g sends."""
        return self.coupling_mask * torch.exp(-self.distances / lattice_constant[:, None])

    def content_phases(self, x: torch.Tensor) -> torch.Tensor:
        """theta0 (b, t, h) = atan2 of two projections of x (b, t, D)."""
        b, t, _ = x.shape
        pair = self.phase(x).view(b, t, self.n_heads, 2)
        return torch.atan2(pair[..., 1], pair[..., 0])

    def kuramoto_system(self, params: OscillatorParameters, tokens: int | None = None) -> KuramotoSystem:
        """The head-lattice system the forward integrates.

        ``parallel``: state (b * t, h), ``KuramotoSystem(omega, kappa, DenseOperator(W))``.
        ``sequence``: state (b, t * h) on the space-time lattice of ``tokens`` tokens.
        """
        weights = self.coupling_weights(params.lattice_constant)
        if self.options.dynamics == "parallel":
            return KuramotoSystem(omega=params.omega, coupling=params.coupling,
                                  operator=DenseOperator(weights))
        operator = SpaceTimeOperator(params.coupling[:, None] * weights, params.sequence_coupling,
                                     torch.exp(-1.0 / params.sequence_length), tokens, self.seq_len)
        return KuramotoSystem(omega=params.omega.repeat(tokens), coupling=torch.ones_like(params.omega[0]),
                              operator=operator)

    def integrate(self, theta0: torch.Tensor, params: OscillatorParameters) -> torch.Tensor:
        """Advance the phases (b, t, h) by ``n_steps`` Kuramoto steps; returns (b, t, h)."""
        o: LatticeOptions = self.options
        if o.n_steps == 0:
            return theta0
        b, t, h = theta0.shape
        system = self.kuramoto_system(params, tokens=t)
        integrator = kuramoto_integrator(system, method=o.method, dt=o.dt)
        state0 = theta0.reshape(b * t, h) if o.dynamics == "parallel" else theta0.reshape(b, t * h)
        return integrator.step_fn(integrator.init_fn(state0), o.n_steps).theta.reshape(b, t, h)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, LatticeIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`LatticeIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each
        params = self.oscillator_parameters(iv)
        theta0 = self.content_phases(x)  # (b, t, h)
        theta = self.integrate(theta0, params)  # (b, t, h)
        position = torch.arange(t, dtype=theta.dtype, device=theta.device)
        phases = theta + position[:, None] * params.sequence_frequency  # (b, t, h)
        if "phases" in iv:
            phases = iv["phases"](phases) if callable(iv["phases"]) else torch.as_tensor(
                iv["phases"], dtype=phases.dtype, device=phases.device).broadcast_to(phases.shape)
        if self.options.implementation == "materialised":
            y = materialised_phase_attention(q, k, v, phases, params.gain, self.options.score)
        else:
            y = fused_phase_attention(q, k, v, phases, params.gain, self.options.score,
                                      dropout_p=self.dropout if self.training else 0.0)
        y = self.merge_heads(y)
        if not return_intermediates:
            return y, None
        return y, self._telemetry(theta0, theta, phases, params)

    def _telemetry(self, theta0, theta, phases, params: OscillatorParameters) -> LatticeIntermediates:
        r, _ = order_parameter(theta)  # (b, t), across the head lattice of each token
        phasor = torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)  # (b, t, h, 2)
        local = torch.linalg.vector_norm(torch.matmul(self.local_weights, phasor), dim=-1)  # (b, t, h)
        return LatticeIntermediates(
            layer=self.layer, content_phases=theta0, theta=theta, phases=phases, order_parameter=r,
            mean_order_parameter=r.mean(), local_order_parameter=local,
            coupling_weights=self.coupling_weights(params.lattice_constant),
            **{f.name: getattr(params, f.name) for f in fields(params)},
        )

    def regularization_losses(self, intermediates: LatticeIntermediates) -> dict[str, torch.Tensor]:
        """``sync`` and ``diversity`` regularisers (both differentiable in the oscillator parameters).

        sync = mean over tokens of (1 - r): pulls each token's head phases together.
        diversity = mean over frequency vectors f of exp(-Var_h f) (identical frequencies; f is omega,
        plus Omega when untied) + mean over (b, h) of R_bh^2, with R_bh the order parameter of head
        h's phases theta across the tokens of sequence b (every token at one phase would make the
        phase term a constant: the prior prototype's no-op).
        """
        sync = (1 - intermediates.order_parameter).mean()
        frequencies = [intermediates.omega]
        if not self.options.tie_frequencies:
            frequencies.append(intermediates.sequence_frequency)
        frequency_collapse = torch.stack([torch.exp(-f.var(unbiased=False)) for f in frequencies]).mean()
        token_r, _ = order_parameter(intermediates.theta.transpose(1, 2))  # (b, h)
        return {"sync": sync, "diversity": frequency_collapse + (token_r**2).mean()}

    def extra_repr(self) -> str:
        o: LatticeOptions = self.options
        return (f"lattice={self.lattice.name!r}, coupling_range={o.coupling_range}, dynamics={o.dynamics}, "
                f"score={o.score}, n_steps={o.n_steps}, dt={o.dt}, method={o.method}")


__all__ = [
    "LatticeAttention",
    "LatticeIntermediates",
    "LatticeOptions",
    "OscillatorParameters",
    "SpaceTimeOperator",
    "build_head_lattice",
    "causal_decayed_mean",
    "fused_phase_attention",
    "materialised_phase_attention",
    "most_square_shape",
]
