"""``lotsim export``: ONNX and torch.export for every registered attention variant, verified.

Default suite: ONE real export (a lattice model to ONNX, shared by a module fixture) checked for
parity at several (batch, seq) shapes, metadata, the sidecar and the standalone example script;
plus the CLI's bad-input paths, which never reach the exporter. Everything else (each variant x
format, the lattice modes, opsets, pt2 round trips, a real verification failure) is ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from typer.testing import CliRunner

from lotsim.cli import app
from lotsim.export import (
    MAX_OPSET,
    MIN_OPSET,
    check_opset,
    default_shapes,
    export_checkpoint,
    export_onnx,
    export_pt2,
    load_model_for_export,
    read_checkpoint,
    read_metadata,
    require_packages,
    sidecar_path,
    verify_export,
)
from lotsim.model import LOTModel, ModelConfig, available_attentions
from lotsim.tasks import vocabulary_from_recipe
from lotsim.train.checkpoint import save_checkpoint
from tests.conftest import assert_one_line_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnx_generate.py"
COPY_REVERSE = {"kind": "copy_reverse", "length": 4, "n_symbols": 10, "seed": 0}  # vocab 11, seq_len 8
SHAPES = [(1, 1), (2, 7), (3, 8), (5, 3)]


def tiny_config(attention: str = "lattice", n_layers: int = 2, **options) -> ModelConfig:
    return ModelConfig(vocab_size=11, seq_len=8, d_model=16, n_layers=n_layers, n_heads=4, attention=attention,
                       attention_options=options)


def tiny_model(config: ModelConfig, seed: int = 0) -> LOTModel:
    torch.manual_seed(seed)
    model = LOTModel(config)
    with torch.no_grad():  # move the oscillator parameters off their init so they matter
        for name, p in model.named_parameters():
            if "gain" in name or "coupling" in name:
                p.add_(0.5 * torch.rand_like(p))
    return model.eval()


def training_checkpoint(path: Path, model: LOTModel, task: dict | None = None) -> Path:
    """A checkpoint as ``lotsim train`` writes it (weights + the resolved recipe's TOML), without training."""
    recipe = {"name": "tiny", "seed": 0, "task": task or COPY_REVERSE,
              "model": model.config.model_dump(mode="json", exclude_none=True)}
    return save_checkpoint(path, {"model": model.state_dict(), "recipe": tomli_w.dumps(recipe), "step": 7})


def invoke(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def assert_user_error(result, *needles: str) -> None:
    assert_one_line_error(result, *needles)
    assert result.stdout == ""


def graph_ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


# -------------------------------------------------------------------------------------------------
# The one real export of the default suite: a 2-layer lattice model -> ONNX through the CLI


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    model = tiny_model(tiny_config("lattice"))
    checkpoint = training_checkpoint(folder / "last.pt", model)
    out = folder / "tiny.onnx"
    result = invoke(checkpoint, "--format", "onnx", "--output", out, "--json")
    assert result.exit_code == 0, result.output
    return {"model": model, "checkpoint": checkpoint, "path": out, "report": json.loads(result.stdout)}


def test_lattice_onnx_matches_pytorch_at_several_shapes(exported):
    report, path, model = exported["report"], exported["path"], exported["model"]
    assert report["ok"] and report["format"] == "onnx" and report["attention"] == "lattice"
    assert [v["shape"] for v in report["verification"]] == [[1, 1], [2, 7], [3, 8]]
    assert all(v["ok"] and v["max_abs_diff"] <= 1e-4 for v in report["verification"])
    assert report["opset"] == 20 and report["external_data"] is None and report["seq_len"] == 8
    assert not (path.parent / (path.name + ".data")).exists()  # weights inside the one file
    # an independent check at shapes the CLI did not use, through onnxruntime directly
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("idx", "tensor(int64)", ["batch", "seq"])
    assert (out.name, out.shape) == ("logits", ["batch", "seq", 11])
    for b, t in [(4, 5), (1, 8)]:
        idx = torch.randint(0, 11, (b, t), generator=torch.Generator().manual_seed(b * 10 + t))
        with torch.no_grad():
            expected = model(idx).logits.numpy()
        np.testing.assert_allclose(session.run(None, {"idx": idx.numpy()})[0], expected, rtol=0, atol=1e-4)
    # the Kuramoto steps are unrolled into a fixed graph: no control flow left in it
    assert not graph_ops(path) & {"Loop", "Scan", "If"}


def test_metadata_and_sidecar_describe_the_model(exported):
    path, model = exported["path"], exported["model"]
    meta = read_metadata(path)
    assert meta["lotsim.attention"] == "lattice" and meta["lotsim.vocab_size"] == "11"
    assert meta["lotsim.seq_len"] == "8" and meta["lotsim.input"] == "idx" and meta["lotsim.output"] == "logits"
    assert ModelConfig.model_validate(json.loads(meta["lotsim.model_config"])) == model.config
    vocabulary = json.loads(meta["lotsim.vocabulary"])
    assert vocabulary == {"kind": "tokens", "itos": [*"0123456789", "|"], "join": ""}
    assert "[task]" in meta["lotsim.recipe"]
    side = json.loads(sidecar_path(path).read_text())
    assert side["vocabulary"] == vocabulary and side["seq_len"] == 8 and side["checkpoint_step"] == 7
    assert side["input"] == {"name": "idx", "dtype": "int64", "shape": ["batch", "seq"]}
    # no source paths of the exporting machine inside the file
    assert b"stack_trace" not in path.read_bytes()


def _run_example(*args, cwd):
    result = subprocess.run([sys.executable, "-X", "importtime", str(EXAMPLE), *map(str, args), "--json"],
                            capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnxruntime" in imported and "numpy" in imported
    assert not imported & {"torch", "lotsim"}, "the example must run on onnxruntime + numpy only"
    return json.loads(result.stdout)


def test_example_script_generates_and_scores_without_torch(exported, tmp_path):
    path, model = exported["path"], exported["model"]
    prompt = "3141|"
    got = _run_example(path, "--prompt", prompt, "--max-new-tokens", "6", "--temperature", "0", cwd=tmp_path)
    # greedy decoding in PyTorch, cropping the context to seq_len like the script
    ids = [3, 1, 4, 1, 10]
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids[-8:]])).logits[0, -1].argmax()))
    assert got["prompt_ids"] == [3, 1, 4, 1, 10] and got["ids"] == ids[5:]
    assert got["text"] == "".join("0123456789|"[i] for i in ids[5:])
    sampled = _run_example(path, "--prompt", prompt, "--max-new-tokens", "12", "--top-k", "3", cwd=tmp_path)
    assert len(sampled["ids"]) == 12 and all(0 <= i < 11 for i in sampled["ids"])

    text = "31415926|62951413"  # 17 tokens: two windows of seq_len + 1
    scored = _run_example(path, "--score", text, cwd=tmp_path)
    tokens = torch.tensor(["0123456789|".index(c) for c in text])
    nll, n = 0.0, 0
    for start in range(0, len(tokens) - 1, 8):
        chunk = tokens[start:start + 9]
        with torch.no_grad():
            logits = model(chunk[None, :-1]).logits[0]
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
        n += len(chunk) - 1
    assert scored["tokens"] == n == 16 and scored["nll"] == pytest.approx(nll / n, abs=1e-4)

    # metadata stripped (some converters drop it): the sidecar JSON is the fallback
    stripped = tmp_path / "stripped.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(stripped))
    sidecar_path(stripped).write_text(sidecar_path(path).read_text())
    again = _run_example(stripped, "--prompt", prompt, "--max-new-tokens", "6", "--temperature", "0", cwd=tmp_path)
    assert again["ids"] == got["ids"]


def test_example_refuses_inputs_longer_than_the_exported_maximum(exported):
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_generate", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    session, meta = example.load(str(exported["path"]))
    assert meta["seq_len"] == 8 and example.logits_of(session, meta, [1] * 8).shape == (8, 11)
    with pytest.raises(example.TooLong, match="9 tokens exceed the model's maximum length of 8"):
        example.logits_of(session, meta, [1] * 9)
    with pytest.raises(SystemExit, match="no vocabulary"):  # a text prompt for a model without one
        example.Codec(None).encode("ROMEO:")


# -------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, before any export work


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return training_checkpoint(tmp_path_factory.mktemp("ck") / "last.pt", tiny_model(tiny_config("vanilla", 1)))


def test_missing_checkpoint(tmp_path):
    assert_user_error(invoke(tmp_path / "nope.pt", "-o", tmp_path / "m.onnx"), "does not exist", "nope.pt")
    assert_user_error(invoke(tmp_path, "-o", tmp_path / "m.onnx"), "no checkpoint")


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert_user_error(invoke(text, "-o", tmp_path / "m.onnx"), "not a readable checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert_user_error(invoke(tensor, "-o", tmp_path / "m.onnx"), "not a lotsim training checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, foreign)  # e.g. a Lightning checkpoint
    assert_user_error(invoke(foreign, "-o", tmp_path / "m.onnx"), "not a lotsim training checkpoint")
    no_recipe = save_checkpoint(tmp_path / "no_recipe.pt", {"model": {}})
    assert_user_error(invoke(no_recipe, "-o", tmp_path / "m.onnx"), "no readable recipe")
    no_model = save_checkpoint(tmp_path / "no_model.pt", {"model": {}, "recipe": 'name = "x"\n'})
    assert_user_error(invoke(no_model, "-o", tmp_path / "m.onnx"), "not a model checkpoint", "[model]")
    bad_config = save_checkpoint(tmp_path / "bad_config.pt", {"model": {}, "recipe": "[model]\nvocab_size = 11\n"})
    assert_user_error(invoke(bad_config, "-o", tmp_path / "m.onnx"), "model config is invalid", "seq_len")
    assert not (tmp_path / "m.onnx").exists()


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = training_checkpoint(tmp_path / "mismatch.pt", tiny_model(tiny_config("vanilla", 2)))
    state = torch.load(path, weights_only=False)
    save_checkpoint(path, {**state, "model": tiny_model(tiny_config("vanilla", 1)).state_dict()})
    assert_user_error(invoke(path, "-o", tmp_path / "m.onnx"), "weights do not match")


def test_unknown_format_opset_and_seq_len(small_checkpoint, tmp_path):
    assert_user_error(invoke(small_checkpoint, "--format", "tflite"), "'tflite'", "onnx, pt2")
    assert_user_error(invoke(small_checkpoint, "-o", tmp_path / "model.tflite"), "'tflite'")
    for opset in (MIN_OPSET - 1, MAX_OPSET + 1):
        assert_user_error(invoke(small_checkpoint, "--opset", opset, "-o", tmp_path / "m.onnx"),
                          f"opset {opset}", f"{MIN_OPSET}..{MAX_OPSET}")
    assert_user_error(invoke(small_checkpoint, "--seq-len", 9, "-o", tmp_path / "m.onnx"), "seq_len 9", "1..8")
    assert_user_error(invoke(small_checkpoint, "--seq-len", 0, "-o", tmp_path / "m.onnx"), "--seq-len 0")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_export_extra_is_one_line(small_checkpoint, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    result = invoke(small_checkpoint, "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert_user_error(result, f"missing: {package}", "lotsim[export]")
    with pytest.raises(ValueError, match="lotsim\\[export\\]"):
        require_packages(("onnx", "onnxscript", "onnxruntime"), "ONNX export")


def test_verification_failure_exits_1(small_checkpoint, tmp_path, monkeypatch):
    import lotsim.export

    def fake_export(checkpoint, output, fmt, **kwargs):
        return {"output": str(output), "format": fmt, "bytes": 1, "attention": "vanilla", "vocab_size": 11,
                "seq_len": 8, "opset": 20, "graph_nodes": 1, "export_seconds": 0.1, "external_data": None,
                "sidecar": "x.json", "verified": True, "tolerance": kwargs["tolerance"], "ok": False,
                "verification": [{"shape": [1, 1], "max_abs_diff": 1e-7, "ok": True},
                                 {"shape": [3, 8], "max_abs_diff": 2e-3, "ok": False}]}

    monkeypatch.setattr(lotsim.export, "export_checkpoint", fake_export)
    result = invoke(small_checkpoint, "-o", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False  # the JSON report still comes out, alone on stdout
    assert "verification failed at (batch, seq) = (3, 8)" in result.stderr and "0.002" in result.stderr


def test_library_checks():
    assert default_shapes(8) == [(1, 1), (2, 7), (3, 8)]
    assert default_shapes(1) == [(1, 1), (2, 1), (3, 1)]
    assert check_opset(None) is None and check_opset(MAX_OPSET) == MAX_OPSET
    with pytest.raises(ValueError, match="opset 7"):
        check_opset(7)
    assert sidecar_path("a/model.onnx") == Path("a/model.onnx.json")
    assert vocabulary_from_recipe({"task": {"kind": "char_lm", "level": "byte"}})["kind"] == "byte"
    recall = vocabulary_from_recipe({"task": {"kind": "associative_recall", "n_keys": 2, "n_values": 3}})
    assert recall["itos"] == ["k0", "k1", "v0", "v1", "v2", "|"] and recall["join"] == " "
    assert vocabulary_from_recipe({"task": {"kind": "custom"}}) is None and vocabulary_from_recipe({}) is None


def test_char_vocabulary_comes_from_the_task_file(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("hello world\n")
    task = {"kind": "char_lm", "path": str(corpus), "level": "char"}
    assert vocabulary_from_recipe({"task": task}) == {"kind": "char", "itos": sorted(set("hello world\n")),
                                                      "join": ""}
    assert vocabulary_from_recipe({"task": {**task, "path": str(tmp_path / "gone.txt")}}) is None


def test_checkpoint_file_and_run_folder_load_the_same_model(tmp_path):
    model = tiny_model(tiny_config("lattice", 1, dynamics="sequence"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    path = training_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model)
    for source in (path, tmp_path / "run"):
        loaded, config = load_model_for_export(source)
        assert config == model.config and not loaded.training
        idx = torch.randint(0, 11, (2, 8))
        with torch.no_grad():
            assert torch.equal(loaded(idx).logits, model(idx).logits)
    contents = read_checkpoint(tmp_path / "run")
    assert contents.path == path and contents.step == 7 and contents.vocabulary["kind"] == "tokens"


# -------------------------------------------------------------------------------------------------
# Slow: every registered variant in both formats, the lattice modes, opsets, a real failure

LATTICE_MODES = [
    {"score": "multiplicative"},
    {"dynamics": "sequence"},
    {"dynamics": "sequence", "score": "multiplicative", "method": "rk4", "n_steps": 3},
    {"method": "euler", "n_steps": 4, "tie_frequencies": True},
    {"topology": "ring", "coupling_range": "neighbours", "periodic": True},
    {"n_steps": 0},
    {"implementation": "materialised"},
]


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "pt2"])
@pytest.mark.parametrize("attention", available_attentions())
def test_every_registered_attention_exports_and_verifies(tmp_path, attention, format):
    model = tiny_model(tiny_config(attention))
    path = (export_onnx if format == "onnx" else export_pt2)(model, tmp_path / f"m.{format}")
    results = verify_export(model, path, format, SHAPES, tolerance=1e-4)
    assert [r["shape"] for r in results] == [list(s) for s in SHAPES]
    assert all(r["ok"] for r in results), results
    if format == "onnx":
        assert not graph_ops(path) & {"Loop", "Scan", "If"}
    else:  # the pt2 program round-trips exactly
        assert all(r["max_abs_diff"] == 0.0 for r in results), results


@pytest.mark.slow
@pytest.mark.parametrize("options", LATTICE_MODES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_lattice_modes_export_to_onnx(tmp_path, options):
    model = tiny_model(tiny_config("lattice", **options))
    path = export_onnx(model, tmp_path / "m.onnx")
    results = verify_export(model, path, "onnx", SHAPES, tolerance=1e-4)
    assert all(r["ok"] for r in results), results
    assert not graph_ops(path) & {"Loop", "Scan", "If"}


@pytest.mark.slow
def test_sequence_mode_pt2_round_trip_with_shorter_max_length(tmp_path):
    model = tiny_model(tiny_config("lattice", dynamics="sequence"))
    checkpoint = training_checkpoint(tmp_path / "last.pt", model)
    result = invoke(checkpoint, "--format", "pt2", "-o", tmp_path / "m.pt2", "--seq-len", 5, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["seq_len"] == 5 and report["max_abs_diff"] == 0.0
    assert [v["shape"] for v in report["verification"]] == [[1, 1], [2, 5], [3, 5]]
    meta = read_metadata(tmp_path / "m.pt2")
    assert meta["lotsim.seq_len"] == "5" and meta["lotsim.attention"] == "lattice"
    program = torch.export.load(str(tmp_path / "m.pt2"))
    idx = torch.randint(0, 11, (4, 5))
    with torch.no_grad():
        assert torch.equal(program.module()(idx), model(idx).logits)
    with pytest.raises(Exception):  # noqa: B017 - the guard's error type is torch's business
        program.module()(torch.randint(0, 11, (1, 6)))  # beyond the exported maximum


@pytest.mark.slow
@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_opset_range_ends(tmp_path, opset):
    model = tiny_model(tiny_config("lattice", 1))
    report = export_checkpoint(training_checkpoint(tmp_path / "p.pt", model), tmp_path / "m.onnx", "onnx",
                               opset=opset, shapes=SHAPES)
    assert report["opset"] == opset and report["ok"], report


@pytest.mark.slow
def test_tolerance_zero_fails_verification_for_real(tmp_path):
    checkpoint = training_checkpoint(tmp_path / "p.pt", tiny_model(tiny_config("lattice", 1)))
    result = invoke(checkpoint, "-o", tmp_path / "m.onnx", "--tolerance", "0")
    assert result.exit_code == 1, result.output
    assert "verification failed" in result.stderr and (tmp_path / "m.onnx").is_file()
    assert "onnxruntime (CPU) vs PyTorch" in result.stdout


@pytest.mark.slow
def test_forced_external_data_still_loads(tmp_path):
    model = tiny_model(tiny_config("vanilla", 1))
    path = export_onnx(model, tmp_path / "m.onnx", external_data=True)
    assert all(r["ok"] for r in verify_export(model, path, "onnx", SHAPES))


@pytest.mark.slow
def test_trained_char_model_end_to_end(tmp_path):
    """lotsim train (a few steps on a tiny text) -> lotsim export RUN_DIR -> the example writes text."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    run = tmp_path / "run"
    train = runner.invoke(app, ["train", str(ROOT / "recipes" / "char_lm.toml"), "--set", f"task.path={corpus}",
                                "--set", "task.seq_len=16", "--set", "model.d_model=16", "--set", "model.n_layers=1",
                                "--set", "model.dropout=0.0", "--steps", "4", "--set", "train.batch_size=4",
                                "--set", "train.eval_every=4", "--set", "train.eval_batches=1",
                                "--set", "train.test_batches=1", "--set", "train.telemetry_every=0",
                                "--set", "train.warmup_steps=1", "--set", "train.threads=1",
                                "--set", "output.tensorboard=false", "--out", str(run), "--json"])
    assert train.exit_code == 0, train.output
    result = invoke(run, "-o", tmp_path / "char.onnx", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["seq_len"] == 16 and report["checkpoint"].endswith("best.pt")
    vocabulary = json.loads(read_metadata(tmp_path / "char.onnx")["lotsim.vocabulary"])
    assert vocabulary["kind"] == "char" and vocabulary["itos"] == sorted(set(corpus.read_text()))
    got = _run_example(tmp_path / "char.onnx", "--prompt", "the quick", "--max-new-tokens", "20", cwd=tmp_path)
    assert len(got["text"]) == 20 and set(got["text"]) <= set(vocabulary["itos"])


@pytest.mark.slow
def test_a_variant_torch_export_cannot_trace_fails_with_one_line_exit_1(tmp_path):
    from lotsim.model import register_attention, unregister_attention
    from lotsim.model.attention import QKVAttention

    @register_attention("data_dependent_test")
    class DataDependent(QKVAttention):
        def forward(self, x, rope, *, return_intermediates=False, interventions=None):
            q, k, v = self.project_qkv(x, rope)
            if q.mean() > 0:  # data-dependent Python control flow: torch.export cannot trace it
                q = -q
            return self.merge_heads(self.attend(q, k, v)), None

    try:
        checkpoint = training_checkpoint(tmp_path / "last.pt", tiny_model(tiny_config("data_dependent_test", 1)))
        result = invoke(checkpoint, "--format", "pt2", "-o", tmp_path / "m.pt2")
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: torch.export failed"), result.stderr
    finally:
        unregister_attention("data_dependent_test")
