"""Generation: ``LOTModel.generate`` (KV cache for vanilla, window recomputation otherwise) and
``lotsim generate`` on a checkpoint or run folder."""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch
from typer.testing import CliRunner

from lotsim.api import load_model
from lotsim.cli import app
from lotsim.model import LOTModel, ModelConfig
from lotsim.train.checkpoint import save_checkpoint

runner = CliRunner()
COPY_REVERSE = {"kind": "copy_reverse", "length": 4, "n_symbols": 10, "seed": 0}  # vocab 11, seq_len 8


def tiny(attention: str = "vanilla", seed: int = 0, **options) -> LOTModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=11, seq_len=8, d_model=16, n_layers=2, n_heads=4, attention=attention,
                         attention_options=options, init_std=0.3)  # a peaked, prompt-dependent distribution
    return LOTModel(config).eval()


def checkpoint(path, model: LOTModel, task: dict | None = None, **extra):
    recipe = {"name": "tiny", "seed": 0, "task": task or COPY_REVERSE,
              "model": model.config.model_dump(mode="json", exclude_none=True)}
    return save_checkpoint(path, {"model": model.state_dict(), "recipe": tomli_w.dumps(recipe), "step": 3, **extra})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_and_recomputed_generation_agree(seed):
    model = tiny(seed=seed)
    prompt = torch.randint(0, 11, (3, 3), generator=torch.Generator().manual_seed(seed))
    # 12 new tokens: the first 5 fill the 8-token context through the cache, then the window slides
    greedy = [model.generate(prompt, 12, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy) and greedy[0].shape == (3, 15)
    sampled = [model.generate(prompt, 12, temperature=1.3, top_k=6, seed=seed, use_cache=c) for c in (True, False)]
    assert torch.equal(*sampled)
    assert not torch.equal(sampled[0], model.generate(prompt, 12, temperature=1.3, top_k=6, seed=seed + 10))
    assert torch.equal(prompt, greedy[0][:, :3])


def test_the_cache_is_used_and_matches_the_forward_logits(monkeypatch):
    model = tiny()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(5))
    cache: list = []
    with torch.no_grad():
        full = model(idx).logits  # (b, t, v)
        steps = [model._decode_cached(idx[:, :3], cache, 0)]
        steps += [model._decode_cached(idx[:, t - 1:t], cache, t - 1) for t in range(4, 9)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 2:], rtol=1e-5, atol=1e-5)
    assert cache[0][0].shape == (2, 4, 8, 4)  # (b, h, t, d): every position cached

    def no_forward(*args, **kwargs):
        raise AssertionError("the KV-cache path must not call forward within seq_len")

    monkeypatch.setattr(model, "forward", no_forward)
    model.generate(idx[:, :2], 6, temperature=0)  # 2 + 6 = 8 = seq_len: all cached


def test_oscillator_variants_recompute_the_window(monkeypatch):
    model = tiny("lattice", gain_init=0.5)
    prompt = torch.tensor([[1, 2, 3]])
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda idx, *a, **k: calls.append(idx.shape[1]) or forward(idx, *a, **k))
    out = model.generate(prompt, 7, temperature=0)
    assert calls == [3, 4, 5, 6, 7, 8, 8]  # the whole window every token, at most seq_len
    assert out.shape == (1, 10)


def test_generate_checks_its_arguments():
    model = tiny()
    idx = torch.tensor([[1, 2]])
    for kwargs, needle in [({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                           ({"top_k": 0}, "top_k")]:
        with pytest.raises(ValueError, match=needle):
            model.generate(idx, 2, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(idx, -1)
    with pytest.raises(ValueError, match="int64"):
        model.generate(idx.float(), 2)
    assert model.training is False and torch.equal(model.generate(idx, 0), idx)


def test_lotsim_generate_on_a_run_folder(tmp_path):
    model = tiny()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model)
    args = ["generate", str(tmp_path / "run"), "--prompt", "012|", "--max-new-tokens", "4", "--temperature", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ids = model.generate(torch.tensor([[0, 1, 2, 10]]), 4, temperature=0)[0, 4:].tolist()
    expected = "".join("0123456789|"[i] for i in ids)
    assert result.stdout == f"012|{expected}\n"
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert report["completion"] == expected and report["step"] == 3
    sampled = [runner.invoke(app, [*args[:-2], "--temperature", "1", "--seed", "4", "--top-k", "3"]).stdout
               for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize(("args", "needle"), [
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "0"], "--top-k"),
    (["--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--prompt", "01x"], "'x'"),
])
def test_lotsim_generate_user_errors_are_one_line(tmp_path, args, needle):
    path = checkpoint(tmp_path / "c.pt", tiny())
    base = ["generate", str(path), "--prompt", "01"]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


def test_the_stored_vocabulary_wins_and_char_lm_prompts_are_text(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("abcdefghij ")  # 11 characters: the model's vocabulary size
    task = {"kind": "char_lm", "path": str(corpus), "level": "char", "seq_len": 8}
    trained = load_model(checkpoint(tmp_path / "a.pt", tiny(), task))
    assert trained.vocabulary["itos"] == sorted("abcdefghij ")
    assert trained.decode(trained.encode("hi jab")) == "hi jab"
    stored = {"kind": "char", "itos": list("ABCDEFGHIJK"), "join": ""}
    corpus.unlink()  # the stored vocabulary needs no corpus
    with pytest.raises(ValueError, match="corpus .*tiny.txt.* is not here"):
        load_model(checkpoint(tmp_path / "gone.pt", tiny(), task)).encode("abc")
    trained = load_model(checkpoint(tmp_path / "b.pt", tiny(), task, vocabulary=stored))
    assert trained.encode("KA") == [10, 0]
    text = trained.generate("ABC", 5, temperature=0)
    assert len(text) == 5 and set(text) <= set("ABCDEFGHIJK")


def test_a_checkpoint_without_vocabulary_takes_token_ids(tmp_path):
    trained = load_model(checkpoint(tmp_path / "c.pt", tiny(), {"kind": "custom", "target": "x:Y"}))
    assert trained.vocabulary is None and trained.encode("1, 2 3") == [1, 2, 3]
    assert trained.decode([4, 5]) == "4 5"
    with pytest.raises(ValueError, match="token ids"):
        trained.encode("abc")
    with pytest.raises(ValueError, match="out of range"):
        trained.encode("11")
