"""Attention cost: forward + backward time and peak memory of oscillator attentions vs ``vanilla``.

A script, not a test (results and their reading: docs/performance.md). Run from the repository root::

    python benchmarks/bench_attention.py --out benchmarks/results/attention.json

What it measures, side by side in one process (arms interleaved in every repeat, so drifting
machine load hits every arm alike):

* time: median (and interquartile range, and minimum) of the wall time of forward + backward of
  ONE attention layer on x (B, T, D), and of a whole 2-layer model (vocab 256) on (B, T) tokens,
  after warm-up, with ``torch.set_num_threads(threads)``; plus the median process CPU time (all
  threads), which time spent waiting for a busy machine's cores does not inflate (with
  ``--threads 1`` it is the cleanest measure of work on a shared machine);
* peak memory for T in ``--mem-seqs`` (attention layer alone), two ways:
  ``tensor_peak_mib`` — the peak of live tensor bytes during one forward + backward, from the
  torch profiler's memory timeline (every CPU allocation and free recorded by the allocator;
  counts inputs, activations, gradients, and transient buffers; independent of malloc caching);
  ``rss_peak_mib`` — the rise of the peak resident set size over one forward + backward in a fresh
  subprocess (Linux: the high-water mark VmHWM is reset through ``/proc/self/clear_refs`` just
  before, and compared with VmRSS then), with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed tensors go
  back to the OS: a cross-check of the first that counts everything the process touched;
* a profile (torch.profiler, self CPU time per op) of one layer step per arm at the main shape, to
  say where any extra time goes.

An arm is ``attention[:key=value[:key=value...]]`` (values in TOML syntax), e.g.
``lattice:score="multiplicative"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout, not an installed lotsim

import torch  # noqa: E402

from lotsim.model import LOTModel, ModelConfig  # noqa: E402
from lotsim.model.rope import rope_tables  # noqa: E402

# lattice with n_steps=0 isolates the cost of the fused phase term from that of the dynamics
DEFAULT_ARMS = ("vanilla,lattice,lattice:n_steps=0,lattice:score=\"multiplicative\","
                "lattice:dynamics=\"sequence\"")


def parse_arm(arm: str) -> tuple[str, dict]:
    """``"lattice:n_steps=2:score=\"additive\""`` -> ("lattice", {"n_steps": 2, "score": "additive"})."""
    name, *pairs = arm.split(":")
    options = tomllib.loads("\n".join(pairs)) if pairs else {}
    return name, options


def make_config(arm: str, args: argparse.Namespace, seq_len: int, n_layers: int = 1) -> ModelConfig:
    name, options = parse_arm(arm)
    return ModelConfig(vocab_size=args.vocab, seq_len=seq_len, d_model=args.d_model, n_layers=n_layers,
                       n_heads=args.heads, attention=name, attention_options=options)


def layer_step(arm: str, args: argparse.Namespace, batch: int, seq: int):
    """A closure running forward + backward of one attention layer, and its input."""
    torch.manual_seed(0)
    attn = LOTModel(make_config(arm, args, seq)).blocks[0].attn
    rope = rope_tables(seq, args.d_model // args.heads)
    x = torch.randn(batch, seq, args.d_model, requires_grad=True)

    def step():
        y, _ = attn(x, rope)
        y.backward(torch.ones_like(y))

    return step


def model_step(arm: str, args: argparse.Namespace, batch: int, seq: int):
    torch.manual_seed(0)
    model = LOTModel(make_config(arm, args, seq, n_layers=2))
    idx = torch.randint(0, args.vocab, (batch, seq))

    def step():
        model(idx, idx.roll(-1, 1)).loss.backward()

    return step


def interleaved_times(steps: dict, repeats: int, warmup: int) -> dict:
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall = {arm: [] for arm in steps}
    cpu = {arm: [] for arm in steps}
    for _ in range(repeats):
        for arm, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[arm].append(time.perf_counter() - t0)
            cpu[arm].append(time.process_time() - c0)
    out = {}
    for arm, s in wall.items():
        q1, _, q3 = statistics.quantiles(s, n=4)
        out[arm] = {"median_ms": statistics.median(s) * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                    "min_ms": min(s) * 1e3, "cpu_median_ms": statistics.median(cpu[arm]) * 1e3,
                    "samples_ms": [v * 1e3 for v in s], "cpu_samples_ms": [v * 1e3 for v in cpu[arm]]}
    return out


def tensor_peak_mib(step) -> float:
    """Peak live tensor bytes during one call of ``step`` (torch profiler memory timeline)."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lotsim-bench-memory-{os.getpid()}.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, but the only CPU memory timeline
        prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    path.unlink()
    return max(sum(s) for s in sizes) / 2**20


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def rss_peak_child(arm: str, args: argparse.Namespace, batch: int, seq: int) -> None:
    """In a fresh process: print the rise of peak RSS over one forward + backward (MiB)."""
    torch.set_num_threads(args.threads)
    step = layer_step(arm, args, batch, seq)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    before = _status_kib("VmRSS")
    step()
    print(json.dumps({"rss_peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def rss_peak_mib(arm: str, args: argparse.Namespace, batch: int, seq: int) -> float:
    cmd = [sys.executable, __file__, "--child-rss", arm, "--child-seq", str(seq), "--mem-batch", str(batch),
           "--d-model", str(args.d_model), "--heads", str(args.heads), "--vocab", str(args.vocab),
           "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["rss_peak_mib"]


def profile_ops(step, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 3e3, "calls_per_step": e.count / 3}
            for e in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help="comma-separated arms; the first is the baseline")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mem-seqs", default="256,512,1024,2048,4096")
    parser.add_argument("--mem-batch", type=int, default=8)
    parser.add_argument("--mem-arms", default="vanilla,lattice")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the subprocess RSS cross-check (it needs Linux /proc)")
    parser.add_argument("--profile-top", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attention.json")
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    parser.add_argument("--child-seq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        rss_peak_child(args.child_rss, args, args.mem_batch, args.child_seq)
        return

    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    baseline = arms[0]
    shape = f"B={args.batch} T={args.seq} D={args.d_model} H={args.heads}"
    load_start = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load average {load_start:.2f}; {shape}", flush=True)

    layer = interleaved_times({a: layer_step(a, args, args.batch, args.seq) for a in arms},
                              args.repeats, args.warmup)
    model = interleaved_times({a: model_step(a, args, args.batch, args.seq) for a in arms},
                              max(args.repeats // 2, 3), args.warmup)
    print("\nforward + backward wall ms: median (IQR) [min] {median process CPU ms}; "
          f"ratios to {baseline}: of medians [of minima] {{of CPU medians}}")
    for title, res in (("one attention layer", layer), ("2-layer model", model)):
        print(title)
        for a in arms:
            r, b = res[a], res[baseline]
            print(f"  {a:42s} {r['median_ms']:8.1f} ({r['q1_ms']:7.1f}-{r['q3_ms']:7.1f}) "
                  f"[{r['min_ms']:7.1f}] {{{r['cpu_median_ms']:8.1f}}}   "
                  f"{r['median_ms'] / b['median_ms']:6.3f} "
                  f"[{r['min_ms'] / b['min_ms']:5.3f}] {{{r['cpu_median_ms'] / b['cpu_median_ms']:5.3f}}}",
                  flush=True)

    mem_arms = args.mem_arms.split(",")
    seqs = [int(s) for s in args.mem_seqs.split(",") if s]
    memory = {a: {} for a in mem_arms}
    print(f"\npeak memory of one attention layer forward + backward, B={args.mem_batch}, MiB "
          "(tensor peak from the profiler; RSS rise in a fresh process)")
    print(f"{'T':>6s} " + " ".join(f"{a + ' tensor':>18s} {a + ' rss':>15s}" for a in mem_arms))
    for seq in seqs:
        row = f"{seq:6d} "
        for a in mem_arms:
            entry = {"tensor_peak_mib": tensor_peak_mib(layer_step(a, args, args.mem_batch, seq))}
            if not args.no_rss:
                entry["rss_peak_mib"] = rss_peak_mib(a, args, args.mem_batch, seq)
            memory[a][seq] = entry
            row += f"{entry['tensor_peak_mib']:18.1f} {entry.get('rss_peak_mib', float('nan')):15.1f} "
        print(row, flush=True)
    for a in mem_arms:
        if a != baseline and baseline in memory:
            ratios = [memory[a][s]["tensor_peak_mib"] / memory[baseline][s]["tensor_peak_mib"] for s in seqs]
            print(f"tensor-peak ratio {a} / {baseline} over T: " + ", ".join(f"{r:.3f}" for r in ratios))

    profiles = {a: profile_ops(layer_step(a, args, args.batch, args.seq), args.profile_top) for a in arms[:2]}
    for a, rows in profiles.items():
        print(f"\nprofile of one layer step, {a} (self CPU ms per step; profiler overhead included)")
        for r in rows:
            print(f"  {r['op'][:60]:60s} {r['self_ms_per_step']:8.2f} ms  x{r['calls_per_step']:.0f}")

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()[0]},
        "shape": {"batch": args.batch, "seq": args.seq, "d_model": args.d_model, "heads": args.heads},
        "baseline": baseline,
        "layer_time": layer,
        "model_time": model,
        **{f"{kind}_{name}": {a: res[a][key] / res[baseline][key] for a in arms}
           for kind, res in (("layer", layer), ("model", model))
           for name, key in (("time_ratio", "median_ms"), ("time_ratio_of_minima", "min_ms"),
                             ("cpu_time_ratio", "cpu_median_ms"))},
        "memory": {"batch": args.mem_batch, "by_arm": memory},
        "profile": profiles,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
