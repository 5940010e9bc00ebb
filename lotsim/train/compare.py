"""Multi-seed comparison of attention arms at matched parameters, with statistics.

Protocol (design/attention.md, "The baseline and a fair comparison"):

* every arm is the same recipe with a different ``model.attention`` (plus, for ablation arms, an
  option/freeze change); each arm's SwiGLU width is sized so its total parameter count matches the
  reference arm's (:func:`lotsim.model.match_parameters`, within 2%); total and non-embedding
  counts are reported;
* every arm trains with the same seeds (model init), the same data order (batches are addressed by
  index from ``task.seed``), the same steps, batch and schedule; with ``lrs`` every arm gets the
  same learning-rate sweep and its lr is chosen on the mean VALIDATION ``best_metric`` over seeds;
* each run is scored on the TEST split with its best-on-validation checkpoint;
* per arm and metric: mean ± sd, median, n; versus the baseline: the mean difference with its 95%
  CI and p from the paired t-test (seeds are shared: seed i of every arm starts from the same
  data and RNG seed) and from Welch's t-test, as SciPy computes them.

Arms are written ``ATTENTION`` or ``ATTENTION:ABLATION``; ablations (lattice attention):
``no-oscillator`` (gain a_h = 0 and frozen: the phase term is exactly off, the parameters stay),
``frozen-phases`` (the phase projection and every oscillator parameter held at init; the gain
still learns), ``no-coupling`` (kappa = 0 and frozen: heads oscillate independently).

Runs land in ``<out>/runs/<arm>/lr<lr>/seed<s>``; a finished run (``metrics.json`` present) is
reused and an interrupted one resumed, so rerunning an interrupted comparison continues it. The
report is ``report.json``, ``report.md`` and ``comparison.png`` in ``<out>``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lotsim.train.recipe import TrainingRecipe, recipe_to_toml

# numeric keys of a run's metrics.json that are bookkeeping, not test metrics
_NOT_METRICS = {"sequences", "scored_tokens", "batches", "step", "steps", "wall_time_s", "seed", "tokens_per_s"}
LOWER_IS_BETTER = ("loss", "bpc", "perplexity")


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: an attention variant, optionally ablated."""

    name: str
    attention: str
    ablation: str | None = None


def parse_arms(spec: str | list[str]) -> list[Arm]:
    """``"vanilla,lattice,lattice:no-oscillator"`` -> arms.

    Raises:
        ValueError: an unknown attention or ablation, or a duplicate arm (one line).
    """
    from lotsim.model import available_attentions, get_attention

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ValueError("--arms is empty; give e.g. vanilla,lattice")
    if len(set(names)) != len(names):
        raise ValueError(f"--arms {','.join(names)} names an arm twice")
    arms = []
    for name in names:
        attention, _, ablation = name.partition(":")
        if attention not in available_attentions():
            raise ValueError(f"arm {name!r}: unknown attention {attention!r}; available: "
                             f"{', '.join(available_attentions())}")
        if ablation:
            allowed = get_attention(attention).arm_presets()
            if ablation not in allowed:
                raise ValueError(f"arm {name!r}: unknown ablation {ablation!r}; {attention} allows: "
                                 f"{', '.join(allowed) or 'none'} (ablations and readings)")
        arms.append(Arm(name, attention, ablation or None))
    return arms


def arm_recipes(base: TrainingRecipe, arms: list[Arm], reference: str | None = None
                ) -> tuple[dict[str, TrainingRecipe], dict[str, dict]]:
    """Each arm's recipe, parameter-matched to the reference arm, and the parameter report.

    The base recipe's ``attention_options`` are kept for arms of the same attention and dropped for
    others; an ablation adds its options and freezes its parameters.

    Returns:
        (arm name -> recipe, arm name -> {"total", "non_embedding", "d_ff", "relative_to_reference"}).
    """
    import torch

    from lotsim.model import LOTModel, ModelConfig, match_parameters, parameter_report

    configs: dict[str, ModelConfig] = {}
    freezes: dict[str, list[str]] = {}
    for arm in arms:
        options = dict(base.model.attention_options) if arm.attention == base.model.attention else {}
        freeze = list(base.train.freeze)
        if arm.ablation:
            from lotsim.model import get_attention

            spec = get_attention(arm.attention).arm_presets()[arm.ablation]
            allowed = get_attention(arm.attention).Options.model_fields
            options.update({k: v for k, v in spec["options"].items() if k in allowed})
            config = ModelConfig.model_validate({**base.model.model_dump(), "attention": arm.attention,
                                                 "attention_options": options})
            with torch.device("meta"):
                names = [n for n, _ in LOTModel(config).named_parameters()]
            for suffix in spec["freeze"]:
                pattern = f"blocks.*.attn.{suffix}"
                if fnmatch.filter(names, pattern):
                    freeze.append(pattern)
        configs[arm.name] = ModelConfig.model_validate({**base.model.model_dump(), "attention": arm.attention,
                                                        "attention_options": options})
        freezes[arm.name] = freeze
    if reference is None:
        reference = next((a.name for a in arms if a.name == "lattice"), None)
    if reference is not None and reference not in configs:
        raise ValueError(f"reference arm {reference!r} is not among the arms: {', '.join(configs)}")
    matched = match_parameters(configs, reference)
    report = parameter_report(matched, reference)
    recipes = {}
    for arm in arms:
        train = base.train.model_copy(update={"freeze": freezes[arm.name]})
        recipes[arm.name] = base.model_copy(update={"model": matched[arm.name], "train": train,
                                                    "name": f"{base.name}-{arm.name}"})
    return recipes, report


def _lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def run_comparison(base: TrainingRecipe, arms: list[Arm], seeds: list[int], out_dir: str | Path, *,
                   lrs: list[float] | None = None, baseline: str | None = None, reference: str | None = None,
                   callback: Callable[[dict], None] | None = None, plot: bool = True, jobs: int = 1
                   ) -> dict[str, Any]:
    """Train every arm x lr x seed, pick each arm's lr on validation, compare test metrics.

    Args:
        base: the recipe every arm starts from.
        arms: from :func:`parse_arms`.
        seeds: model-init seeds (shared by every arm: the tests are paired).
        out_dir: the comparison folder.
        lrs: learning rates to sweep for EVERY arm (default: the recipe's).
        baseline: the arm differences are taken against (default ``vanilla`` if present, else the first).
        reference: the arm whose parameter count the others match (default ``lattice`` if present).
        callback: receives ``{"event": "run", ...}`` before each run and ``"run_done"`` after, plus
            the training events of the run (``"train"`` wrapping them; only with ``jobs=1``).
        plot: write ``comparison.png``.
        jobs: trainings run at once, each in its own process (spawned). A recipe asking for torch's
            default thread count (``train.threads = 0``) gets ``max(1, cores // jobs)`` threads so the
            processes do not oversubscribe the cores. Results do not depend on ``jobs`` when the thread
            count does not change; tokens/s measured side by side are not comparable across runs.

    Returns:
        The report (also written to ``report.json`` / ``report.md``).
    """
    out_dir = Path(out_dir)
    lrs = list(lrs) if lrs else [base.train.lr]
    names = [a.name for a in arms]
    baseline = baseline or ("vanilla" if "vanilla" in names else names[0])
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the arms: {', '.join(names)}")
    recipes, params = arm_recipes(base, arms, reference)
    emit = callback or (lambda event: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored, text = out_dir / "recipe.base.toml", recipe_to_toml(base)
    if stored.is_file() and stored.read_text() != text:
        raise ValueError(f"{str(out_dir)!r} holds a comparison of another recipe; choose another output folder")
    stored.write_text(text)

    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be >= 1")
    planned = []  # (arm, lr, seed, run_dir, recipe) in report order
    for arm in arms:
        for lr in lrs:
            for seed in seeds:
                train_cfg = recipes[arm.name].train.model_copy(update={"lr": lr})
                if jobs > 1 and train_cfg.threads == 0:
                    train_cfg = train_cfg.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // jobs)})
                planned.append((arm.name, lr, seed, out_dir / "runs" / arm.name / _lr_tag(lr) / f"seed{seed}",
                                recipes[arm.name].model_copy(update={"seed": seed, "train": train_cfg})))
    total = len(planned)
    records: dict[Path, dict] = {}
    done = 0

    def started(arm: str, lr: float, seed: int, run_dir: Path) -> None:
        emit({"event": "run", "arm": arm, "lr": lr, "seed": seed, "index": done, "total": total,
              "run_dir": str(run_dir)})

    def finished(arm: str, lr: float, seed: int, run_dir: Path) -> None:
        nonlocal done
        records[run_dir] = _run_record(seed, run_dir)
        done += 1
        emit({"event": "run_done", "arm": arm, "lr": lr, "seed": seed, "index": done, "total": total,
              "test": records[run_dir]["test"]})

    pending = []
    for arm, lr, seed, run_dir, recipe in planned:
        if (run_dir / "metrics.json").is_file():  # a finished run is reused
            started(arm, lr, seed, run_dir)
            finished(arm, lr, seed, run_dir)
        else:
            pending.append((arm, lr, seed, run_dir, recipe))
    if jobs == 1:
        for arm, lr, seed, run_dir, recipe in pending:
            started(arm, lr, seed, run_dir)
            _train_run(recipe, run_dir, callback=lambda e: emit({"event": "train", "train": e}))
            finished(arm, lr, seed, run_dir)
    elif pending:
        _train_in_pool(pending, jobs, started, finished)

    runs: dict[str, dict[float, list[dict]]] = {a.name: {lr: [] for lr in lrs} for a in arms}
    for arm, lr, _, run_dir, _ in planned:
        runs[arm][lr].append(records[run_dir])

    lower = base.train.lower_is_better
    chosen = {}
    for arm in names:
        def score(lr, arm=arm):
            return statistics.fmean(r["validation_best"] for r in runs[arm][lr])
        chosen[arm] = min(lrs, key=score) if lower else max(lrs, key=score)
    report = build_report(base, runs, chosen, params, baseline, seeds, lrs)
    (out_dir / "report.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (out_dir / "report.md").write_text(report_markdown(report))
    if plot:
        report["plot"] = str(plot_comparison(report, out_dir / "comparison.png"))
    return report


def _train_run(recipe: TrainingRecipe, run_dir: Path, callback: Callable[[dict], None] | None = None) -> None:
    """Train one run of a comparison; a run stopped half-way (``last.pt`` present) is resumed."""
    from lotsim.train.loop import train

    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    train(None if resume else recipe, run_dir, resume=resume, callback=callback)


def _train_in_pool(pending: list, jobs: int, started: Callable, finished: Callable) -> None:
    """Run ``pending`` trainings ``jobs`` at a time in spawned processes, reporting each as it ends.

    On Ctrl-C every worker saves its checkpoint (they receive the signal too) before this re-raises,
    so rerunning the comparison resumes them.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for arm, lr, seed, run_dir, recipe in pending:
            started(arm, lr, seed, run_dir)
            futures[pool.submit(_train_run, recipe, run_dir)] = (arm, lr, seed, run_dir)
        try:
            remaining = set(futures)
            while remaining:
                complete, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in complete:
                    future.result()  # re-raises a worker's error (TrainingInterrupted included)
                    finished(*futures[future])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _run_record(seed: int, run_dir: Path) -> dict[str, Any]:
    record = json.loads((run_dir / "metrics.json").read_text())
    return {"seed": seed, "run_dir": str(run_dir), "test": _metrics_of(record),
            "validation_best": record["best"]["value"], "tokens_per_s": record["tokens_per_s"]}


def _metrics_of(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_METRICS}


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sd (ddof=1), median, min, max and the values."""
    x = np.asarray(values, dtype=float)
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else None,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()), "values": x.tolist()}


def difference(arm: list[float], baseline: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean difference arm - baseline with 95% CIs and p-values: paired t (same seeds) and Welch.

    A test whose statistic is undefined (n < 2, or zero spread) reports its CI as the observed
    difference when there is no spread at all and its p as None.
    """
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    out: dict[str, Any] = {"mean_difference": float(a.mean() - b.mean()), "n": int(min(a.size, b.size))}
    paired = {"test": "paired t (scipy.stats.ttest_rel)", "ci": None, "p": None, "t": None, "df": None}
    if a.size == b.size and a.size >= 2:
        d = a - b
        if np.ptp(d) == 0:
            paired["ci"] = [float(d[0]), float(d[0])]
        else:
            res = stats.ttest_rel(a, b)
            ci = res.confidence_interval(confidence)
            paired.update(ci=[float(ci.low), float(ci.high)], p=float(res.pvalue), t=float(res.statistic),
                          df=float(res.df))
    welch = {"test": "Welch t (scipy.stats.ttest_ind, equal_var=False)", "ci": None, "p": None, "t": None,
             "df": None}
    if a.size >= 2 and b.size >= 2:
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            welch["ci"] = [out["mean_difference"]] * 2
        else:
            res = stats.ttest_ind(a, b, equal_var=False)
            ci = res.confidence_interval(confidence)
            welch.update(ci=[float(ci.low), float(ci.high)], p=float(res.pvalue), t=float(res.statistic),
                         df=float(res.df))
    out["paired"], out["welch"] = paired, welch
    return out


def build_report(base: TrainingRecipe, runs: dict, chosen: dict, params: dict, baseline: str, seeds: list[int],
                 lrs: list[float]) -> dict[str, Any]:
    """The comparison's numbers (see :func:`run_comparison`)."""
    arms = list(runs)
    selected = {arm: runs[arm][chosen[arm]] for arm in arms}
    metric_names = sorted(set.union(*(set(r["test"]) for arm in arms for r in selected[arm])))
    from lotsim import __version__
    from lotsim.simulation import git_commit

    report: dict[str, Any] = {
        "lotsim_version": __version__, "git_commit": git_commit(),
        "recipe": base.name, "task": base.task.kind, "steps": base.train.steps, "seeds": seeds, "lrs": lrs,
        "baseline": baseline, "selection": f"lr per arm by mean validation {base.train.best_metric} over seeds",
        "evaluation": "test split, best-on-validation checkpoint", "metrics": metric_names, "arms": {},
    }
    for arm in arms:
        rows = selected[arm]
        entry = {
            "lr": chosen[arm], "parameters": params[arm],
            "tokens_per_s": describe([r["tokens_per_s"] for r in rows]),
            "runs": [r["run_dir"] for r in rows],
            "lr_sweep": {str(lr): statistics.fmean(r["validation_best"] for r in runs[arm][lr]) for lr in lrs},
            "metrics": {},
        }
        for metric in metric_names:
            if not all(metric in r["test"] for r in rows):
                continue  # e.g. sync_order: oscillator arms only
            values = [r["test"][metric] for r in rows]
            stats_ = describe(values)
            if arm != baseline and all(metric in r["test"] for r in selected[baseline]):
                stats_["vs_baseline"] = difference(values, [r["test"][metric] for r in selected[baseline]])
            entry["metrics"][metric] = stats_
        report["arms"][arm] = entry
    return report


def _fmt(x, digits=4) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def report_markdown(report: dict[str, Any]) -> str:
    """A markdown report: parameters and throughput, then one table per metric."""
    lines = [f"# Comparison: {report['recipe']} ({report['task']})", "",
             f"{len(report['seeds'])} seeds {report['seeds']}, {report['steps']} steps, lr sweep {report['lrs']} "
             f"({report['selection']}); {report['evaluation']}. Baseline: **{report['baseline']}**. "
             "Differences are arm − baseline; paired t over shared seeds and Welch t, 95% CIs.", "",
             "| arm | lr | parameters (total) | non-embedding | d_ff | Δ vs reference | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for arm, e in report["arms"].items():
        p = e["parameters"]
        lines.append(f"| {arm} | {e['lr']:g} | {p['total']:,} | {p['non_embedding']:,} | {p['d_ff']} | "
                     f"{p['relative_to_reference']:+.2%} | {e['tokens_per_s']['mean']:,.0f} |")
    for metric in report["metrics"]:
        lines += ["", f"## {metric}", "",
                  "| arm | n | mean ± sd | median | Δ mean | 95% CI (paired) | p (paired) | 95% CI (Welch) "
                  "| p (Welch) |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, e in report["arms"].items():
            s = e["metrics"].get(metric)
            if s is None:
                continue
            v = s.get("vs_baseline")
            if v is None:
                tail = "| (baseline) | | | | |" if arm == report["baseline"] else "| | | | | |"
            else:
                pc, wc = v["paired"]["ci"], v["welch"]["ci"]
                tail = (f"| {_fmt(v['mean_difference'])} | {_ci(pc)} | {_fmt(v['paired']['p'], 3)} | {_ci(wc)} | "
                        f"{_fmt(v['welch']['p'], 3)} |")
            lines.append(f"| {arm} | {s['n']} | {_fmt(s['mean'])} ± {_fmt(s['sd'], 2)} | {_fmt(s['median'])} {tail}")
    return "\n".join(lines) + "\n"


def _ci(ci, digits: int = 4) -> str:
    return "–" if ci is None else f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _finite(obj):
    """NaN/inf -> None, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_comparison(report: dict[str, Any], path: str | Path) -> Path:
    """Per metric: every seed's test value per arm (dots), mean ± sd (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    metrics = report["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), constrained_layout=True,
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for i, arm in enumerate(arms):
            s = report["arms"][arm]["metrics"].get(metric)
            if s is None:
                continue
            x = np.full(len(s["values"]), i, dtype=float) + np.linspace(-0.08, 0.08, len(s["values"]))
            ax.plot(x, s["values"], "o", ms=4, alpha=0.7, color=colors[i % len(colors)])  # one colour per arm
            ax.errorbar(i + 0.22, s["mean"], yerr=s["sd"] or 0.0, fmt="s", color="k", ms=4, capsize=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"test {metric}", fontsize=9)
    fig.suptitle(f"{report['recipe']}: {len(report['seeds'])} seeds (dots), mean ± sd (black)", fontsize=9)
    path = Path(path)
    from lotsim import __version__

    meta = {"Creator": f"lotsim {__version__}", "Description": f"lotsim compare: {report['recipe']}"}
    fig.savefig(path, dpi=120, metadata={"Software": meta["Creator"], **meta} if path.suffix == ".png" else meta)
    plt.close(fig)
    return path
