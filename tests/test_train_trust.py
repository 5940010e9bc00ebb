"""Trust in what training, evaluation and export read and write: a file from someone else never runs
code, nothing a user or an earlier command made is overwritten without --overwrite, every state a
stop can leave has a way forward, divergence stops at the first bad step, and user mistakes are one
line with exit code 2."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import sys
import tomllib

import numpy as np
import pytest
import tomli_w
import torch
from typer.testing import CliRunner

from lotsim.cli import app
from lotsim.interrupts import handle_signals
from lotsim.train import load_checkpoint, load_training_recipe, read_checkpoint, save_checkpoint, train
from lotsim.train.checkpoint import FORMAT

runner = CliRunner()
TINY = ["task.length=4", "task.n_symbols=6", "model.d_model=16", "model.n_heads=4", "train.steps=4",
        "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.test_batches=1",
        "train.warmup_steps=1", "train.telemetry_every=0", "train.log_every=1", "output.tensorboard=false"]
TINY_FLAGS = [arg for item in TINY for arg in ("--set", item)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trust") / "run"
    train(load_training_recipe(None, TINY), run_dir)
    return run_dir


class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted checkpoint does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious_checkpoint(path, marker, recipe: str = "") -> None:
    torch.save({"format": FORMAT, "version": 1, "model": {}, "recipe": recipe, "step": 1,
                "payload": _Payload(f"touch {marker}")}, path)


# -- security: a file from someone else never runs code ---------------------------------------------


def test_crafted_checkpoint_runs_no_code_in_eval_export_resume(tmp_path, finished_run):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    recipe = (finished_run / "recipe.resolved.toml").read_text()
    _malicious_checkpoint(run / "checkpoints" / "last.pt", marker, recipe)
    _malicious_checkpoint(run / "checkpoints" / "best.pt", marker, recipe)
    for args in (["eval", run], ["export", run, "-o", tmp_path / "m.onnx"], ["train", "--resume", run]):
        result = invoke(*args)
        assert_one_line(result, 2, "--allow-code", "full unpickling")
        assert not marker.exists(), args
    with pytest.raises(ValueError, match="--allow-code"):  # what compare's reuse of a run calls
        train(None, run, resume=True)
    assert not marker.exists()


def test_recipe_in_a_checkpoint_never_imports_code_without_allow_code(tmp_path, finished_run):
    marker = tmp_path / "pwned"
    state = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    recipe = tomllib.loads(state["recipe"])
    recipe["task"] = {"kind": "custom", "target": "os:system", "command": f"touch {marker}"}
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt"):
        save_checkpoint(run / "checkpoints" / name, {**state, "recipe": tomli_w.dumps(recipe)})
    for args in (["eval", run], ["train", "--resume", run]):
        assert_one_line(invoke(*args), 2, "'os:system'", "--allow-code")
        assert not marker.exists(), args


def test_version_1_checkpoint_is_refused_then_migrated_with_allow_code(tmp_path, finished_run):
    state = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    old_rng = {**state["rng"][0], "numpy": np.random.get_state()}  # what lotsim < 0.2 stored
    path = tmp_path / "old.pt"
    torch.save({**state, "version": 1, "rng": [old_rng]}, path)
    with pytest.raises(ValueError, match="--allow-code"):
        load_checkpoint(path)
    migrated = load_checkpoint(path, allow_code=True)
    assert migrated["version"] == 2 and isinstance(migrated["rng"][0]["numpy"][1], torch.Tensor)
    torch.save(migrated, tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt")["step"] == state["step"]  # plain values: the safe loader reads it


# (reading as trained, options stored): written before score and readout existed; before readout
# existed; with today's defaults (which store neither key either)
OPTION_HISTORY = [({"score": "shared", "readout": "phase"}, {}), ({"score": "qk", "readout": "phase"}, {"score": "qk"}),
                  ({"score": "qk", "readout": "mean"}, {})]


@pytest.mark.parametrize("attention", ["torus", "fsn"])
@pytest.mark.parametrize(("trained", "stored"), OPTION_HISTORY)
def test_checkpoint_from_before_an_option_existed_loads_with_its_reading(tmp_path, caplog, attention, trained,
                                                                         stored):
    """A torus/fsn checkpoint whose stored config lacks ``score``/``readout`` loads with the reading its
    weights were trained with (old: shared + phase, said in one logged line), gives the outputs it
    gave before saving, and every reader (eval, export, resume) sees the migrated recipe; one trained
    with today's defaults loads unchanged and silently."""
    import logging

    from lotsim.config import recipe_to_dict
    from lotsim.model import LOTModel
    from lotsim.train import model_from_checkpoint
    from lotsim.train.recipe import recipe_from_toml

    recipe = load_training_recipe(None, TINY, updates={"model": {"attention": attention, "attention_options": trained}})
    torch.manual_seed(0)
    model = LOTModel(recipe.model).eval()
    idx = torch.randint(0, recipe.model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    expected = model(idx).logits
    table = recipe_to_dict(recipe)
    table["model"]["attention_options"] = stored  # what the stored config of such a checkpoint holds
    path = save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "recipe": tomli_w.dumps(table),
                                                  "step": 4})
    with caplog.at_level(logging.WARNING, logger="lotsim.train.checkpoint"):
        contents = read_checkpoint(path)
    notes = [r.getMessage() for r in caplog.records if r.name == "lotsim.train.checkpoint"]
    options = contents.config.options()
    assert (options.score, options.readout) == (trained["score"], trained["readout"])
    torch.testing.assert_close(model_from_checkpoint(contents)(idx).logits, expected, rtol=0, atol=0)
    resumed = recipe_from_toml(load_checkpoint(path)["recipe"]).model.options()  # eval and resume read this
    assert (resumed.score, resumed.readout) == (trained["score"], trained["readout"])
    if trained == OPTION_HISTORY[-1][0]:
        assert not notes and contents.config.attention_options == {}
    else:
        assert len(notes) == 1 and "\n" not in notes[0] and attention in notes[0]
        assert f"readout='{trained['readout']}'" in notes[0]
        assert ("score=" in notes[0]) == ("score" not in stored)


def test_checkpoint_holds_plain_values_only(finished_run):
    with open(finished_run / "checkpoints" / "last.pt", "rb") as handle:
        torch.load(handle, weights_only=True)  # raises on any non-plain object
    state = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    before = (random.getstate(), np.random.get_state()[1].copy())
    from lotsim.train.checkpoint import set_rng_state

    set_rng_state(state["rng"][0])
    assert state["vocabulary"] == {"kind": "tokens", "itos": [*"012345", "|"], "join": ""}
    random.setstate(before[0])


def test_export_never_reads_a_file_the_checkpoint_names(tmp_path, finished_run):
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is hunter2\n")
    state = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    recipe = tomllib.loads(state["recipe"])
    recipe["task"] = {"kind": "char_lm", "path": str(secret), "level": "char", "seq_len": 8}
    path = save_checkpoint(tmp_path / "c.pt", {**state, "vocabulary": None, "recipe": tomli_w.dumps(recipe)})
    assert read_checkpoint(path).vocabulary is None
    stored = {"kind": "char", "itos": list("abc"), "join": ""}
    save_checkpoint(path, {**state, "vocabulary": stored, "recipe": tomli_w.dumps(recipe)})
    assert read_checkpoint(path).vocabulary == stored


# -- run names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["name=../escape", "name=a/b", "output.run=../../x", "name=.."])
def test_run_names_are_one_path_component(tmp_path, setting):
    result = invoke("train", *TINY_FLAGS, "--set", setting, "--set", f"output.dir={tmp_path / 'out'}")
    assert_one_line(result, 2, "single folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_simulate_run_name_is_one_path_component(tmp_path):
    result = invoke("simulate", "--set", "name=../escape", "--set", "lattice.n=8", "--set", "dynamics.steps=2",
                    "--set", f"output.dir={tmp_path / 'out'}")
    assert_one_line(result, 2, "single folder name")
    assert not (tmp_path / "escape").exists()


# -- nothing a user made is lost -------------------------------------------------------------------


def test_train_out_existing_folder_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    (out / "recipe.resolved.toml").write_text("# mine\n")
    assert_one_line(invoke("train", *TINY_FLAGS, "--out", out), 2, "--overwrite", "metrics.jsonl")
    assert (out / "metrics.jsonl").read_text() == "precious\n"
    assert (out / "recipe.resolved.toml").read_text() == "# mine\n"
    result = invoke("train", *TINY_FLAGS, "--out", out, "--overwrite", "--json")
    assert result.exit_code == 0, result.output
    assert "precious" not in (out / "metrics.jsonl").read_text()


def test_eval_never_touches_training_metrics_and_names_interventions(tmp_path, finished_run):
    report = (finished_run / "metrics.json").read_bytes()
    result = invoke("eval", finished_run)
    assert result.exit_code == 0, result.output
    assert (finished_run / "eval-test.json").is_file()
    forced = invoke("eval", finished_run, "--intervene", "gain=0")
    assert forced.exit_code == 0, forced.output
    assert "gain=0" in forced.stdout
    assert json.loads((finished_run / "eval-test-intervened.json").read_text())["interventions"] == ["gain=0"]
    assert_one_line(invoke("eval", finished_run), 2, "eval-test.json", "--overwrite")
    assert invoke("eval", finished_run, "--overwrite").exit_code == 0
    assert (finished_run / "metrics.json").read_bytes() == report


def test_export_does_not_replace_an_existing_file(tmp_path, finished_run):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"mine")
    assert_one_line(invoke("export", finished_run, "-o", target, "--no-verify"), 2, "--overwrite")
    assert target.read_bytes() == b"mine"


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    result = invoke("train", "--resume", finished_run)
    assert result.exit_code == 0, result.output
    assert "already finished" in result.stderr and "tokens/s" not in result.stdout
    after = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file() and p in before}
    assert after == before


# -- every state a stop can leave has a way forward -------------------------------------------------


def test_stopped_after_the_last_step_resumes_into_validation_and_test(tmp_path, finished_run):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt", "recipe.resolved.toml", "metrics.jsonl"):
        source = finished_run / ("checkpoints" if name.endswith(".pt") else "") / name
        (run / ("checkpoints" if name.endswith(".pt") else "") / name).write_bytes(source.read_bytes())
    result = invoke("train", "--resume", run, "--json")  # no metrics.json: killed before the final report
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["validation"]["loss"] > 0 and summary["tokens_per_s"] > 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["validation"] and report["tokens_per_s"] > 0


def test_killed_before_the_first_checkpoint_names_the_way_forward(tmp_path, finished_run):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # what SIGKILL before the first checkpoint leaves
    (run / "recipe.resolved.toml").write_text((finished_run / "recipe.resolved.toml").read_text())
    (run / "metrics.jsonl").write_text("")
    line = assert_one_line(invoke("train", "--resume", run), 2, "before its first checkpoint", "--overwrite")
    assert str(run / "recipe.resolved.toml") in line
    assert_one_line(invoke("train", *TINY_FLAGS, "--out", run), 2, "--overwrite")
    again = invoke("train", run / "recipe.resolved.toml", "--out", run, "--overwrite", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["finished"]


def test_divergence_stops_at_the_first_bad_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", *TINY_FLAGS, "--set", "train.lr=1e30", "--set", "train.grad_clip=0",
                    "--set", "train.warmup_steps=0", "--set", "train.checkpoint_every=1", "--set",
                    "train.steps=20", "--out", out)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lower train.lr" in errors[0], result.stderr  # after the run's start line
    line = errors[0]
    bad = int(line.split("diverged at step ")[1].split(":")[0])
    assert not (out / "metrics.json").exists()
    good = load_checkpoint(out / "checkpoints" / "last.pt")
    assert good["step"] == bad - 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert_one_line(invoke("train", *TINY_FLAGS, "--set", "train.lr=inf", "--out", tmp_path / "x"), 2, "train.lr")


# -- bad values: one line, exit 2 ------------------------------------------------------------------


def test_eval_user_errors_are_one_line(tmp_path, finished_run):
    assert_one_line(invoke("eval", finished_run, "--batch-size", "0"), 2, "--batch-size 0")
    assert_one_line(invoke("eval", finished_run, "--device", "nonsense"), 2, "'nonsense'")
    assert_one_line(invoke("train", *TINY_FLAGS, "--device", "nonsense"), 2, "'nonsense'")
    state = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    no_recipe = save_checkpoint(tmp_path / "no_recipe.pt", {k: v for k, v in state.items() if k != "recipe"})
    assert_one_line(invoke("eval", no_recipe), 2, "no readable recipe")
    other = tomllib.loads(state["recipe"])
    other["model"]["d_model"] = 32  # another model configuration
    mismatch = save_checkpoint(tmp_path / "mismatch.pt", {**state, "recipe": tomli_w.dumps(other)})
    assert_one_line(invoke("eval", mismatch), 2, "weights do not match")
    vocab = save_checkpoint(tmp_path / "vocab.pt", {**state, "vocabulary": {"kind": "tokens", "itos": ["a", "b"],
                                                                            "join": ""}})
    assert_one_line(invoke("eval", vocab), 2, "another vocabulary")


def test_empty_text_corpus_is_one_line(tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("")
    result = invoke("train", "--set", "task.kind=char_lm", "--set", f"task.path={corpus}", "--out", tmp_path / "r")
    assert_one_line(result, 2, "is empty")


# -- a char-LM run folder stands alone -------------------------------------------------------------


def test_char_lm_run_folder_works_from_any_directory(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    (work / "corpus.txt").write_text(" ".join(rng.choice(["kura", "moto", "phase"], size=400)) + "\n")
    monkeypatch.chdir(work)
    flags = ["--set", "task.kind=char_lm", "--set", "task.path=corpus.txt", "--set", "task.seq_len=8",
             *TINY_FLAGS[TINY_FLAGS.index("model.d_model=16") - 1:]]
    result = invoke("train", *flags, "--out", work / "run", "--json")
    assert result.exit_code == 0, result.output
    stored = tomllib.loads((work / "run" / "recipe.resolved.toml").read_text())["task"]["path"]
    assert stored == str(work / "corpus.txt")
    vocabulary = load_checkpoint(work / "run" / "checkpoints" / "best.pt")["vocabulary"]
    assert vocabulary["kind"] == "char" and vocabulary["itos"] == sorted(set("kura moto phase\n"))
    monkeypatch.chdir(elsewhere)
    evaluated = invoke("eval", work / "run", "--json", "--set", "train.test_batches=1")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["batches"] == 1


# -- schedule, logging, help -----------------------------------------------------------------------


def test_warmup_longer_than_the_budget_is_kept_and_said(tmp_path):
    cfg = load_training_recipe(None, ["train.steps=100", "train.warmup_steps=100"]).train
    assert "never ends" in cfg.warmup_note and "train.warmup_steps=10" in cfg.warmup_note
    assert load_training_recipe(None, ["train.steps=100", "train.warmup_steps=50"]).train.warmup_note is None
    result = invoke("train", *TINY_FLAGS, "--set", "train.warmup_steps=100", "--out", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.output
    assert "warmup_steps=100" in result.stderr and "kept as given" in result.stderr
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train"]
    assert lrs == sorted(lrs) and lrs[-1] < 3e-3 * 5 / 100  # still warming up: the schedule is as given


def test_missing_tensorboard_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = invoke("train", *TINY_FLAGS, "--set", "output.tensorboard=true", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("TensorBoard logging skipped") == 1 and "lotsim[tensorboard]" in result.stderr


def test_help_texts():
    assert "[batch, seq]" in invoke("export", "--help").stdout
    assert "12 digits" in " ".join(invoke("train", "--help").stdout.split())


def test_signal_helper_restores_the_previous_handler():
    seen = []
    previous = signal.getsignal(signal.SIGTERM)
    with handle_signals(lambda signum, frame: seen.append(signum)):
        signal.raise_signal(signal.SIGTERM)
    assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) == previous
    assert pickle.loads(pickle.dumps(seen)) == seen
