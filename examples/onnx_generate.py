"""Generate or score text with a model exported by ``lotsim export --format onnx``.

Standalone: needs only ``onnxruntime`` and ``numpy`` (no lotsim, no torch), so it runs wherever the
.onnx file is shipped::

    pip install onnxruntime numpy
    python onnx_generate.py model.onnx --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8
    python onnx_generate.py model.onnx --prompt "31415926|" --max-new-tokens 8 --temperature 0  # greedy
    python onnx_generate.py model.onnx --score "To be, or not to be"                         # bits/token

The graph takes ``idx`` int64 [batch, seq] and returns ``logits`` float32 [batch, seq, vocab]; ``seq``
is dynamic up to the exported maximum, ``lotsim.seq_len``. Longer inputs are not supported (depending
on the attention, onnxruntime fails with an opaque error or the model silently runs past the length
it was trained for), so :func:`logits_of` refuses them with a clear message; generation keeps the
last ``seq_len`` tokens as context and scoring works in windows of ``seq_len``. Everything else
comes from the model's metadata (``lotsim.*`` metadata_props: vocab_size, seq_len, vocabulary,
model config), or, for files whose metadata was stripped, from the sidecar ``model.onnx.json``
that ``lotsim export`` writes next to it.

Vocabularies (``lotsim.vocabulary``): ``char`` (a list of characters; text is split into characters),
``byte`` (UTF-8 bytes are the ids), ``tokens`` (named tokens, e.g. copy-reverse's digits and ``|``,
joined by ``join``: "" means one character per token, " " means whitespace-separated), or none: the
prompt is then a whitespace-separated list of token ids and ids are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    """The onnxruntime session and the model's lotsim metadata (keys without the ``lotsim.`` prefix)."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    meta = {key.removeprefix("lotsim."): value for key, value in raw.items() if key.startswith("lotsim.")}
    sidecar = Path(path + ".json")
    if "vocab_size" not in meta and sidecar.is_file():  # metadata stripped: fall back to the sidecar
        side = json.loads(sidecar.read_text())
        meta = {"vocab_size": side["vocab_size"], "seq_len": side["seq_len"],
                "vocabulary": json.dumps(side.get("vocabulary")), "input": side["input"]["name"],
                "output": side["output"]["name"]}
    if "vocab_size" not in meta:
        sys.exit(f"{path}: no lotsim metadata and no sidecar {sidecar.name}; export it with `lotsim export`")
    meta["vocab_size"], meta["seq_len"] = int(meta["vocab_size"]), int(meta["seq_len"])
    meta["vocabulary"] = json.loads(meta.get("vocabulary") or "null")
    return session, meta


class Codec:
    """Text <-> token ids for a ``lotsim.vocabulary`` entry (or raw ids when there is none)."""

    def __init__(self, vocabulary: dict | None):
        self.kind = vocabulary["kind"] if vocabulary else "ids"
        self.itos = (vocabulary or {}).get("itos")
        self.join = (vocabulary or {}).get("join", "") if vocabulary else " "
        self.stoi = {s: i for i, s in enumerate(self.itos or [])}

    def encode(self, text: str) -> list[int]:
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        if self.kind == "ids":
            if not all(tok.isdigit() for tok in text.split()):
                sys.exit(f"{text!r}: the model's metadata holds no vocabulary, so text is given as "
                         f"whitespace-separated token ids, e.g. \"3 1 4\"")
            return [int(tok) for tok in text.split()]
        pieces = list(text) if self.kind == "char" or self.join == "" else text.split()
        unknown = sorted({p for p in pieces if p not in self.stoi})
        if unknown:
            sys.exit(f"not in the model's vocabulary: {unknown!r}")
        return [self.stoi[p] for p in pieces]

    def decode(self, ids: list[int]) -> str:
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        if self.kind == "ids":
            return " ".join(map(str, ids))
        return self.join.join(self.itos[i] for i in ids)


class TooLong(ValueError):
    """An input longer than the exported maximum length (``lotsim.seq_len``)."""


def logits_of(session: ort.InferenceSession, meta: dict, ids: list[int]) -> np.ndarray:
    """Logits (t, vocab) of one sequence of at most seq_len ids.

    Raises:
        TooLong: more ids than the model's maximum length.
    """
    if len(ids) > meta["seq_len"]:
        raise TooLong(f"{len(ids)} tokens exceed the model's maximum length of {meta['seq_len']} "
                      f"(lotsim.seq_len in its metadata); crop the input to the last {meta['seq_len']} tokens")
    idx = np.asarray([ids], dtype=np.int64)  # (1, t)
    return session.run([meta.get("output", "logits")], {meta.get("input", "idx"): idx})[0][0]


def generate(session, meta, ids: list[int], steps: int, temperature: float, top_k: int | None,
             rng: np.random.Generator) -> list[int]:
    """Append ``steps`` tokens: greedy at temperature 0, else softmax(logits / T) sampling (top-k)."""
    ids = list(ids)
    for _ in range(steps):
        last = logits_of(session, meta, ids[-meta["seq_len"]:])[-1].astype(np.float64)  # crop the context
        if temperature <= 0:
            ids.append(int(last.argmax()))
            continue
        last = last / temperature
        if top_k:
            last[last < np.sort(last)[-min(top_k, len(last))]] = -np.inf
        probs = np.exp(last - last.max())
        ids.append(int(rng.choice(len(probs), p=probs / probs.sum())))
    return ids


def score(session, meta, ids: list[int]) -> dict:
    """Mean negative log-likelihood of ids[1:] given the preceding ids, in windows of seq_len + 1."""
    n, total, window = 0, 0.0, meta["seq_len"]
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        logits = logits_of(session, meta, chunk[:-1]).astype(np.float64)  # (t, v)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        n += len(chunk) - 1
    nll = total / n
    return {"tokens": n, "nll": nll, "bits_per_token": nll / math.log(2), "perplexity": math.exp(nll)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file written by `lotsim export`")
    parser.add_argument("--prompt", default=None, help="text to continue (ids if the model has no vocabulary)")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", default=None, help="score this text instead of generating")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    session, meta = load(args.model)
    codec = Codec(meta["vocabulary"])
    if args.score is not None:
        ids = codec.encode(args.score)
        if len(ids) < 2:
            sys.exit("--score needs at least two tokens")
        result = score(session, meta, ids)
        print(json.dumps(result) if args.json else
              f"{result['tokens']} tokens: {result['nll']:.4f} nats/token, {result['bits_per_token']:.4f} "
              f"bits/token, perplexity {result['perplexity']:.3f}")
        return
    prompt = codec.encode(args.prompt) if args.prompt else [0]
    out = generate(session, meta, prompt, args.max_new_tokens, args.temperature, args.top_k,
                   np.random.default_rng(args.seed))
    text = codec.decode(out[len(prompt):])
    if args.json:
        print(json.dumps({"prompt_ids": prompt, "ids": out[len(prompt):], "text": text}))
    else:
        separator = codec.join if codec.kind in ("tokens", "ids") and args.prompt else ""
        print((args.prompt or "") + separator + text)


if __name__ == "__main__":
    main()
