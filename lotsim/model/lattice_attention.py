"""``lattice``: Lattice Oscillator Transformer attention (heads on a lattice, Kuramoto phases).

Heads h = 0..H-1 sit on a lattice built by :func:`lotsim.lattice.build_lattice` (see
:mod:`lotsim.model.head_lattice`). For every token and head:

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

The scores never exist as a T x T tensor: the phase term becomes extra q/k feature columns and
attention is ONE causal SDPA call (:func:`lotsim.model.phase.fused_phase_attention`);
``implementation="materialised"`` runs the explicit-scores reference of :mod:`lotsim.model.oracles`.
``dynamics="sequence"`` adds causal coupling along the token axis through the same integrator
(:class:`~lotsim.model.head_lattice.SpaceTimeOperator`).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width, ``n`` lattice
nodes (= h).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import DenseOperator, KuramotoSystem, order_parameter
from lotsim.lattice import Topology
from lotsim.model.attention import AttentionOptions, PhaseIntermediates, QKVAttention, register_attention
from lotsim.model.head_lattice import SpaceTimeOperator, build_head_lattice, head_lattice_geometry
from lotsim.model.interventions import apply_intervention
from lotsim.model.oracles import materialised_phase_attention
from lotsim.model.phase import (
    advance,
    content_phases,
    frequency_spectrum,
    fused_phase_attention,
    integrate,
    inverse_softplus,
)
from lotsim.model.rope import Rope


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
class LatticeIntermediates(PhaseIntermediates):
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

@register_attention("lattice")
class LatticeAttention(QKVAttention):
    """LOT attention: heads on a lattice, Kuramoto phases per token, phase-coherent scores.

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``): ``phase`` (D -> 2h, no bias),
    ``omega``, ``coupling``, ``lattice_constant_raw`` (ell = softplus), ``sequence_frequency``
    (absent when tied), ``gain``; with ``dynamics="sequence"`` also ``sequence_coupling`` and
    ``sequence_length_raw``. All (h,).

    Interventions (``forward(..., interventions={...})``; numbers/tensors broadcast to the
    quantity's shape, or callables of the current value): ``omega``, ``coupling``,
    ``lattice_constant``, ``sequence_frequency``, ``gain``, ``sequence_coupling``,
    ``sequence_length`` (each (h,)), and ``phases`` (phi, (b, t, h)).
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
        distances, mask, local_weights = head_lattice_geometry(self.lattice, options.coupling_range)
        for name, value in (("distances", distances), ("coupling_mask", mask), ("local_weights", local_weights)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.get_default_dtype()), persistent=False)

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
        nn.init.normal_(self.phase.weight, std=1.0 / math.sqrt(self.d_model))
        spread = frequency_spectrum(self.n_heads, self.seq_len, dtype=self.omega.dtype, device=self.omega.device)
        if o.tie_frequencies:
            self.omega.copy_(spread)
        else:
            self.omega.uniform_(*o.omega_init)
            self.sequence_frequency.copy_(spread)
        self.coupling.fill_(o.coupling_init)
        self.lattice_constant_raw.fill_(inverse_softplus(o.lattice_constant_init))
        self.gain.fill_(o.gain_init)
        if o.dynamics == "sequence":
            self.sequence_coupling.fill_(o.sequence_coupling_init)
            self.sequence_length_raw.fill_(inverse_softplus(o.sequence_length_init))

    def oscillator_parameters(self, interventions: Mapping[str, Any] | None = None) -> OscillatorParameters:
        """The values this forward uses: learned parameters, overridden by ``interventions``."""
        iv = interventions or {}
        omega = apply_intervention(iv, "omega", self.omega)
        sequence_frequency = omega if self.options.tie_frequencies else self.sequence_frequency
        sequence = {}
        if self.options.dynamics == "sequence":
            sequence = {"sequence_coupling": apply_intervention(iv, "sequence_coupling", self.sequence_coupling),
                        "sequence_length": apply_intervention(iv, "sequence_length",
                                                              F.softplus(self.sequence_length_raw))}
        return OscillatorParameters(
            omega=omega, coupling=apply_intervention(iv, "coupling", self.coupling),
            lattice_constant=apply_intervention(iv, "lattice_constant", F.softplus(self.lattice_constant_raw)),
            sequence_frequency=apply_intervention(iv, "sequence_frequency", sequence_frequency),
            gain=apply_intervention(iv, "gain", self.gain), **sequence)

    def coupling_weights(self, lattice_constant: torch.Tensor) -> torch.Tensor:
        """W (h, h) = mask * exp(-d_hg / ell_h); row h receives, column g sends."""
        return self.coupling_mask * torch.exp(-self.distances / lattice_constant[:, None])

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
        state0 = theta0.reshape(b * t, h) if o.dynamics == "parallel" else theta0.reshape(b, t * h)
        theta = integrate(self.kuramoto_system(params, tokens=t), state0, method=o.method, dt=o.dt,
                          n_steps=o.n_steps)
        return theta.reshape(b, t, h)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, LatticeIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`LatticeIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        o: LatticeOptions = self.options
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each
        params = self.oscillator_parameters(iv)
        theta0 = content_phases(self.phase, x, self.n_heads)  # (b, t, h)
        theta = self.integrate(theta0, params)  # (b, t, h)
        phases = apply_intervention(iv, "phases", advance(theta, params.sequence_frequency))  # (b, t, h)
        if o.implementation == "materialised":
            y = materialised_phase_attention(q, k, v, phases, params.gain, o.score)
        else:
            y = fused_phase_attention(q, k, v, phases, params.gain, o.score,
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
        phase term a constant, which softmax ignores).
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


__all__ = ["LatticeAttention", "LatticeIntermediates", "LatticeOptions", "OscillatorParameters"]
