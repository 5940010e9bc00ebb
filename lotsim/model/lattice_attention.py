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
Steps 1, 3 and 4 are the plumbing shared with ``pma`` (:mod:`lotsim.model.head_phase`).
``dynamics="sequence"`` adds causal coupling along the token axis through the same integrator
(:mod:`lotsim.model.sequence_mode`).

Legend: ``b`` batch, ``t`` tokens, ``h`` heads, ``d`` head dim, ``D`` model width, ``n`` lattice
nodes (= h).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lotsim.dynamics.core import DenseOperator, KuramotoSystem, order_parameter
from lotsim.model.attention import PhaseIntermediates, register_attention
from lotsim.model.head_lattice import (
    HeadLatticeOptions,
    build_head_lattice,
    head_lattice_geometry,
    local_order_parameter,
)
from lotsim.model.head_phase import HeadPhaseAttention, HeadPhaseOptions
from lotsim.model.interventions import apply_intervention
from lotsim.model.phase import inverse_softplus
from lotsim.model.rope import Rope
from lotsim.model.sequence_mode import SequenceMode, SequenceModeOptions, space_time_system


class LatticeOptions(HeadLatticeOptions, HeadPhaseOptions, SequenceModeOptions):
    """Options of the ``lattice`` attention, besides those of
    :class:`~lotsim.model.head_lattice.HeadLatticeOptions` (``topology``, ``shape``, ``periodic``,
    ``file``, ``coupling_range``), :class:`~lotsim.model.head_phase.HeadPhaseOptions` (``n_steps``,
    ``dt``, ``method``, ``omega_init`` for untied frequencies, ``implementation``) and
    :class:`~lotsim.model.sequence_mode.SequenceModeOptions` (``dynamics``, ``sequence_coupling_init``,
    ``sequence_length_init``).

    Attributes:
        score: ``additive`` a_h cos(dphi) or ``multiplicative`` q.k (1 - a_h + a_h cos(dphi)).
        gain_init: initial a_h (small, not 0, so the phase parameters get gradients).
        coupling_init: initial kappa_h.
        lattice_constant_init: initial ell_h (> 0).
        tie_frequencies: use Omega_h = omega_h (one frequency per head for both roles); omega is then
            initialised with the sequence spread seq_len ** (-h / (H - 1)).
    """

    score: Literal["additive", "multiplicative"] = "additive"
    gain_init: float = 0.1
    coupling_init: float = 1.0
    lattice_constant_init: float = Field(default=1.0, gt=0)
    tie_frequencies: bool = False


@dataclass(kw_only=True)
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
class LatticeIntermediates(PhaseIntermediates, OscillatorParameters):
    """Telemetry of one ``lattice`` layer (tensors keep their graph; detach to log): the phases, the
    :class:`OscillatorParameters` used, and the coupling weights.

    Attributes:
        content_phases: (b, t, h) theta0 from content, before the dynamics.
        theta: (b, t, h) phases after the Kuramoto steps on the head lattice.
        phases: (b, t, h) phi = theta + Omega * t, the phases the scores use.
        order_parameter: (b, t) r = |mean_h exp(i theta)| across the head lattice, per token.
        mean_order_parameter: () mean of r (a summary over all tokens; not used by the forward).
        local_order_parameter: (b, t, h) |mean over {h} and its lattice neighbours of exp(i theta)|.
        coupling_weights: (h, h) W (row h = receiver, column g = sender), before kappa.
    """

    coupling_weights: torch.Tensor

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
class LatticeAttention(HeadPhaseAttention, SequenceMode):
    """LOT attention: heads on a lattice, Kuramoto phases per token, phase-coherent scores.

    Parameters (besides ``qkv``/``out``, shared with ``vanilla``, and ``phase`` (D -> 2h)): ``omega``,
    ``coupling``, ``lattice_constant_raw`` (ell = softplus), ``sequence_frequency`` (absent when tied),
    ``gain``; with ``dynamics="sequence"`` also ``sequence_coupling`` and ``sequence_length_raw``. All (h,).

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
        self.lattice = build_head_lattice(h, options)
        distances, mask, local_weights = head_lattice_geometry(self.lattice, options.coupling_range)
        for name, value in (("distances", distances), ("coupling_mask", mask), ("local_weights", local_weights)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.get_default_dtype()), persistent=False)
        self.omega = nn.Parameter(torch.empty(h))
        self.coupling = nn.Parameter(torch.empty(h))
        self.lattice_constant_raw = nn.Parameter(torch.empty(h))
        self.gain = nn.Parameter(torch.empty(h))
        if not options.tie_frequencies:
            self.sequence_frequency = nn.Parameter(torch.empty(h))
        self.add_sequence_parameters()
        self.init_parameters(config.init_std)

    @classmethod
    def check_config(cls, config, options: LatticeOptions) -> None:
        """Build the head lattice once so a mismatch is a config error."""
        build_head_lattice(config.n_heads, options)

    @torch.no_grad()
    def init_parameters(self, std: float) -> None:
        """Phases and frequencies as the head-phase base, the other oscillator parameters from the options."""
        o: LatticeOptions = self.options
        self.init_head_phases(self.omega, None if o.tie_frequencies else self.sequence_frequency)
        self.coupling.fill_(o.coupling_init)
        self.lattice_constant_raw.fill_(inverse_softplus(o.lattice_constant_init))
        self.gain.fill_(o.gain_init)
        self.init_sequence_parameters()

    def oscillator_parameters(self, interventions: Mapping[str, Any] | None = None) -> OscillatorParameters:
        """The values this forward uses: learned parameters, overridden by ``interventions``."""
        iv = interventions or {}
        omega = apply_intervention(iv, "omega", self.omega)
        sequence_frequency = omega if self.options.tie_frequencies else self.sequence_frequency
        return OscillatorParameters(
            omega=omega, coupling=apply_intervention(iv, "coupling", self.coupling),
            lattice_constant=apply_intervention(iv, "lattice_constant", F.softplus(self.lattice_constant_raw)),
            sequence_frequency=apply_intervention(iv, "sequence_frequency", sequence_frequency),
            gain=apply_intervention(iv, "gain", self.gain), **self.sequence_parameters(iv))

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
            return KuramotoSystem(omega=params.omega, coupling=params.coupling, operator=DenseOperator(weights))
        return space_time_system(params.coupling[:, None] * weights, params.omega, params.sequence_coupling,
                                 params.sequence_length, tokens, self.seq_len)

    def forward(self, x: torch.Tensor, rope: Rope, *, return_intermediates: bool = False,
                interventions: Mapping[str, Any] | None = None
                ) -> tuple[torch.Tensor, LatticeIntermediates | None]:
        """(b, t, D) -> ((b, t, D), :class:`LatticeIntermediates` if asked, else None)."""
        iv = self.check_interventions(interventions)
        q, k, v = self.project_qkv(x, rope)  # (b, h, t, d) each
        params = self.oscillator_parameters(iv)
        system = self.kuramoto_system(params, tokens=x.shape[1])
        theta0, theta, phases = self.head_phases(x, system, params.sequence_frequency, iv)  # (b, t, h) each
        y = self.merge_heads(self.phase_attention(q, k, v, phases, params.gain, self.options.score))
        if not return_intermediates:
            return y, None
        return y, self._telemetry(theta0, theta, phases, params)

    def _telemetry(self, theta0, theta, phases, params: OscillatorParameters) -> LatticeIntermediates:
        local = local_order_parameter(theta, self.local_weights)  # (b, t, h)
        return LatticeIntermediates(**self.phase_telemetry(theta0, theta, phases), local_order_parameter=local,
                                    coupling_weights=self.coupling_weights(params.lattice_constant),
                                    **{f.name: getattr(params, f.name) for f in fields(params)})

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
