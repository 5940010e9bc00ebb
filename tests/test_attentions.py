"""Tests of the other oscillator attentions (pma, ssa, torus, fsn) and of the interventions API.

The four contract tests (effect, gradient, causality, purity) run for these variants in
tests/test_model.py (via MODES / OFF_SWITCH). Here: fused == materialised in float64 (values and
gradients), the variant-specific physics (prefix statistics, locking threshold and the
two-oscillator steady state, tangent update, the frustrated kernel against the core, the delay
term's causality), the vanilla limits, and interventions.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lotsim.dynamics.core import DenseOperator, KuramotoSystem, coupling_term, kuramoto_integrator
from lotsim.model import (
    LOTModel,
    ModelConfig,
    available_attentions,
    intervene,
    intervention_names,
    intervention_sweep,
    match_parameters,
    parameter_report,
    parse_intervention_specs,
)
from lotsim.model.fsn import frustrated_coupling, harmonic_values
from lotsim.model.oracles import materialised_phase_attention, materialised_prefix_statistics, materialised_scores
from lotsim.model.phase import causal_mask, causal_softmax, frequency_spectrum, fused_phase_attention
from lotsim.model.phase_state import drifted_features
from lotsim.model.pma import prefix_statistics
from lotsim.model.rope import Rope
from lotsim.model.ssa import SSAAttention
from lotsim.model.ssa_locking import (
    _use_flex,
    chunked_ssa,
    flex_ssa,
    locking,
    materialised_ssa,
    ssa_score_mod,
)

B, T, V = 2, 10, 29
BASE = dict(vocab_size=V, seq_len=16, d_model=32, n_layers=2, n_heads=4)
VARIANTS = ("pma", "ssa", "torus", "fsn")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(attention: str, options: dict | None = None, seed: int = 0, **overrides) -> LOTModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{**BASE, **overrides}, attention=attention, attention_options=options or {})
    return LOTModel(config).double()


def tokens(seed: int = 1, b: int = B, t: int = T) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def every_layer(values: dict) -> dict:
    return {layer: values for layer in range(BASE["n_layers"])}


def layer_input(model: LOTModel, seed: int = 2, t: int = T) -> tuple[torch.Tensor, Rope]:
    x = torch.randn(B, t, BASE["d_model"], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x, Rope(model.rope_cos[:t], model.rope_sin[:t])


def test_all_variants_registered():
    assert set(VARIANTS) <= set(available_attentions())


# --------------------------------------------------------------------------------------------------
# fused == materialised (float64, values and gradients)


def _randomise(model: LOTModel) -> None:
    """Move the oscillator parameters off their symmetric init, as training would."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for block in model.blocks:
            for name, p in block.attn.named_parameters():
                if name not in ("qkv.weight", "out.weight", "phase.weight"):
                    p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=g))


def randomised_layer(attention: str, options: dict):
    """The first attention layer of a randomised model, its input, and its output with intermediates."""
    model = make_model(attention, options)
    _randomise(model)
    attn = model.blocks[0].attn
    x, rope = layer_input(model)
    y, inter = attn(x, rope, return_intermediates=True)
    return attn, x, rope, y, inter


@pytest.mark.parametrize(("attention", "options"), [
    ("pma", {}), ("pma", {"key_phases": "position", "method": "euler"}),
    ("torus", {}), ("torus", {"n_steps": 2, "method": "rk4", "angles": 3}),
    ("fsn", {}), ("fsn", {"harmonics": 3, "angles": 2}),
    ("torus", {"score": "qk"}), ("torus", {"readout": "mean", "n_steps": 2, "method": "heun"}),
    ("fsn", {"score": "qk", "readout": "mean"}),
])
def test_fused_equals_materialised(attention, options):
    fused = make_model(attention, options)
    _randomise(fused)
    if attention == "pma":
        with torch.no_grad():
            for block in fused.blocks:
                block.attn.gate.fill_(0.8)  # a large gate, so the coherence term dominates the check
    reference = make_model(attention, {**options, "implementation": "materialised"})
    reference.load_state_dict(fused.state_dict())
    idx = tokens()
    a, b = fused(idx, idx, return_intermediates=True), reference(idx, idx, return_intermediates=True)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-10)
    for ia, ib in zip(a.intermediates, b.intermediates):
        torch.testing.assert_close(ia.theta, ib.theta, rtol=0, atol=1e-10)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-11, msg=name)


@pytest.mark.parametrize(("attention", "name"), [("pma", "phases"), ("ssa", "omega"), ("torus", "phases"),
                                                ("fsn", "phases")])
def test_perturbing_the_oscillator_state_changes_outputs_and_loss(attention, name):
    model = make_model(attention).eval()
    idx = tokens()
    base = model(idx, idx.roll(-1, 1))
    gen = torch.Generator().manual_seed(3)

    def jitter(current):
        return current + torch.randn(current.shape, dtype=current.dtype, generator=gen)

    perturbed = model(idx, idx.roll(-1, 1), interventions=every_layer({name: jitter}))
    assert (perturbed.logits - base.logits).abs().max() > 1e-4
    assert (perturbed.loss - base.loss).abs() > 1e-6


# --------------------------------------------------------------------------------------------------
# pma


def test_pma_prefix_statistics_match_explicit_masks_and_are_causal():
    g = torch.Generator().manual_seed(0)
    phases = 3 * torch.randn(2, 9, 3, dtype=torch.float64, generator=g)
    keys = 3 * torch.randn(2, 9, 3, dtype=torch.float64, generator=g)
    r, var = prefix_statistics(phases, keys)
    r_ref, var_ref = materialised_prefix_statistics(phases, keys)
    torch.testing.assert_close(r, r_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(var, var_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(r[:, 0], torch.ones_like(r[:, 0]), rtol=0, atol=1e-14)  # one phasor: R = 1
    assert (var[:, 0].abs() < 1e-14).all() and (var <= 1).all() and (r <= 1 + 1e-14).all()
    changed = phases.clone()
    changed[:, 5:] += 1.0
    r2, var2 = prefix_statistics(changed, keys)
    assert torch.equal(r2[:, :5], r[:, :5]) and torch.equal(var2[:, :5], var[:, :5])


def test_pma_fused_kernel_identity_with_signed_gates():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=g) for _ in range(3))
    phases, keys = (4 * torch.randn(2, 9, 3, dtype=torch.float64, generator=g) for _ in range(2))
    gate = torch.tensor([-0.7, 0.0, 1.6], dtype=torch.float64)
    tau = 0.5 + torch.rand(2, 9, 3, dtype=torch.float64, generator=g)
    expected = materialised_phase_attention(q, k, v, phases, gate, "multiplicative", key_phases=keys, temperature=tau)
    got = fused_phase_attention(q, k, v, phases, gate, "multiplicative", key_phases=keys, temperature=tau)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)


def test_pma_gate_zero_and_unit_temperature_equals_vanilla():
    vanilla = make_model("vanilla", seed=0)
    pma = make_model("pma", seed=5)
    result = pma.load_state_dict(vanilla.state_dict(), strict=False)
    assert not result.unexpected_keys
    idx = tokens()
    expected = vanilla(idx).logits
    assert (pma(idx).logits - expected).abs().max() > 1e-6
    torch.testing.assert_close(pma(idx, interventions=every_layer({"gate": 0.0, "temperature": 1.0})).logits,
                               expected, rtol=0, atol=1e-13)


def test_pma_temperature_responds_to_its_statistics():
    model = make_model("pma").eval()
    idx = tokens()
    base = model(idx, return_intermediates=True)
    inter = base.intermediates[0]
    attn = model.blocks[0].attn
    alpha = torch.nn.functional.softplus(attn.order_weight_raw)
    beta = torch.nn.functional.softplus(attn.variance_weight_raw)
    tau_base = torch.nn.functional.softplus(attn.temperature_raw)
    r, var = inter.prefix_order_parameter, inter.coherence_variance
    expected = tau_base * (1 + beta * var) * (1 + alpha * (1 - r))
    torch.testing.assert_close(inter.temperature, expected, rtol=0, atol=1e-14)
    # a frequency common to all heads rotates them together and cancels in cos(phi_q - psi_k): use a spread
    spread = torch.tensor([0.0, 2.0, 4.0, 6.0], dtype=torch.float64)
    for name, value in (("order_parameter", 0.3), ("coherence_variance", 0.3), ("coupling", 0.3),
                        ("temperature", 0.3), ("omega", spread)):
        out = model(idx, interventions=every_layer({name: value}))
        assert (out.logits - base.logits).abs().max() > 1e-6, name
    forced = model(idx, return_intermediates=True,
                   interventions={0: {"order_parameter": 1.0, "coherence_variance": 0.0}})
    torch.testing.assert_close(forced.intermediates[0].temperature, tau_base.expand(B, T, -1), rtol=0,
                               atol=1e-14)


def test_pma_context_coupling_drives_the_head_oscillators():
    model = make_model("pma").eval()
    idx = tokens()
    strong = model(idx, return_intermediates=True, interventions=every_layer({"coupling": 20.0, "omega": 0}))
    free = model(idx, return_intermediates=True, interventions=every_layer({"coupling": 0.0, "omega": 0}))
    # no coupling and no frequency: the phases stay at their content values; strong coupling syncs heads
    free0, strong0 = free.intermediates[0], strong.intermediates[0]
    torch.testing.assert_close(free0.theta, free0.content_phases, rtol=0, atol=0)
    assert strong0.order_parameter.mean() > free0.order_parameter.mean() + 0.1


# --------------------------------------------------------------------------------------------------
# ssa


def test_ssa_closed_form_is_the_two_oscillator_steady_state():
    """Integrate two coupled oscillators with the core: they lock iff |dw| < 2K, and the locked
    coherence cos(theta_j - theta_i) is sqrt(1 - (dw/2K)^2), the factor SSA uses."""
    coupling = 0.5
    dw = torch.tensor([0.0, 0.3, 0.7, 0.95, 1.1, 1.6], dtype=torch.float64)
    omega = torch.stack([dw / 2, -dw / 2], dim=1)  # (b, 2)
    pair = DenseOperator(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    system = KuramotoSystem(omega=omega, coupling=torch.tensor(coupling, dtype=torch.float64), operator=pair)
    integrator = kuramoto_integrator(system, method="rk4", dt=0.05)
    state = integrator.step_fn(integrator.init_fn(torch.zeros(6, 2, dtype=torch.float64)), 2000)
    later = integrator.step_fn(state, 400)
    lag_change = ((later.theta[:, 0] - later.theta[:, 1]) - (state.theta[:, 0] - state.theta[:, 1])).abs()
    locked = dw < 2 * coupling
    assert (lag_change[locked] < 1e-6).all() and (lag_change[~locked] > 0.1).all()
    coherence = torch.cos(state.theta[:, 1] - state.theta[:, 0])
    # SSA's factor g of the pair (query 0, key 1) for each dw: one head, two tokens, score 0 (K = kappa)
    for i in range(len(dw)):
        g, lock_mask = locking(torch.zeros(1, 1, 2, 2, dtype=torch.float64), omega[i].view(1, 2, 1),
                               torch.tensor([coupling], dtype=torch.float64), epsilon=1e-12)
        assert bool(lock_mask[0, 0, 0, 1]) == bool(locked[i])
        if locked[i]:
            torch.testing.assert_close(g[0, 0, 0, 1], coherence[i], rtol=0, atol=1e-6)
        else:
            assert g[0, 0, 0, 1] == 0


def test_ssa_exact_zeros_beyond_the_locking_threshold_and_self_guard():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, dtype=torch.float64, generator=g) for _ in range(3))
    omega = 3 * torch.randn(1, 8, 2, dtype=torch.float64, generator=g)
    coupling = torch.tensor([0.4, 2.0], dtype=torch.float64)
    v_eye = torch.eye(8, dtype=torch.float64).expand(1, 2, 8, 8)  # values = one-hot: y is A itself
    weights, _ = materialised_ssa(q, k, v_eye, omega, coupling, 1e-4)
    scores = q @ k.transpose(-1, -2) / 2.0
    dw = (omega.transpose(1, 2)[..., :, None] - omega.transpose(1, 2)[..., None, :]).abs()
    strength = coupling.view(-1, 1, 1) * torch.exp(scores)
    unlocked = (dw >= 2 * strength) | torch.ones(8, 8, dtype=torch.bool).triu(1)
    assert unlocked.any() and (~unlocked).sum() > 8
    assert (weights[unlocked] == 0).all()  # exact zeros: the threshold and the future
    assert (weights[~unlocked] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 8, dtype=torch.float64), rtol=0, atol=1e-14)
    # the closed form: A_tu proportional to sqrt(K^2 - dw^2/4) over locked keys (eps -> 0)
    weights0, _ = materialised_ssa(q, k, v_eye, omega, coupling, 1e-14)
    closed = torch.sqrt(torch.relu(strength**2 - dw**2 / 4)).masked_fill(unlocked, 0.0)
    torch.testing.assert_close(weights0, closed / closed.sum(-1, keepdim=True), rtol=0, atol=1e-6)
    # kappa = 0: nothing locks but the self pair; every token attends to itself, no NaN
    alone, _ = materialised_ssa(q, k, v_eye, omega, torch.zeros(2, dtype=torch.float64), 1e-4)
    torch.testing.assert_close(alone, v_eye, rtol=0, atol=0)


def test_ssa_flex_matches_materialised_and_is_not_used_in_eager_or_export():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4, dtype=torch.float64, generator=g) for _ in range(3))
    omega = torch.randn(2, 8, 2, dtype=torch.float64, generator=g)
    coupling = torch.tensor([0.3, 1.5], dtype=torch.float64)
    expected, _ = materialised_ssa(q, k, v, omega, coupling, 1e-4)
    with warnings.catch_warnings():  # eager CPU FlexAttention warns that it is not fused
        warnings.simplefilter("ignore")
        got = flex_ssa(q, k, v, omega, coupling, 1e-4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not _use_flex("auto") and not _use_flex("materialised") and _use_flex("flex")


@pytest.mark.parametrize("t", [37, 8])
def test_ssa_chunked_equals_materialised_values_and_gradients(t):
    """Blocks of query rows (the last one partial) against their key prefix, recomputed in the
    backward: the same outputs, locked fractions and gradients as the one-block reference."""
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(2, 3, t, 4, dtype=torch.float64, generator=g) for _ in range(3)]
    inputs += [2 * torch.randn(2, t, 3, dtype=torch.float64, generator=g),
               torch.tensor([0.3, 1.5, 4.0], dtype=torch.float64)]
    results = []
    for run in (lambda *a: materialised_ssa(*a, 1e-4), lambda *a: chunked_ssa(*a, 1e-4, chunk=8)):
        leaves = [x.clone().requires_grad_() for x in inputs]
        y, fraction = run(*leaves)
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        results.append((y, fraction, [x.grad for x in leaves]))
    (y0, f0, g0), (y1, f1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(chunked_ssa(*inputs, 1e-4, chunk=8)[0], y0, rtol=0, atol=1e-12)


def test_ssa_auto_is_the_chunked_path_in_eager_mode():
    model = make_model("ssa", seq_len=300)
    reference = make_model("ssa", {"implementation": "materialised"}, seq_len=300)
    reference.load_state_dict(model.state_dict())
    idx = tokens(t=260)  # three blocks of 128 rows
    a, b = model(idx, idx), reference(idx, idx)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-10)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-11, msg=name)


def test_ssa_score_mod_gradient_is_finite_at_large_float32_scores():
    """FlexAttention differentiates the score_mod; on the CPU (no flex backward) check that
    derivative directly: scores through the score_mod and a softmax, large float32 scores and a
    vanishing coupling (r would overflow), no NaN."""
    t, h = 6, 2
    score = (300 * torch.randn(1, h, t, t, generator=torch.Generator().manual_seed(2))).requires_grad_()
    omega = torch.randn(1, t, h, generator=torch.Generator().manual_seed(0)).requires_grad_()
    coupling = torch.tensor([0.5, 1e-20], requires_grad=True)
    index = torch.arange(t)
    mod = ssa_score_mod(omega, coupling, 1e-4)
    logits = mod(score, torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(h).view(1, h, 1, 1),
                 index.view(1, 1, t, 1), index.view(1, 1, 1, t))
    probabilities = logits.softmax(-1)
    assert torch.isfinite(probabilities).all()
    (probabilities * torch.randn(h, t, t, generator=torch.Generator().manual_seed(1))).sum().backward()
    for x in (score, omega, coupling):
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("attention", available_attentions())
def test_float32_gradients_stay_finite_at_large_scores(attention):
    """Inputs scaled so that float32 attention scores reach the hundreds (exp overflows past ~88):
    the forward and every gradient stay finite (a NaN gradient would poison training silently)."""
    torch.manual_seed(0)
    model = LOTModel(ModelConfig(**BASE, attention=attention))  # float32
    attn = model.blocks[0].attn
    x = (100 * torch.randn(B, T, BASE["d_model"], generator=torch.Generator().manual_seed(2))).requires_grad_()
    rope = Rope(model.rope_cos[:T], model.rope_sin[:T])
    if hasattr(attn, "qkv"):  # the test's premise, where the variant has softmax scores
        q, k, _ = attn.qkv(x).detach().view(B, T, 3, attn.n_heads, -1).unbind(2)
        assert (torch.einsum("bthd,buhd->bhtu", q, k) * attn.scale).abs().max() > 200
    y, _ = attn(x, rope)
    assert torch.isfinite(y).all()
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in attn.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_ssa_large_float32_scores_reproduction():
    """The minimal case: a masked future key with score 100 (> 88) gave q.grad NaN."""
    q = torch.tensor([[[[10.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    k = torch.tensor([[[[0.0, 0.0], [14.2, 0.0]]]], requires_grad=True)
    v = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y, _ = materialised_ssa(q, k, v, torch.zeros(1, 2, 1), torch.ones(1), 1e-4)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_ssa_equal_frequencies_with_rope_equals_vanilla():
    vanilla = make_model("vanilla", seed=0)
    ssa = make_model("ssa", {"rope": True}, seed=5)
    result = ssa.load_state_dict(vanilla.state_dict(), strict=False)
    assert not result.unexpected_keys
    idx = tokens()
    expected = vanilla(idx).logits
    assert (ssa(idx).logits - expected).abs().max() > 1e-6
    torch.testing.assert_close(ssa(idx, interventions=every_layer({"omega": 0.0})).logits, expected,
                               rtol=0, atol=1e-12)


def test_ssa_frequencies_are_a_positional_encoding():
    """Without RoPE, a model whose frequencies are all equal is permutation-blind on the prefix; the
    natural frequencies give it positions (the locked fraction falls with the head's frequency)."""
    model = make_model("ssa").eval()
    idx = tokens()
    inter = model(idx, return_intermediates=True).intermediates[0]
    fraction = inter.locked_fraction[:, -1].mean(0)  # (h,) last query, heads from fast to slow
    assert fraction[0] < fraction[-1]
    step = torch.diff(inter.omega, dim=1)  # (b, t - 1, h): Omega_h plus a small content shift
    frequency = model.blocks[0].attn.sequence_frequency
    torch.testing.assert_close(step, frequency.expand_as(step), rtol=0, atol=0.5)


def test_ssa_interventions_take_numbers_tensors_and_callables_alike():
    """ssa's quantities go through the shared intervention mechanism: a number, a tensor and a callable
    that give the same value agree exactly, each changes the output, and the telemetry reports the
    value used. The sequence frequencies start at the shared spectrum."""
    model = make_model("ssa").eval()
    spectrum = frequency_spectrum(BASE["n_heads"], BASE["seq_len"]).double()  # initialised in float32
    torch.testing.assert_close(model.blocks[0].attn.sequence_frequency.detach(), spectrum, rtol=0, atol=0)
    idx = tokens()
    base = model(idx).logits
    for name in SSAAttention.intervention_names:
        forms = (0.3, torch.tensor(0.3, dtype=torch.float64), lambda current: torch.full_like(current, 0.3))
        outs = [model(idx, return_intermediates=True, interventions=every_layer({name: form})) for form in forms]
        for out in outs[1:]:
            assert torch.equal(out.logits, outs[0].logits), name
        assert (outs[0].logits - base).abs().max() > 1e-6, name
        used = getattr(outs[0].intermediates[0], name)
        torch.testing.assert_close(used, torch.full_like(used, 0.3), rtol=0, atol=0, msg=name)


def test_causal_mask_block_is_rows_of_the_square():
    """The offset block a chunk of query rows uses is exactly those rows of the square mask."""
    for strict in (False, True):
        square = causal_mask(9, strict=strict)
        for start, rows in ((0, 9), (0, 4), (3, 4), (5, 4)):
            block = causal_mask(rows, strict=strict, keys=start + rows, query_start=start)
            assert torch.equal(block, square[start:start + rows, :start + rows]), (strict, start, rows)


# --------------------------------------------------------------------------------------------------
# torus


@pytest.mark.parametrize("score", ["shared", "qk"])
def test_torus_default_is_one_tangent_update_of_the_circular_mean(score):
    attn, x, rope, _, inter = randomised_layer("torus", {"score": score})
    theta0 = inter.content_phases  # (b, t, h, m)
    gate, rate = attn.score_parameters({})
    if score == "shared":
        weights = causal_softmax(materialised_scores(theta0, rate, gate))  # (b, h, t, u)
    else:  # the scores of the query and key phases, from explicit differences
        weights = causal_softmax(attn.score_weights(x, theta0, gate, rate))
    expected = theta0.clone()
    th = theta0.transpose(1, 2)  # (b, h, t, m)
    for t in range(T):
        pull = (weights[:, :, t, : t + 1, None] * torch.sin(th[:, :, : t + 1] - th[:, :, t : t + 1])).sum(2)
        expected[:, t] = theta0[:, t] + attn.coupling * pull
    torch.testing.assert_close(inter.phases, expected, rtol=0, atol=1e-12)
    # the fused score features reproduce the gated cosine scores
    q2, k2 = drifted_features(theta0, rate, gate)
    torch.testing.assert_close(q2 @ k2.transpose(-1, -2), materialised_scores(theta0, rate, gate), rtol=0,
                               atol=1e-12)
    # coupling 0: no interaction, the phases stay at their content values
    _, off = attn(x, rope, return_intermediates=True, interventions={"coupling": 0.0})
    torch.testing.assert_close(off.phases, theta0, rtol=0, atol=0)


def test_torus_coupling_synchronises_attended_tokens():
    model = make_model("torus", {"n_steps": 8, "dt": 0.5, "method": "heun"})
    attn = model.blocks[0].attn
    x, rope = layer_input(model)
    with torch.no_grad():
        _, weak = attn(x, rope, return_intermediates=True, interventions={"coupling": 0.0, "gate": 0.0})
        _, strong = attn(x, rope, return_intermediates=True, interventions={"coupling": 1.0, "gate": 0.0})
    # gate 0: uniform attention over the prefix; the dynamics pull each token to the prefix mean
    spread_weak = torch.cos(weak.phases[:, 1:] - weak.phases[:, :-1]).mean()
    spread_strong = torch.cos(strong.phases[:, 1:] - strong.phases[:, :-1]).mean()
    assert spread_strong > spread_weak + 0.2


# --------------------------------------------------------------------------------------------------
# fsn


def test_fsn_direct_term_is_the_cores_frustrated_coupling():
    """With one harmonic, magnitude h and frustration alpha, the direct branch equals the core's
    Kuramoto-Sakaguchi coupling_term with the attention as a dense coupling matrix."""
    model = make_model("fsn", {"harmonics": 1})
    attn = model.blocks[0].attn
    x, rope = layer_input(model)
    h_amp, alpha = 0.7, 0.9
    _, inter = attn(x, rope, return_intermediates=True,
                    interventions={"coupling": h_amp, "frustration": alpha, "delay_coupling": 0.0})
    theta0 = inter.content_phases  # (b, t, h, m)
    b, t, h, m = theta0.shape
    gate, rate = attn.score_parameters({})
    weights = causal_softmax(attn.score_weights(x, theta0, gate, rate))  # (b, h, t, t), explicit differences
    per_channel = weights[:, :, None].expand(b, h, m, t, t).reshape(b * h * m, t, t)
    system = KuramotoSystem(omega=torch.zeros(()), coupling=torch.ones(()),
                            operator=DenseOperator(per_channel), harmonics=(h_amp,), frustration=(alpha,))
    state = theta0.permute(0, 2, 3, 1).reshape(b * h * m, t)  # b t h m -> (b h m) t
    expected = coupling_term(system, state).reshape(b, h, m, t).permute(0, 3, 1, 2)
    torch.testing.assert_close(inter.phases - theta0, expected, rtol=0, atol=1e-12)


def test_fsn_delay_term_reads_successors_but_never_the_future():
    model = make_model("fsn")
    attn = model.blocks[0].attn
    x, rope = layer_input(model)
    only_delay = {"coupling": 0.0}
    _, base = attn(x, rope, return_intermediates=True, interventions=only_delay)
    theta0 = base.content_phases
    assert (base.phases[:, 0] == theta0[:, 0]).all()  # token 0 has no predecessor: no delay term
    for s in (3, 6):
        bump = torch.zeros_like(theta0)
        bump[:, s:] = 1.3
        forced = {**only_delay, "phases": theta0 + bump}
        _, moved = attn(x, rope, return_intermediates=True, interventions=forced)
        torch.testing.assert_close(moved.phases[:, :s], base.phases[:, :s], rtol=0, atol=1e-14)
        # token s reads theta_{u+1} = theta_s itself through u = s - 1
        assert ((moved.phases[:, s] - 1.3) - base.phases[:, s]).abs().max() > 1e-4
    # the fused delay branch equals an explicit strict-past sum of successor phasors
    gate, rate = attn.score_parameters({})
    strict = causal_softmax(attn.score_weights(x, theta0, gate, rate), strict=True)  # (b, h, t, u)
    values = harmonic_values(theta0, attn.harmonics)  # (b, h, t, 2mM)
    successor = torch.cat([values[:, :, 1:], torch.zeros_like(values[:, :, :1])], dim=2)
    mean_field = strict @ successor
    expected = frustrated_coupling(values, (mean_field, attn.delay_real, attn.delay_imag))
    torch.testing.assert_close(base.phases - theta0, expected, rtol=0, atol=1e-12)


def test_fsn_handles_a_single_token():
    model = make_model("fsn").eval()
    assert torch.isfinite(model(tokens(t=1)).logits).all()


def test_fsn_signed_harmonics_and_frustration_act():
    model = make_model("fsn").eval()
    idx = tokens()
    base = model(idx).logits
    for values in ({"frustration": 0.8}, {"delay_frustration": -0.8}, {"coupling": -0.5}):
        assert (model(idx, interventions=every_layer(values)).logits - base).abs().max() > 1e-6, values


# --------------------------------------------------------------------------------------------------
# interventions API


@pytest.mark.parametrize("attention", VARIANTS)
def test_unknown_intervention_names_the_allowed_keys(attention):
    model = make_model(attention)
    allowed = intervention_names(model)[0]
    assert "coupling" in allowed
    with pytest.raises(ValueError, match=rf"no intervention 'bogus'; allowed: {allowed[0]}"):
        model(tokens(), interventions={0: {"bogus": 1.0}})
    with pytest.raises(ValueError, match=r"layer 1: .*no intervention 'bogus'"):
        with intervene(model, layers=[1], bogus=1.0):
            pass
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\]"):
        with intervene(model, layers=[7], coupling=0.0):
            pass


def test_intervene_context_equals_per_call_and_nests():
    model = make_model("pma").eval()
    idx = tokens()
    per_call = model(idx, interventions=every_layer({"gate": 0.0})).logits
    plain = model(idx).logits
    with intervene(model, gate=0.0):
        torch.testing.assert_close(model(idx).logits, per_call, rtol=0, atol=0)
        with intervene(model, gate=0.5, layers=[0]):  # inner wins on layer 0
            inner = model(idx).logits
            expected = model(idx, interventions={0: {"gate": 0.5}, 1: {"gate": 0.0}}).logits
            torch.testing.assert_close(inner, expected, rtol=0, atol=0)
        # a per-call value wins over the block's
        torch.testing.assert_close(model(idx, interventions=every_layer({"gate": 0.5})).logits,
                                   model(idx, interventions={0: {"gate": 0.5}, 1: {"gate": 0.5}}).logits)
    torch.testing.assert_close(model(idx).logits, plain, rtol=0, atol=0)  # hooks removed
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, gate=0.0):
            raise RuntimeError("boom")
    torch.testing.assert_close(model(idx).logits, plain, rtol=0, atol=0)  # removed on error too


def test_intervention_sweep_measures_loss_vs_forced_coupling():
    model = make_model("torus")
    idx = tokens()
    rows = intervention_sweep(model, (idx, idx.roll(-1, 1)), "coupling", [0.0, 0.5, 2.0])
    assert [r["value"] for r in rows] == [0.0, 0.5, 2.0]
    assert model.training  # mode restored
    model.eval()
    off = model(idx, idx.roll(-1, 1), interventions=every_layer({"coupling": 0.0})).loss
    assert rows[0]["loss"] == pytest.approx(float(off.detach()), rel=1e-12)
    assert len({round(r["loss"], 9) for r in rows}) == 3
    with pytest.raises(ValueError, match="allowed"):
        intervention_sweep(model, (idx, idx), "gain", [0.0])


def test_parse_intervention_specs():
    parsed = parse_intervention_specs(["coupling=0", "1.gate=0.5", "0,2.temperature=1e0", "2.coupling=3"], 3)
    assert parsed == {0: {"coupling": 0.0, "temperature": 1.0}, 1: {"coupling": 0.0, "gate": 0.5},
                      2: {"coupling": 3.0, "temperature": 1.0}}
    assert parse_intervention_specs(["all.gate=2"], 2) == {0: {"gate": 2.0}, 1: {"gate": 2.0}}
    for bad, message in (("coupling", "is not"), ("gate=x", "not a number"),
                         ("5.gate=1", r"layer\(s\) \[5\]"), ("a.gate=1", "not 'all'")):
        with pytest.raises(ValueError, match=message):
            parse_intervention_specs([bad], 3)
    model = make_model("fsn")
    out = model(tokens(), interventions=parse_intervention_specs(["coupling=0", "delay_coupling=0"], 2))
    assert torch.isfinite(out.logits).all()


def test_every_variant_can_be_parameter_matched():
    configs = {name: ModelConfig(**BASE, attention=name) for name in ("vanilla", "lattice", *VARIANTS)}
    report = parameter_report(match_parameters(configs))
    for arm, row in report.items():
        assert abs(row["relative_to_reference"]) < 0.02, arm


def test_option_errors_name_the_keys():
    with pytest.raises(ValueError, match=r"unknown option 'gates'.*allowed: .*gate_init"):
        ModelConfig(**BASE, attention="torus", attention_options={"gates": 1.0})
    with pytest.raises(ValueError, match=r"implementation"):
        ModelConfig(**BASE, attention="ssa", attention_options={"implementation": "fused"})
    with pytest.raises(ValueError, match=r"key_phases"):
        ModelConfig(**BASE, attention="pma", attention_options={"key_phases": "random"})


def test_intervention_values_can_be_tensors_and_callables():
    model = make_model("pma").eval()
    idx = tokens()
    per_head = torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=torch.float64)
    a = model(idx, interventions=every_layer({"gate": per_head})).logits
    b = model(idx, interventions=every_layer({"gate": lambda lam: 0 * lam + per_head})).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    frozen = model(idx, return_intermediates=True).intermediates
    replay = model(idx, interventions={i: {"phases": frozen[i].phases} for i in range(2)}).logits
    torch.testing.assert_close(replay, model(idx).logits, rtol=0, atol=1e-14)
    hot = model(idx, interventions=every_layer({"temperature": per_head + 1})).logits
    assert math.isfinite(float(hot.detach().sum()))


# --------------------------------------------------------------------------------------------------
# ablation specs (for `lotsim compare` arms ATTENTION:ABLATION)


@pytest.mark.parametrize("attention", VARIANTS)
def test_ablation_specs_are_valid(attention):
    from lotsim.model import get_attention

    ablations = get_attention(attention).ablations
    assert "frozen-phases" in ablations
    for name, spec in ablations.items():
        model = make_model(attention, spec["options"])  # the options validate
        names = [n for n, _ in model.named_parameters()]
        for suffix in spec["freeze"]:
            assert any(n.endswith(f".attn.{suffix}") for n in names), (name, suffix)


@pytest.mark.parametrize("attention", ["pma", "ssa"])
def test_no_oscillator_ablation_is_vanilla_up_to_a_temperature(attention):
    from lotsim.model import get_attention

    vanilla = make_model("vanilla", seed=0)
    ablated = make_model(attention, get_attention(attention).ablations["no-oscillator"]["options"], seed=5)
    assert not ablated.load_state_dict(vanilla.state_dict(), strict=False).unexpected_keys
    idx = tokens()
    # pma keeps a learned per-head temperature tau_base (= 1 at init up to float32 round-off): pin it
    pinned = every_layer({"temperature": 1.0}) if attention == "pma" else None
    expected = vanilla(idx).logits
    torch.testing.assert_close(ablated(idx, interventions=pinned).logits, expected, rtol=0, atol=1e-12)
    gap = (ablated(idx).logits - vanilla(idx).logits).abs().max()
    assert gap < (1e-5 if attention == "pma" else 1e-12)


def test_fsn_ablations_switch_their_branch_off():
    model = make_model("fsn", {"delay_init": 0.0})
    idx = tokens()
    off = model(idx, interventions=every_layer({"delay_coupling": 0.0})).logits
    torch.testing.assert_close(model(idx).logits, off, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# docs/attentions.md is executable


def test_attention_docs_examples_run(capsys):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "attentions.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc.name} block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'fsn'" in out and "'loss'" in out


@pytest.mark.parametrize("attention", ["torus", "fsn"])
def test_readings_are_compare_arms_with_valid_options(attention):
    from lotsim.model import get_attention
    from lotsim.train.compare import parse_arms

    cls = get_attention(attention)
    assert {"qk", "mean", "qk-mean"} <= set(cls.readings)
    for name, spec in cls.arm_presets().items():
        cls.Options(**spec["options"])  # every preset validates
        assert parse_arms(f"vanilla,{attention}:{name}")[1].ablation == name
    # a reading changes the layer it names: qk scores from their own projection, mean widens the readout
    qk = make_model(attention, {"score": "qk", "readout": "mean"})
    attn = qk.blocks[0].attn
    assert attn.score_phase is not None and attn.out.in_features == 4 * attn.n_heads * attn.angles


@pytest.mark.parametrize("options", [{"n_steps": 1}, {"n_steps": 2, "method": "heun"}, {"n_steps": 0}])
def test_torus_mean_readout_is_the_circular_mean_of_the_content_phases(options):
    """readout="mean" reads out sum_u A_tu [cos, sin] theta0_u (reused from the drift's first aggregate)."""
    attn, x, rope, y, inter = randomised_layer("torus", {"readout": "mean", **options})
    theta0 = inter.content_phases  # (b, t, h, m)
    gate, rate = attn.score_parameters({})
    weights = causal_softmax(attn.score_weights(x, theta0, gate, rate))  # (b, h, t, u)
    th = theta0.transpose(1, 2)  # (b, h, t, m)
    mean = torch.cat([weights @ torch.cos(th), weights @ torch.sin(th)], -1)  # (b, h, t, 2m)
    torch.testing.assert_close(y, attn.readout(inter.phases, mean), rtol=0, atol=1e-12)
