"""Training: recipes, optimiser and schedule, causality through task + model, exact resume (stop and
Ctrl-C), checkpoints, regularisers, freezing, a user task and a text task trained end to end."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lotsim.config import RecipeError
from lotsim.tasks import IGNORE_INDEX, BaseTask, build_task, sample_split, split_rng
from lotsim.train import (
    TrainingInterrupted,
    TrainingRecipe,
    load_checkpoint,
    load_training_recipe,
    resolve_checkpoint,
    save_checkpoint,
    train,
)
from lotsim.train.loop import build_model, lr_factor, make_optimizer

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
# a tiny copy-reverse run: a few steps, every feature on (eval, checkpoints, telemetry)
TINY = ["task.length=4", "task.n_symbols=6", "model.d_model=16", "model.n_heads=4", "train.steps=8",
        "train.batch_size=4", "train.eval_every=4", "train.eval_batches=2", "train.test_batches=2",
        "train.warmup_steps=2", "train.telemetry_every=3", "train.telemetry_sequences=2", "train.log_every=1",
        "output.tensorboard=false"]


def tiny(*extra: str) -> TrainingRecipe:
    return load_training_recipe(None, [*TINY, *extra])


@pytest.fixture
def text_path(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "input.txt"
    path.write_text(" ".join(rng.choice(["kuramoto", "lattice", "phase", "wave"], size=800)) + "\n")
    return path


# -- recipes ---------------------------------------------------------------------------------------


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"copy_reverse_lattice", "copy_reverse_vanilla", "associative_recall", "char_lm"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(path, text_path):
    overrides = []
    if 'kind = "char_lm"' in path.read_text():
        overrides = [f'task.path="{text_path}"']  # the project never ships a corpus
    recipe = load_training_recipe(path, overrides)
    task = build_task(recipe.task)
    assert recipe.model.vocab_size >= task.vocab_size and recipe.model.seq_len >= task.seq_len
    assert recipe.name == path.stem


def test_default_recipe_is_the_copy_reverse_lattice_file():
    default, from_file = TrainingRecipe(), load_training_recipe(RECIPES[0].parent / "copy_reverse_lattice.toml")
    assert default.model.options() == from_file.model.options()
    strip = {"model": {"attention_options"}}
    assert default.model_dump(exclude=strip) == from_file.model_dump(exclude=strip)


def test_vanilla_recipe_is_parameter_matched_to_the_lattice_recipe():
    from lotsim.model import LOTModel, count_parameters

    folder = RECIPES[0].parent
    # built on the CPU: small, and the meta device's first use imports torch._refs (seconds)
    lattice = count_parameters(LOTModel(load_training_recipe(folder / "copy_reverse_lattice.toml").model))["total"]
    vanilla = count_parameters(LOTModel(load_training_recipe(folder / "copy_reverse_vanilla.toml").model))["total"]
    assert abs(vanilla - lattice) <= 0.02 * lattice


@pytest.mark.parametrize("override, names", [
    ("train.lerning_rate=1", ["train.lerning_rate", "unknown key", "lr"]),
    ("task.lenght=5", ["task", "lenght", "length"]),
    ("task.kind=\"sorting\"", ["task", "sorting", "copy_reverse", "custom"]),
    ("train.lr=-1", ["train.lr", "greater than 0"]),
    ("train.precision=\"fp8\"", ["train.precision", "bf16"]),
    ("model.attention=\"nope\"", ["model", "nope", "vanilla"]),
    ("model.attention_options.n_step=2", ["model", "n_step", "n_steps"]),
    ("model.vocab_size=3", ["model", "vocab_size=3", "11"]),
])
def test_recipe_errors_are_one_line_naming_the_key(override, names):
    with pytest.raises(RecipeError) as err:
        load_training_recipe(None, [override])
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_paths_in_a_recipe_file_are_relative_to_its_folder(tmp_path, text_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "lm.toml").write_text(f'[task]\nkind = "char_lm"\npath = "../{text_path.name}"\nseq_len = 8\n')
    recipe = load_training_recipe(folder / "lm.toml")
    assert Path(recipe.task.path).resolve() == text_path.resolve()
    with pytest.raises(RecipeError, match="does not exist"):
        load_training_recipe(folder / "lm.toml", [f'task.path="{text_path.name}"'])  # --set: the working dir


def test_overrides_and_derived_model_shape():
    recipe = load_training_recipe(None, ["task.length=6", "train.lr=1e-3", "model.attention=\"vanilla\""])
    assert recipe.train.lr == 1e-3 and recipe.model.attention == "vanilla"
    assert (recipe.model.vocab_size, recipe.model.seq_len) == (11, 12)  # derived from the task
    custom = load_training_recipe(None, [f'task.target="{__name__}:MirrorTask"', "task.half=3"])
    assert custom.task.kind == "custom" and custom.model.seq_len == 4 and custom.model.vocab_size == 5


# -- optimiser and schedule -------------------------------------------------------------------------


def test_weight_decay_on_matrices_only():
    model = build_model(tiny().model, seed=0)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    assert decayed_names and all(model.get_parameter(n).ndim == 2 for n in decayed_names)
    assert "tok_emb.weight" not in decayed_names
    for n, p in model.named_parameters():
        if p.ndim == 1:  # norms and the oscillators' per-head scalars
            assert n not in decayed_names
    assert "blocks.0.attn.qkv.weight" in decayed_names and "blocks.0.attn.omega" not in decayed_names


def test_warmup_then_cosine_to_the_floor():
    f = [lr_factor(s, 100, 10, 0.1, "cosine") for s in range(100)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(50, 100, 10, 0.1, "constant") == 1.0


# -- causality through the whole task + model pipeline ----------------------------------------------


@pytest.mark.parametrize("attention", ["vanilla", "lattice"])
def test_future_tokens_never_change_earlier_logits(attention):
    recipe = tiny(f'model.attention="{attention}"')
    task, model = build_task(recipe.task), build_model(recipe.model, seed=0).eval()
    idx, targets = task.batch("validation", 6, 0)
    logits = model(idx).logits
    for cut in (1, task.seq_len // 2, task.seq_len - 1):
        changed = idx.clone()
        changed[:, cut:] = torch.randint(0, task.vocab_size, changed[:, cut:].shape)
        assert not torch.equal(changed, idx)
        assert torch.allclose(model(changed).logits[:, :cut], logits[:, :cut], atol=1e-5, rtol=0)
    # and every scored target sits one position ahead of the input that predicts it
    scored = targets != IGNORE_INDEX
    assert torch.equal(targets[:, :-1][scored[:, :-1]], idx[:, 1:][scored[:, :-1]])


# -- resume -----------------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "tokens_per_s")}
            for line in path.read_text().splitlines()]


def test_resume_after_stop_equals_an_uninterrupted_run(tmp_path):
    extra = ["model.dropout=0.1", "train.grad_accum=2"]  # dropout: the RNG state must be restored too
    full = train(tiny(*extra), tmp_path / "full")
    first = train(tiny(*extra, "train.stop_at=5"), tmp_path / "split")
    assert not first.finished and first.step == 5 and first.test is None
    rest = train(None, tmp_path / "split", resume=True)
    assert rest.finished and sorted(rest.train_losses) == [6, 7, 8]
    assert {**first.train_losses, **rest.train_losses} == full.train_losses  # exactly, every step
    for (name, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _lines(tmp_path / "full" / "metrics.jsonl") == _lines(tmp_path / "split" / "metrics.jsonl")
    assert {**rest.test, "checkpoint": ""} == {**full.test, "checkpoint": ""}
    from lotsim.io import open_trajectory

    full_h5, split_h5 = tmp_path / "full" / "telemetry.h5", tmp_path / "split" / "telemetry.h5"
    with open_trajectory(full_h5) as a, open_trajectory(split_h5) as b:
        assert list(a.group("layer_00").steps) == list(b.group("layer_00").steps) == [0, 3, 6, 8]
        assert np.array_equal(a.group("layer_00").phase[()], b.group("layer_00").phase[()])


def test_ctrl_c_saves_last_and_resumes_exactly(tmp_path):
    full = train(tiny(), tmp_path / "full")

    def interrupt(event):
        if event["event"] == "step" and event["step"] == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as err:
        train(tiny(), tmp_path / "run", callback=interrupt)
    assert err.value.step == 3 and load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    rest = train(None, tmp_path / "run", resume=True)
    assert rest.train_losses == {k: v for k, v in full.train_losses.items() if k > 3}


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_contents_and_atomic_write(tmp_path):
    result = train(tiny(), tmp_path / "run")
    state = load_checkpoint(resolve_checkpoint(tmp_path / "run", prefer="last.pt"))
    for key in ("model", "optimizer", "scheduler", "step", "data_index", "rng", "recipe", "best", "git_commit"):
        assert key in state, key
    assert state["step"] == 8 and state["data_index"] == 8
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["recipe"] == (tmp_path / "run" / "recipe.resolved.toml").read_text()
    assert resolve_checkpoint(tmp_path / "run").name == "best.pt"
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert result.best["step"] in (4, 8)
    save_checkpoint(tmp_path / "x.pt", {"step": 1})
    assert load_checkpoint(tmp_path / "x.pt")["step"] == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a lotsim training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# -- regularisers and freezing ----------------------------------------------------------------------


def test_regularisers_are_weighted_and_unknown_names_refused(tmp_path):
    result = train(tiny("train.regularization.sync=0.5", "train.regularization.diversity=0.1", "train.steps=3"),
                   tmp_path / "reg", evaluate_test=False)
    lines = [json.loads(line) for line in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["split"] == "train"]
    assert all("reg_sync" in r and "reg_diversity" in r for r in train_lines) and result.step == 3
    with pytest.raises(ValueError, match="synk"):
        train(tiny("train.regularization.synk=0.5"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_frozen_parameters_stay_at_init(tmp_path):
    recipe = tiny("train.freeze=[\"blocks.*.attn.omega\", \"blocks.0.attn.gain\"]", "train.steps=3")
    result = train(recipe, tmp_path / "frozen", evaluate_test=False)
    init = build_model(recipe.model, recipe.seed)
    trained = result.model
    assert torch.equal(trained.blocks[0].attn.omega, init.blocks[0].attn.omega)
    assert torch.equal(trained.blocks[1].attn.omega, init.blocks[1].attn.omega)
    assert torch.equal(trained.blocks[0].attn.gain, init.blocks[0].attn.gain)
    assert not torch.equal(trained.blocks[1].attn.gain, init.blocks[1].attn.gain)
    with pytest.raises(ValueError, match="matches no parameter"):
        build_model(recipe.model, 0, ["blocks.*.attn.nothing"])


# -- other tasks end to end -------------------------------------------------------------------------


class MirrorTask(BaseTask):
    """A user task defined outside lotsim: mirror the first half (odd palindromes)."""

    name = "mirror"

    def __init__(self, half: int = 4, symbols: int = 5, seed: int = 0):
        self.half, self.symbols, self.seed = half, symbols, seed
        self.vocab_size, self.seq_len = symbols, 2 * half - 2

    def batch(self, split, batch_size, index):
        x = sample_split(lambda r, m: r.integers(0, self.symbols, (m, self.half)), split, batch_size,
                         split_rng(self.seed, split, index))
        seq = torch.as_tensor(np.concatenate([x, x[:, -2::-1]], 1))
        targets = seq[:, 1:].clone()
        targets[:, : self.half - 1] = IGNORE_INDEX
        return seq[:, :-1], targets


def test_a_user_task_trains_from_a_recipe_without_code_changes(tmp_path):
    recipe = load_training_recipe(None, [*TINY[2:], f'task.target="{__name__}:MirrorTask"', "task.half=5"])
    result = train(recipe, tmp_path / "user")
    assert result.test is not None and {"loss", "token_accuracy", "exact_match"} <= set(result.test)
    assert json.loads((tmp_path / "user" / "metrics.json").read_text())["task"] == "custom"


def test_char_lm_reports_bpc_on_the_test_split(tmp_path, text_path):
    recipe = load_training_recipe(None, [*TINY[2:], 'task.kind="char_lm"', f'task.path="{text_path}"',
                                         "task.seq_len=16", "train.best_metric=\"bpc\""])
    result = train(recipe, tmp_path / "lm")
    test = result.test
    assert test["bpc"] == pytest.approx(test["loss"] / math.log(2))
    assert 0 < test["bpc"] < math.log2(recipe.model.vocab_size) + 1
    assert test["split"] == "test" and "exact_match" not in test
