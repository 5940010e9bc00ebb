"""Training speed: tokens/s and peak memory of a full training step for every attention arm.

A script, not a test (results and their reading: docs/performance.md). Run from the repository root::

    python benchmarks/bench_train.py --out benchmarks/results/train.json
    python benchmarks/bench_train.py --nanogpt /path/to/nanoGPT   # also nanoGPT's own model

A training step is what ``lotsim train`` does per optimiser step: forward with the loss, backward,
gradient clipping at 1.0 and an AdamW step (:func:`lotsim.train.components.make_optimizer`). The shape is
nanoGPT's CPU "baby GPT" (4 layers, 4 heads, d_model 128, context 64, batch 12, a 65-character
vocabulary), then the same model at longer contexts (``--contexts``, default 64, 256, 1024). Every
arm is parameter-matched to ``lattice`` with :func:`lotsim.model.match_parameters`, as
``lotsim compare`` does (the SwiGLU width absorbs the difference).

Measured side by side in one process with ``torch.set_num_threads(threads)`` (1 by default, like
``lotsim train``): the arms take turns in every repeat, so drifting machine load hits all alike; a
sample is ``--steps`` consecutive training steps. Reported per arm and context: median wall time per
step (and interquartile range), median process CPU time per step (not inflated by waiting for a
busy core), tokens/s from the median wall time, the ratios to ``vanilla`` (of medians, of minima, of
CPU medians), and the peak of live tensor bytes over one step (torch profiler memory timeline:
parameters, gradients, AdamW state, activations and transients).

``--nanogpt DIR`` imports ``model.py`` from a nanoGPT checkout given by path (never copied here)
and measures its ``GPT`` at the same shape as one more arm, ``nanogpt``, with its own
``configure_optimizers`` (AdamW, the same weight decay, lr and betas), bias-free and without dropout
like the baby-GPT command in its README. ``--compile-arms`` adds ``torch.compile``d copies of the
named arms (``ARM+compile``; compilation time is reported separately, not in the step time).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout, not an installed lotsim

import torch  # noqa: E402
from bench_attention import tensor_peak_mib  # noqa: E402

from lotsim.model import LOTModel, ModelConfig, match_parameters, parameter_counts  # noqa: E402
from lotsim.train.components import make_optimizer  # noqa: E402

ARMS = "vanilla,lattice,pma,ssa,torus,fsn"
LR, WEIGHT_DECAY, BETAS, GRAD_CLIP = 1e-3, 0.1, (0.9, 0.99), 1.0  # nanoGPT's shakespeare-char values


def lotsim_configs(arms: list[str], args: argparse.Namespace, seq_len: int) -> dict[str, ModelConfig]:
    """Each lotsim arm's config at this context, parameter-matched to ``lattice`` (or the largest)."""
    configs = {arm: ModelConfig(vocab_size=args.vocab, seq_len=seq_len, d_model=args.d_model,
                                n_layers=args.layers, n_heads=args.heads, attention=arm) for arm in arms}
    return match_parameters(configs)


def load_nanogpt(path: Path):
    """The ``model`` module of a nanoGPT checkout (imported from its path, not copied)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile re-imports the module of the code it traces
    spec.loader.exec_module(module)
    return module


def training_step(arm: str, args: argparse.Namespace, config: ModelConfig | None, seq_len: int, nanogpt=None):
    """A closure running one full training step of ``arm`` on fixed random tokens, and its parameter count."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    name = arm.removesuffix("+compile")
    if name == "nanogpt":
        model = nanogpt.GPT(nanogpt.GPTConfig(block_size=seq_len, vocab_size=args.vocab, n_layer=args.layers,
                                              n_head=args.heads, n_embd=args.d_model, dropout=0.0, bias=False))
        model.to(device)
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, device.type)

        def loss_of(idx, targets):
            return model(idx, targets)[1]

        parameters = sum(p.numel() for p in model.parameters())
    else:
        model = LOTModel(config).to(device)
        optimizer = make_optimizer(model, LR, WEIGHT_DECAY, BETAS, device)

        def loss_of(idx, targets):
            return model(idx, targets).loss

        parameters = parameter_counts(config)["total"]
    if arm.endswith("+compile"):
        loss_of = torch.compile(loss_of)
    model.train()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, args.vocab, (args.batch, seq_len + 1), generator=g)
    inputs, targets = idx[:, :-1].contiguous().to(device), idx[:, 1:].contiguous().to(device)

    def step():
        loss = loss_of(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, parameters


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); a no-op on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_mib(step, device: str) -> float:
    """Peak tensor memory of one step: the CUDA allocator's peak on a GPU, the profiler's on the CPU."""
    if not device.startswith("cuda"):
        return tensor_peak_mib(step)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def interleaved(steps: dict, repeats: int, steps_per_sample: int, device: str = "cpu") -> dict:
    """Median/IQR/min of wall and CPU seconds per step, arms taking turns in every repeat."""
    wall = {arm: [] for arm in steps}
    cpu = {arm: [] for arm in steps}
    for _ in range(repeats):
        for arm, step in steps.items():
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps_per_sample):
                step()
            synchronize(device)
            wall[arm].append((time.perf_counter() - t0) / steps_per_sample)
            cpu[arm].append((time.process_time() - c0) / steps_per_sample)
    out = {}
    for arm, s in wall.items():
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0], s[0], s[0])
        out[arm] = {"median_ms": statistics.median(s) * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                    "min_ms": min(s) * 1e3, "cpu_median_ms": statistics.median(cpu[arm]) * 1e3,
                    "samples_ms": [v * 1e3 for v in s]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=ARMS, help="comma-separated lotsim attentions; vanilla is the reference")
    parser.add_argument("--contexts", default="64,256,1024")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    parser.add_argument("--repeats", default="7,5,3", help="timed samples per context (one value or one per context)")
    parser.add_argument("--steps", default="4,1,1", help="training steps per sample (one value or one per context)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm and context")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="peak tensor memory of one step per arm and context (profiler)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: measure its model.py's GPT too")
    parser.add_argument("--compile-arms", default="", help="arms to also measure under torch.compile")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        parser.error(f"--device {args.device!r} is not allowed; use cpu, cuda or cuda:<i>")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device")
    arms = args.arms.split(",")
    if "vanilla" not in arms:
        parser.error("--arms must include vanilla (the reference)")
    contexts = [int(c) for c in args.contexts.split(",")]

    def per_context(value: str) -> list[int]:
        values = [int(v) for v in value.split(",")]
        return [values[min(i, len(values) - 1)] for i in range(len(contexts))]

    repeats, steps_per_sample = per_context(args.repeats), per_context(args.steps)
    nanogpt = None
    if args.nanogpt is not None:
        if not (args.nanogpt / "model.py").is_file():
            parser.error(f"--nanogpt {str(args.nanogpt)!r} has no model.py (give a nanoGPT checkout)")
        nanogpt = load_nanogpt(args.nanogpt)
    compiled = [f"{a}+compile" for a in args.compile_arms.split(",") if a]
    if compiled:  # every compiled arm adds entries to the same frames' caches (one LOTModel.forward, one
        # Block.forward ...); past dynamo's default limit of 8 a frame is recompiled inside the timed steps
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                                   8 * len(compiled) * len(contexts))
    load_start = os.getloadavg()[0]
    where = torch.cuda.get_device_name(args.device) if args.device != "cpu" else "CPU"
    print(f"{where}: torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average "
          f"{load_start:.2f}; {args.layers} layers, {args.heads} heads, d_model {args.d_model}, batch {args.batch}",
          flush=True)

    results = {}
    for seq_len, reps, per in zip(contexts, repeats, steps_per_sample):
        configs = lotsim_configs(arms, args, seq_len)
        names = arms + (["nanogpt"] if nanogpt is not None else []) + compiled
        steps, parameters, compile_s = {}, {}, {}
        for arm in names:
            steps[arm], parameters[arm] = training_step(arm, args, configs.get(arm.removesuffix("+compile")),
                                                        seq_len, nanogpt)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.warmup):
                steps[arm]()
            synchronize(args.device)
            if arm.endswith("+compile"):  # the warm-up steps include the compilation
                compile_s[arm] = {"compile_wall_s": time.perf_counter() - t0,
                                  "compile_cpu_s": time.process_time() - c0}
        if compiled:  # one untimed round in turn: a compiled model's first call after another model's may
            for step in steps.values():  # still recompile (dynamo's guards on parameter shapes)
                step()
        timing = interleaved(steps, reps, per, args.device)
        memory = {arm: peak_mib(steps[arm], args.device) for arm in names} if args.memory else {}
        ref = timing["vanilla"]
        tokens = args.batch * seq_len
        rows = {}
        for arm in names:
            r = timing[arm]
            rows[arm] = {**r, "tokens_per_s": tokens / (r["median_ms"] / 1e3), "parameters": parameters[arm],
                         "d_ff": configs[arm].d_ff if arm in configs else None,
                         "speed_vs_vanilla": ref["median_ms"] / r["median_ms"],
                         "speed_vs_vanilla_of_minima": ref["min_ms"] / r["min_ms"],
                         "speed_vs_vanilla_cpu": ref["cpu_median_ms"] / r["cpu_median_ms"],
                         **({"peak_tensor_mib": memory[arm]} if memory else {}),
                         **compile_s.get(arm, {})}
        results[seq_len] = rows
        print(f"\ncontext {seq_len}, batch {args.batch}: ms per step median (IQR) {{CPU}}, tokens/s, speed vs "
              "vanilla of medians [of minima] {of CPU}, peak tensor MiB, parameters")
        for arm, r in rows.items():
            print(f"  {arm:16s} {r['median_ms']:8.1f} ({r['q1_ms']:7.1f}-{r['q3_ms']:7.1f}) "
                  f"{{{r['cpu_median_ms']:8.1f}}} "
                  f"{r['tokens_per_s']:9.0f}  {r['speed_vs_vanilla']:5.2f} [{r['speed_vs_vanilla_of_minima']:5.2f}] "
                  f"{{{r['speed_vs_vanilla_cpu']:5.2f}}}  {r.get('peak_tensor_mib', float('nan')):7.1f}  "
                  f"{r['parameters']:,}", flush=True)

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "device": where, "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "load_average_start": load_start,
                    "load_average_end": os.getloadavg()[0]},
        "shape": {"batch": args.batch, "layers": args.layers, "heads": args.heads, "d_model": args.d_model,
                  "vocab": args.vocab},
        "reference": "vanilla",
        "by_context": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
