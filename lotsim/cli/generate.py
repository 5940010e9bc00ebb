"""``lotsim generate``: continue a prompt with a trained model (a checkpoint or a run folder)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from lotsim.cli._common import fail, print_json, stderr, user_errors


def generate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file or run folder (best.pt, else last.pt).",
                                               show_default=False)],
    prompt: Annotated[str, typer.Option(help="Text to continue, in the model's vocabulary (token ids separated "
                                        "by spaces when the checkpoint has no vocabulary).")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens (default: all).",
                                              show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:<i>.")] = "cpu",
    json_: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Generate text from a trained model: the prompt, then --max-new-tokens sampled tokens.

    Vanilla models keep a KV cache; oscillator variants recompute the last seq_len tokens for every
    new token. The same --seed gives the same text.
    """
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens {max_new_tokens} must be >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise fail(f"--temperature {temperature} must be a finite number >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise fail(f"--top-k {top_k} must be >= 1")
    from lotsim.api import load_model

    with user_errors():
        trained = load_model(checkpoint)
        if device != "cpu":
            import torch

            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"--device {device!r} is not available (no CUDA GPU); use --device cpu")
            trained.model.to(device)
        completion = trained.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    if json_:
        print_json({"checkpoint": str(trained.path), "step": trained.step, "prompt": prompt,
                    "completion": completion, "max_new_tokens": max_new_tokens, "temperature": temperature,
                    "top_k": top_k, "seed": seed})
        return
    typer.echo(prompt + completion)
    stderr.print(f"checkpoint: [bold]{trained.path}[/bold]", highlight=False)
