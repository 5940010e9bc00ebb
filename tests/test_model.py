"""Model tests: the four tests every attention variant passes (effect, gradient, causality,
purity), plus zero gain == vanilla, fused == materialised, telemetry,
registry, config errors, parameter matching and the head-lattice export.

Variants are parametrised over ``available_attentions()`` so a new variant is tested
automatically; ``MODES`` lists extra option sets per variant and ``OFF_SWITCH`` the intervention
that switches a variant's oscillator term off (used by the effect tests).
"""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lotsim.dynamics.core import KuramotoSystem, build_operator, kuramoto_integrator, order_parameter
from lotsim.lattice import build_lattice
from lotsim.model import (
    Attention,
    LatticeAttention,
    LatticeIntermediates,
    LOTModel,
    ModelConfig,
    PhaseIntermediates,
    available_attentions,
    count_parameters,
    fused_phase_attention,
    get_attention,
    head_lattice_system,
    match_parameters,
    materialised_phase_attention,
    parameter_counts,
    parameter_report,
    register_attention,
    unregister_attention,
    write_simulation_inputs,
)
from lotsim.model.phase import content_phases
from lotsim.model.rope import Rope, apply_rope, rope_tables
from lotsim.model.sequence_mode import causal_decayed_mean
from lotsim.model.transformer import RMSNorm

B, T, V = 2, 12, 37
BASE = dict(vocab_size=V, seq_len=16, d_model=32, n_layers=2, n_heads=4)

# extra option sets per variant (every variant also runs with its defaults)
MODES: dict[str, list[dict]] = {
    "lattice": [
        {"score": "multiplicative"},
        {"dynamics": "sequence"},
        {"tie_frequencies": True, "method": "euler"},
        {"coupling_range": "neighbours", "method": "rk4", "score": "multiplicative", "dynamics": "sequence"},
    ],
    "pma": [{"key_phases": "position", "method": "rk4"}],
    "ssa": [{"rope": True}],
    "torus": [{"n_steps": 2, "method": "heun", "angles": 3}, {"score": "qk", "readout": "mean"}],
    "fsn": [{"harmonics": 1, "angles": 2}, {"score": "qk", "readout": "mean", "angles": 3}],
}
# intervention that switches the oscillator term off, per variant
OFF_SWITCH: dict[str, dict] = {
    "lattice": {"gain": 0.0},
    "pma": {"gate": 0.0},
    "ssa": {"omega": 0.0},
    "torus": {"coupling": 0.0},
    "fsn": {"coupling": 0.0, "delay_coupling": 0.0},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cases() -> list:
    cases = []
    for name in available_attentions():
        for opts in [{}, *MODES.get(name, [])]:
            label = name + "".join(f"-{k}={v}" for k, v in opts.items())
            cases.append(pytest.param(name, opts, id=label))
    return cases


CASES = _cases()


def make_model(attention: str = "vanilla", options: dict | None = None, seed: int = 0,
               **overrides) -> LOTModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{**BASE, **overrides}, attention=attention, attention_options=options or {})
    return LOTModel(config).double()


def tokens(seed: int = 1, b: int = B, t: int = T) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def all_layers(model: LOTModel, values: dict) -> dict:
    return {layer: values for layer in range(model.config.n_layers)}


# --------------------------------------------------------------------------------------------------
# The four tests every variant passes


@pytest.mark.parametrize(("attention", "options"), CASES)
def test_causality(attention, options):
    model = make_model(attention, options).eval()
    idx = tokens()
    cut = 5
    changed = idx.clone()
    changed[:, cut:] = (changed[:, cut:] + 1 + torch.arange(T - cut)) % V
    out_a = model(idx, return_intermediates=True)
    out_b = model(changed, return_intermediates=True)
    torch.testing.assert_close(out_a.logits[:, :cut], out_b.logits[:, :cut], rtol=0, atol=1e-12)
    assert (out_a.logits[:, cut:] - out_b.logits[:, cut:]).abs().max() > 1e-3  # the change did act
    # every per-token telemetry statistic is computed over the prefix only
    for inter_a, inter_b in zip(out_a.intermediates, out_b.intermediates):
        for field in dataclasses.fields(inter_a):
            a, b = getattr(inter_a, field.name), getattr(inter_b, field.name)
            if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[:2] == (B, T):
                torch.testing.assert_close(a[:, :cut], b[:, :cut], rtol=0, atol=1e-12,
                                           msg=f"telemetry {field.name} leaks the future")


@pytest.mark.parametrize(("attention", "options"), CASES)
def test_purity(attention, options):
    model = make_model(attention, options).eval()
    idx = tokens()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    first = model(idx, idx, return_intermediates=True)
    second = model(idx, idx, return_intermediates=True)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.loss, second.loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed during a forward"
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), f"buffer {k} changed during a forward"


@pytest.mark.parametrize(("attention", "options"), CASES)
def test_every_parameter_gets_a_gradient(attention, options):
    model = make_model(attention, options)
    idx = tokens()
    model(idx, idx.roll(-1, 1)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize(("attention", "options"), CASES)
def test_effect_of_switching_the_oscillator_off(attention, options):
    if attention not in OFF_SWITCH:
        pytest.skip(f"{attention!r} has no oscillator term (add it to OFF_SWITCH if it has one)")
    model = make_model(attention, options).eval()
    idx = tokens()
    on = model(idx, idx.roll(-1, 1))
    off = model(idx, idx.roll(-1, 1), interventions=all_layers(model, OFF_SWITCH[attention]))
    assert (on.logits - off.logits).abs().max() > 1e-5
    assert (on.loss - off.loss).abs() > 1e-7


@pytest.mark.parametrize(("attention", "options"), [c for c in CASES if c.values[0] == "lattice"])
def test_phases_act_through_their_differences(attention, options):
    """The prior prototype's bug: a per-head constant phase for all tokens (what it added to every
    score) cannot change softmax attention. Here phases vary across tokens and that is what acts."""
    model = make_model(attention, options).eval()
    idx = tokens()
    base = model(idx, idx.roll(-1, 1))
    offset = torch.linspace(0.3, 2.9, 4, dtype=torch.float64)  # one constant per head
    shifted = model(idx, idx.roll(-1, 1),
                    interventions=all_layers(model, {"phases": lambda phi: phi + offset}))
    torch.testing.assert_close(shifted.logits, base.logits, rtol=0, atol=1e-12)
    noise = torch.randn(B, T, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    perturbed = model(idx, idx.roll(-1, 1),
                      interventions=all_layers(model, {"phases": lambda phi: phi + noise}))
    assert (perturbed.logits - base.logits).abs().max() > 1e-5
    assert (perturbed.loss - base.loss).abs() > 1e-7
    # and the learned content phases differ across tokens (not a per-head constant)
    theta = model(idx, return_intermediates=True).intermediates[0].theta
    assert theta.std(dim=1).min() > 0.05


# --------------------------------------------------------------------------------------------------
# Exactness


LATTICE_SCORES = [{}, {"score": "multiplicative"}, {"dynamics": "sequence"}]


@pytest.mark.parametrize("options", LATTICE_SCORES)
def test_zero_gain_equals_vanilla(options):
    vanilla = make_model("vanilla", seed=0)
    lattice = make_model("lattice", options, seed=5)
    result = lattice.load_state_dict(vanilla.state_dict(), strict=False)
    assert not result.unexpected_keys
    oscillator = ("phase.weight", "omega", "coupling", "lattice_constant_raw", "gain", "sequence_frequency",
                  "sequence_coupling", "sequence_length_raw")
    assert all(key.endswith(oscillator) for key in result.missing_keys)
    idx = tokens()
    expected = vanilla(idx, idx).logits
    assert (lattice(idx).logits - expected).abs().max() > 1e-6  # the phase term acts at the init gain
    with torch.no_grad():
        for block in lattice.blocks:
            block.attn.gain.zero_()
    torch.testing.assert_close(lattice(idx).logits, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("options", [*LATTICE_SCORES,
                                     {"tie_frequencies": True, "coupling_range": "neighbours"}])
def test_fused_equals_materialised(options):
    fused = make_model("lattice", options)
    reference = make_model("lattice", {**options, "implementation": "materialised"})
    reference.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for block in (*fused.blocks, *reference.blocks):
            block.attn.gain.fill_(0.7)  # a large gain, so the phase term dominates the check
    idx = tokens()
    a, b = fused(idx, idx), reference(idx, idx)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-10)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("score", ["additive", "multiplicative"])
def test_fused_kernel_identity_with_signed_gains(score):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=g) for _ in range(3))
    phases = 4 * torch.randn(2, 9, 3, dtype=torch.float64, generator=g)
    gain = torch.tensor([-1.3, 0.0, 2.1], dtype=torch.float64)
    torch.testing.assert_close(fused_phase_attention(q, k, v, phases, gain, score),
                               materialised_phase_attention(q, k, v, phases, gain, score), rtol=0, atol=1e-12)


def test_causal_decayed_mean_matches_loop_and_is_causal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 3, 2, dtype=torch.float64, generator=g)
    decay = torch.tensor([0.0, 0.5, 0.93], dtype=torch.float64)
    y = causal_decayed_mean(x, decay)
    expected = torch.zeros_like(x)
    for t in range(11):
        for u in range(t):
            expected[:, t] += (1 - decay[:, None]) * decay[:, None] ** (t - 1 - u) * x[:, u]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(causal_decayed_mean(x, decay, max_len=64), y, rtol=0, atol=1e-15)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    assert torch.equal(causal_decayed_mean(x2, decay)[:, :7], y[:, :7])  # strictly past: t = 6 unchanged


def test_sequence_mode_couples_tokens_and_reduces_to_parallel():
    seq = make_model("lattice", {"dynamics": "sequence"})
    par = make_model("lattice", {})
    par.load_state_dict(seq.state_dict(), strict=False)
    idx = tokens()
    off = seq(idx, interventions=all_layers(seq, {"sequence_coupling": 0.0})).logits
    torch.testing.assert_close(off, par(idx).logits, rtol=0, atol=1e-12)
    # wave-like: in sequence mode a token's phases depend on earlier tokens, in parallel mode not
    layer_seq, layer_par = seq.blocks[0].attn, par.blocks[0].attn
    x = torch.randn(1, T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x2 = x.clone()
    x2[:, 0] += 1.0
    rope = Rope(seq.rope_cos[:T], seq.rope_sin[:T])
    for layer, acts in ((layer_seq, True), (layer_par, False)):
        _, ia = layer(x, rope, return_intermediates=True)
        _, ib = layer(x2, rope, return_intermediates=True)
        moved = (ia.theta[:, 4] - ib.theta[:, 4]).abs().max()
        assert (moved > 1e-6) if acts else (moved == 0)


# --------------------------------------------------------------------------------------------------
# Oscillator gradients and regularisers


@pytest.mark.parametrize("options", [{}, {"dynamics": "sequence"}, {"tie_frequencies": True}])
def test_regularisers_have_gradients(options):
    model = make_model("lattice", options)
    idx = tokens()
    out = model(idx, return_intermediates=True)
    losses = model.regularization_losses(out.intermediates)
    assert set(losses) == {"sync", "diversity"}
    attn = model.blocks[0].attn
    named = dict(attn.named_parameters())
    sync_params = ["phase.weight", "omega", "coupling", "lattice_constant_raw"]
    if options.get("dynamics") == "sequence":
        sync_params += ["sequence_coupling", "sequence_length_raw"]
    grads = torch.autograd.grad(losses["sync"], [named[n] for n in sync_params], retain_graph=True)
    for name, grad in zip(sync_params, grads):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, f"sync gives {name} no gradient"
    div_params = ["omega", "phase.weight"]
    if not options.get("tie_frequencies"):
        div_params.append("sequence_frequency")
    grads = torch.autograd.grad(losses["diversity"], [named[n] for n in div_params])
    for name, grad in zip(div_params, grads):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, f"diversity gives {name} no gradient"


def test_vanilla_has_no_regularisers_and_empty_telemetry():
    model = make_model("vanilla")
    out = model(tokens(), return_intermediates=True)
    assert len(out.intermediates) == 2 and out.intermediates[0].summary() == {}
    assert model.regularization_losses(out.intermediates) == {}


# --------------------------------------------------------------------------------------------------
# Telemetry


# variants whose tokens carry oscillator phases: their telemetry is a PhaseIntermediates
PHASE_VARIANTS = ("lattice", "pma", "torus", "fsn")


@pytest.mark.parametrize("attention", PHASE_VARIANTS)
def test_phase_variants_report_phase_intermediates(attention):
    model = make_model(attention).eval()
    for inter in model(tokens(), return_intermediates=True).intermediates:
        assert isinstance(inter, PhaseIntermediates)
        assert inter.theta.dim() == 3 and inter.theta.shape[:2] == (B, T)
        r, _ = order_parameter(inter.theta)  # the one order parameter of the core
        torch.testing.assert_close(inter.order_parameter, r, rtol=0, atol=1e-12)
        torch.testing.assert_close(inter.mean_order_parameter, r.mean(), rtol=0, atol=1e-12)
        local = inter.local_order_parameter
        assert local is None or local.shape == inter.theta.shape


@pytest.mark.parametrize(("attention", "options"), CASES)
def test_every_intervention_takes_a_callable(attention, options):
    """One rule for every variant and name: the identity callable changes nothing."""
    model = make_model(attention, options).eval()
    idx = tokens()
    base = model(idx).logits
    for name in model.blocks[0].attn.intervention_names:
        same = model(idx, interventions=all_layers(model, {name: lambda current: current})).logits
        torch.testing.assert_close(same, base, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("options", [{}, {"dynamics": "sequence"}])
def test_lattice_interventions_take_values_and_callables_alike(options):
    model = make_model("lattice", options).eval()
    idx = tokens()
    base = model(idx).logits
    for name in LatticeAttention.intervention_names:
        if name.startswith("sequence_") and name != "sequence_frequency" and not options:
            continue  # no coupling along the sequence in the parallel mode
        value = model(idx, interventions=all_layers(model, {name: 0.3})).logits
        called = model(idx, interventions=all_layers(model, {name: lambda c: torch.full_like(c, 0.3)})).logits
        assert torch.equal(value, called), name
        assert (value - base).abs().max() > 1e-6, name


def test_telemetry_shapes_and_ranges(monkeypatch):
    model = make_model("lattice").eval()
    idx = tokens()
    out = model(idx, return_intermediates=True)
    assert len(out.intermediates) == 2
    inter = out.intermediates[1]
    assert isinstance(inter, LatticeIntermediates) and inter.layer == 1
    for name in ("content_phases", "theta", "phases", "local_order_parameter"):
        assert getattr(inter, name).shape == (B, T, 4), name
    assert inter.order_parameter.shape == (B, T) and inter.mean_order_parameter.shape == ()
    for name in ("omega", "coupling", "lattice_constant", "sequence_frequency", "gain"):
        assert getattr(inter, name).shape == (4,), name
    assert inter.coupling_weights.shape == (4, 4)
    assert (inter.lattice_constant > 0).all()
    for r in (inter.order_parameter, inter.local_order_parameter):
        assert (r >= 0).all() and (r <= 1 + 1e-12).all()
    torch.testing.assert_close(inter.order_parameter,
                               torch.exp(1j * inter.theta.to(torch.complex128)).mean(-1).abs())
    assert set(inter.summary()) >= {"order_parameter", "local_order_parameter", "gain_abs"}
    # cheap when not asked: no telemetry is computed at all
    monkeypatch.setattr(LatticeAttention, "_telemetry", lambda *a, **k: pytest.fail("telemetry computed"))
    assert model(idx).intermediates is None


# --------------------------------------------------------------------------------------------------
# Registry, config and errors


def test_registry_round_trip_and_errors():
    names = available_attentions()
    assert {"vanilla", "lattice"} <= set(names)
    for name in names:
        assert get_attention(name).name == name
    with pytest.raises(ValueError, match=r"unknown attention 'nope'; available: .*lattice.*vanilla"):
        get_attention("nope")
    with pytest.raises(ValidationError, match="unknown attention 'nope'"):
        ModelConfig(**BASE, attention="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_attention("vanilla")(type("Other", (Attention,), {}))
    with pytest.raises(ValueError, match="subclass of Attention"):
        register_attention("bad")(int)

    @register_attention("test-identity")
    class Identity(Attention):
        def forward(self, x, rope, *, return_intermediates=False, interventions=None):
            return x, None

    try:
        assert "test-identity" in available_attentions()
        model = LOTModel(ModelConfig(**BASE, attention="test-identity"))
        assert model(tokens()).logits.shape == (B, T, V)
    finally:
        unregister_attention("test-identity")
    assert "test-identity" not in available_attentions()


def test_unknown_attention_option_names_the_key():
    with pytest.raises(ValidationError, match=r"unknown option 'n_step'.*allowed: .*n_steps"):
        ModelConfig(**BASE, attention="lattice", attention_options={"n_step": 3})
    with pytest.raises(ValidationError, match=r"unknown option 'gain_init'.*allowed: none"):
        ModelConfig(**BASE, attention="vanilla", attention_options={"gain_init": 0.1})
    with pytest.raises(ValidationError, match=r"score: Input should be 'additive' or 'multiplicative'"):
        ModelConfig(**BASE, attention="lattice", attention_options={"score": "bilinear"})
    with pytest.raises(ValidationError, match="d_ff"):
        ModelConfig(**BASE, d_ff=0)
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig(**BASE, n_head=4)


def test_config_derives_d_ff_and_checks_heads():
    assert ModelConfig(**BASE).d_ff == 88  # 8/3 * 32 = 85.3 -> multiple of 8
    assert ModelConfig(**{**BASE, "d_model": 256, "n_heads": 8}).d_ff == 688
    assert ModelConfig(**BASE, d_ff=100).d_ff == 100
    with pytest.raises(ValidationError, match="not divisible by n_heads=3"):
        ModelConfig(**{**BASE, "n_heads": 3})
    config = ModelConfig(**BASE, attention="lattice")
    assert ModelConfig.model_validate(config.model_dump()) == config  # resolved config round-trips


def test_lattice_that_does_not_fit_the_heads_is_an_error():
    with pytest.raises(ValidationError, match=r"has 6 nodes but n_heads=4"):
        ModelConfig(**BASE, attention="lattice", attention_options={"shape": [2, 3]})
    with pytest.raises(ValueError, match=r"has \d+ nodes but n_heads=4"):
        ModelConfig(**BASE, attention="lattice", attention_options={"topology": "triangular"})
    with pytest.raises(ValidationError, match=r"head lattice \(square, n_heads=4\): a periodic square"):
        ModelConfig(**BASE, attention="lattice", attention_options={"periodic": True})


@pytest.mark.parametrize("options", [
    {"topology": "ring"}, {"topology": "complete"}, {"topology": "small-world", "shape": [9]},
    {"periodic": True}, {"topology": "hexagonal", "shape": [1, 2]},
])
def test_other_head_lattices(options):
    heads = 10 if options.get("topology") == "hexagonal" else 9
    model = make_model("lattice", options, n_heads=heads, d_model=2 * 2 * heads)
    assert model.blocks[0].attn.lattice.n == heads
    out = model(tokens(), tokens(), return_intermediates=True)
    assert torch.isfinite(out.loss)
    assert out.intermediates[0].local_order_parameter.shape == (B, T, heads)


def test_most_square_default_shape():
    model = make_model("lattice", n_heads=8, d_model=32)
    assert model.blocks[0].attn.lattice.shape == (2, 4)


def test_intervention_and_length_errors():
    model = make_model("lattice")
    with pytest.raises(ValueError, match=r"no intervention 'gains'; allowed: omega"):
        model(tokens(), interventions={0: {"gains": 0.0}})
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\]"):
        model(tokens(), interventions={5: {"gain": 0.0}})
    with pytest.raises(ValueError, match="no intervention 'gain'; allowed: none"):
        make_model("vanilla")(tokens(), interventions={0: {"gain": 0.0}})
    with pytest.raises(ValueError, match="exceeds the model's seq_len=16"):
        model(tokens(t=17))


def test_dropout_is_train_only():
    model = make_model("lattice", dropout=0.2)
    idx = tokens()
    a, b = model(idx).logits, model(idx).logits
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(idx).logits, model(idx).logits)


# --------------------------------------------------------------------------------------------------
# Parameter matching


def test_parameter_matching_within_two_percent():
    configs = {
        "vanilla": ModelConfig(**BASE),
        "lattice": ModelConfig(**BASE, attention="lattice"),
        "lattice-seq": ModelConfig(**BASE, attention="lattice", attention_options={"dynamics": "sequence"}),
    }
    matched = match_parameters(configs)
    report = parameter_report(matched)
    assert matched["lattice"] == configs["lattice"]
    assert matched["vanilla"].d_ff > configs["vanilla"].d_ff
    for arm, row in report.items():
        assert abs(row["relative_to_reference"]) < 0.02, arm
        assert row["non_embedding"] == row["total"] - V * 32
    torch.manual_seed(0)
    assert count_parameters(LOTModel(matched["vanilla"])) == parameter_counts(matched["vanilla"])
    # reference defaults to the largest arm without a lattice arm
    big = ModelConfig(**BASE, d_ff=200)
    out = match_parameters({"small": ModelConfig(**BASE), "big": big})
    assert out["big"] == big and abs(parameter_report(out)["small"]["relative_to_reference"]) < 0.02
    with pytest.raises(ValueError, match="reference arm 'x'"):
        match_parameters(configs, reference="x")


# --------------------------------------------------------------------------------------------------
# Export to the simulator


def _trained_like(options: dict | None = None) -> LOTModel:
    model = make_model("lattice", options or {})
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move away from the symmetric init, as training would
        for block in model.blocks:
            attn = block.attn
            attn.omega.add_(0.5 * torch.randn(4, generator=g, dtype=torch.float64))
            attn.coupling.add_(torch.randn(4, generator=g, dtype=torch.float64))
            attn.lattice_constant_raw.add_(torch.randn(4, generator=g, dtype=torch.float64))
    return model.eval()


@pytest.mark.parametrize("options", [{}, {"coupling_range": "neighbours", "method": "rk4", "n_steps": 3}])
def test_head_lattice_export_reproduces_the_model_dynamics(tmp_path, options):
    model = _trained_like(options)
    inter = model(tokens(), return_intermediates=True).intermediates[1]
    theta0 = inter.content_phases.detach().reshape(B * T, 4)
    expected = inter.theta.detach().reshape(B * T, 4)
    attn = model.blocks[1].attn
    o = attn.options

    def run(system):
        integrator = kuramoto_integrator(system, method=o.method, dt=o.dt)
        return integrator.step_fn(integrator.init_fn(theta0), o.n_steps).theta

    lattice, system = head_lattice_system(model, 1)
    assert lattice.directed and lattice.n == 4
    torch.testing.assert_close(run(system), expected, rtol=0, atol=1e-12)

    # through the files, read back the way the simulator reads them
    recipe_path = write_simulation_inputs(model, 1, tmp_path / "sim")
    recipe = tomllib.loads(recipe_path.read_text())
    assert recipe["lattice"] == {"topology": "edgelist", "file": "edges.txt", "directed": True}
    assert recipe["dynamics"]["normalization"] == "none" and recipe["dynamics"]["coupling"] == 1.0
    assert recipe["dynamics"]["dt"] == o.dt and recipe["dynamics"]["integrator"] == o.method
    assert recipe["frequencies"] == {"dist": "file", "file": "omega.npy"}
    folder = recipe_path.parent
    read = build_lattice("edgelist", path=folder / recipe["lattice"]["file"], directed=True)
    omega = torch.as_tensor(np.load(folder / recipe["frequencies"]["file"]))
    coupling = torch.tensor(recipe["dynamics"]["coupling"], dtype=torch.float64)
    operator = build_operator(read, "none", layout="dense")
    simulated = KuramotoSystem(omega=omega, coupling=coupling, operator=operator)
    torch.testing.assert_close(run(simulated), expected, rtol=0, atol=1e-12)

    # direction: line "g h w" means g drives h with w = kappa_h * W_hg
    g, h, w = (folder / "edges.txt").read_text().splitlines()[0].split()
    g, h, w = int(g), int(h), float(w)
    with torch.no_grad():
        params = attn.oscillator_parameters()
        weights = attn.coupling_weights(params.lattice_constant)
    assert w == pytest.approx(float((params.coupling[h] * weights[h, g]).detach()), rel=1e-15)


def test_export_refuses_a_vanilla_layer(tmp_path):
    model = make_model("vanilla")
    with pytest.raises(ValueError, match="layer 0 uses attention 'vanilla'"):
        head_lattice_system(model, 0)
    with pytest.raises(ValueError, match="layers 0..1"):
        write_simulation_inputs(_trained_like(), 2, tmp_path)


def test_rope_is_the_rotate_half_rotation_and_preserves_norms():
    cos, sin = rope_tables(T, 8, dtype=torch.float64)
    x = torch.randn(2, 3, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rotate_half = torch.cat([-x[..., 4:], x[..., :4]], dim=-1)
    torch.testing.assert_close(apply_rope(x, Rope(cos, sin)), x * cos + rotate_half * sin, rtol=0, atol=1e-15)
    pairs = apply_rope(x, Rope(cos, sin)).unflatten(-1, (2, 4))  # (x_i, x_{i+d/2}) rotate as 2-vectors
    torch.testing.assert_close(pairs.square().sum(-2), x.unflatten(-1, (2, 4)).square().sum(-2), rtol=1e-13, atol=0)


def test_content_phases_training_backward_equals_torchs_atan2():
    """The hand-written training backward of the content phases gives torch's atan2 values and gradients."""
    g = torch.Generator().manual_seed(0)
    projection = torch.nn.Linear(16, 2 * 3 * 4, bias=False).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=g, requires_grad=True)
    out_grad = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=g)
    phases = content_phases(projection, x, 3, 4)
    assert "PairAngle" in type(phases.grad_fn).__name__  # the training path is tested
    pairs = projection(x).view(2, 5, 3, 4, 2)
    reference = torch.atan2(pairs[..., 1], pairs[..., 0])
    torch.testing.assert_close(phases, reference, rtol=0, atol=1e-15)  # 1 ulp: vectorised atan2
    got = torch.autograd.grad(phases, (x, projection.weight), out_grad)
    expected = torch.autograd.grad(reference, (x, projection.weight), out_grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(content_phases(projection, x, 3, 4), reference, rtol=0, atol=1e-15)


def test_rms_norm_training_backward_equals_torchs():
    """The hand-written CPU training backward gives torch's F.rms_norm values and gradients."""
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(16).double()
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(16, dtype=torch.float64, generator=g))
    x = torch.randn(3, 5, 16, dtype=torch.float64, generator=g, requires_grad=True)
    out_grad = torch.randn(3, 5, 16, dtype=torch.float64, generator=g)
    y = norm(x)
    assert y.grad_fn is not None and "RMSNorm" in type(y.grad_fn).__name__  # the training path is tested
    reference = F.rms_norm(x, (16,), norm.weight, norm.eps)
    torch.testing.assert_close(y, reference, rtol=0, atol=1e-15)
    got = torch.autograd.grad(y, (x, norm.weight), out_grad)
    expected = torch.autograd.grad(reference, (x, norm.weight), out_grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), reference, rtol=0, atol=1e-15)
