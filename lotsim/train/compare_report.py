"""The statistics and the report of a comparison (see :mod:`lotsim.train.compare`).

Per arm and metric: mean ± sd, median, n; versus the baseline: the mean and median paired
difference, its 95% CI (paired t over shared seeds) and the simultaneous Bonferroni interval over the
arms, p from the paired t-test with its Holm adjustment across arms, and Welch's p, as SciPy computes
them; an ablation arm also against its full arm. Fewer than :data:`SCREEN_SEEDS` seeds make the
report a *screen* with caveats; the baseline's validation-loss slope over the last 20% of training
says whether it has flattened. Rendered as ``report.json``, ``report.md`` and ``comparison.png``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from lotsim.train.recipe import TrainingRecipe

SCREEN_SEEDS = 5  # fewer seeds than this: the report is a screen, not a verdict
SILENT_PHASE_ABLATIONS = {"no-oscillator"}  # ablations whose phase term is exactly off (registry contract)


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sd (ddof=1), median, min, max and the values."""
    x = np.asarray(values, dtype=float)
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else None,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()), "values": x.tolist()}


def difference(arm: list[float], baseline: list[float], confidence: float = 0.95, family_size: int = 1
               ) -> dict[str, Any]:
    """Mean difference arm - baseline with 95% CIs and p-values: paired t (same seeds) and Welch.

    The paired test also gives the median of the paired differences and ``ci_simultaneous``: the
    Bonferroni interval at confidence ``1 - (1 - confidence) / family_size``, which holds jointly for
    the ``family_size`` arms compared with the baseline (the intervals that go with Holm's test; see
    :func:`holm`). A test whose statistic is undefined (n < 2, or zero spread) reports its CI as the
    observed difference when there is no spread at all and its p as None.
    """
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    out: dict[str, Any] = {"mean_difference": float(a.mean() - b.mean()), "n": int(min(a.size, b.size))}
    paired = {"test": "paired t (scipy.stats.ttest_rel)", "ci": None, "ci_simultaneous": None, "p": None,
              "p_holm": None, "t": None, "df": None, "median_difference": None}
    if a.size == b.size:
        paired["median_difference"] = float(np.median(a - b))
    if a.size == b.size and a.size >= 2:
        d = a - b
        if np.ptp(d) == 0:
            paired["ci"] = paired["ci_simultaneous"] = [float(d[0]), float(d[0])]
        else:
            res = stats.ttest_rel(a, b)
            ci, joint = res.confidence_interval(confidence), res.confidence_interval(1 - (1 - confidence) / family_size)
            paired.update(ci=[float(ci.low), float(ci.high)], ci_simultaneous=[float(joint.low), float(joint.high)],
                          p=float(res.pvalue), t=float(res.statistic), df=float(res.df))
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


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down; family-wise error control); None stays None and
    does not count towards the family."""
    known = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def validation_slope(run_dir: str | Path, steps: int, metric: str = "loss", fraction: float = 0.2) -> dict[str, Any]:
    """Least-squares slope of a run's validation ``metric`` over the last ``fraction`` of training.

    Read from the run's ``metrics.jsonl``. A flattened run has a slope near zero: the report gives it
    per 1000 steps and as the fitted change over the window.

    Returns:
        ``{"window": [first, last step], "points", "slope_per_1k_steps", "change_over_window"}``;
        the slope is None when fewer than two evaluations fall in the window.
    """
    start = steps * (1 - fraction)
    points = []
    log = Path(run_dir) / "metrics.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if record.get("split") == "validation" and record.get("step", -1) >= start and metric in record:
            points.append((record["step"], record[metric]))
    out: dict[str, Any] = {"window": [math.ceil(start), steps], "points": len(points), "slope_per_1k_steps": None,
                           "change_over_window": None}
    if len({s for s, _ in points}) >= 2:
        x, y = np.array(points, dtype=float).T
        slope = float(np.polyfit(x, y, 1)[0])
        out.update(slope_per_1k_steps=1000 * slope, change_over_window=slope * (steps - start))
    return out


def build_report(base: TrainingRecipe, runs: dict, chosen: dict, params: dict, baseline: str, seeds: list[int],
                 lrs: list[float], tuning: dict | None = None, parents: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """The comparison's numbers (see :func:`run_comparison`). Differences pair the runs of equal seeds
    (an arm with fewer seeds is paired over those); an ablation arm also gets ``vs_full``, its paired
    difference to the full arm in ``parents``."""
    parents = parents or {}
    arms = list(runs)
    selected = {arm: runs[arm][chosen[arm]] for arm in arms}
    metric_names = sorted(set.union(*(set(r["test"]) for arm in arms for r in selected[arm])))
    from lotsim import __version__
    from lotsim.simulation import git_commit

    n = len(seeds)
    report: dict[str, Any] = {
        "lotsim_version": __version__, "git_commit": git_commit(),
        "recipe": base.name, "task": base.task.kind, "steps": base.train.steps, "seeds": seeds, "lrs": lrs,
        "baseline": baseline, "grade": "screen" if n < SCREEN_SEEDS else "verdict", "caveats": screen_caveats(n),
        "selection": (f"lr per arm by validation {base.train.best_metric} of a {tuning['steps']}-step sweep on seed "
                      f"{tuning['seed']}" if tuning else
                      f"lr per arm by mean validation {base.train.best_metric} over seeds"),
        "evaluation": "test split, best-on-validation checkpoint", "metrics": metric_names, "arms": {},
        "corpus": corpus_of(base),
    }
    if tuning:
        report["tuning"] = tuning
    if len(lrs) > 1:  # a best rate on the sweep's edge may not be the arm's best: say so
        edges = [f"{arm}'s best rate {chosen[arm]:g} is the sweep's "
                 f"{'smallest' if chosen[arm] == min(lrs) else 'largest'}"
                 for arm in arms if chosen[arm] in (min(lrs), max(lrs)) and arm not in parents]
        if edges:
            report["caveats"].append("; ".join(edges) + ": extend the sweep beyond it (--lr-sweep)")
    for arm in arms:
        rows = selected[arm]
        entry = {
            "lr": chosen[arm], "parameters": params[arm],
            "tokens_per_s": describe([r["tokens_per_s"] for r in rows]),
            "runs": [r["run_dir"] for r in rows], "seeds": [r["seed"] for r in rows],
            "lr_sweep": {str(lr): statistics.fmean(r["validation_best"] for r in runs[arm][lr]) for lr in runs[arm]},
            "metrics": {},
        }
        silent = arm.partition(":")[2] in SILENT_PHASE_ABLATIONS
        for metric in metric_names:
            if not all(metric in r["test"] for r in rows) or (silent and metric.startswith("sync_order")):
                continue  # sync_order: arms whose phases act only
            entry["metrics"][metric] = describe([r["test"][metric] for r in rows])
        if arm in parents:
            entry["full_arm"] = parents[arm]
        report["arms"][arm] = entry

    def paired(arm: str, other: str, metric: str, family_size: int) -> dict[str, Any]:
        theirs = {r["seed"]: r["test"][metric] for r in selected[other]}
        shared = [r for r in selected[arm] if r["seed"] in theirs]
        return difference([r["test"][metric] for r in shared], [theirs[r["seed"]] for r in shared],
                          family_size=family_size)

    for metric in metric_names:  # differences to the baseline; Holm across the arms of one metric
        ablated = [arm for arm, parent in parents.items()
                   if metric in report["arms"][arm]["metrics"] and metric in report["arms"][parent]["metrics"]]
        for arm in ablated:
            report["arms"][arm]["metrics"][metric]["vs_full"] = paired(arm, parents[arm], metric, len(ablated))
        for arm, p in zip(ablated, holm([report["arms"][a]["metrics"][metric]["vs_full"]["paired"]["p"]
                                         for a in ablated])):
            report["arms"][arm]["metrics"][metric]["vs_full"]["paired"]["p_holm"] = p
        if metric not in report["arms"][baseline]["metrics"]:
            continue
        others = [arm for arm in arms if arm != baseline and metric in report["arms"][arm]["metrics"]]
        for arm in others:
            report["arms"][arm]["metrics"][metric]["vs_baseline"] = paired(arm, baseline, metric, len(others))
        adjusted = holm([report["arms"][arm]["metrics"][metric]["vs_baseline"]["paired"]["p"] for arm in others])
        for arm, p in zip(others, adjusted):
            report["arms"][arm]["metrics"][metric]["vs_baseline"]["paired"]["p_holm"] = p
    slopes = [validation_slope(r["run_dir"], base.train.steps) for r in selected[baseline]]
    known = [s["slope_per_1k_steps"] for s in slopes if s["slope_per_1k_steps"] is not None]
    report["baseline_convergence"] = {
        "arm": baseline, "metric": "validation loss", "window": slopes[0]["window"] if slopes else None,
        "slope_per_1k_steps_mean": statistics.fmean(known) if known else None,
        "change_over_window_mean": statistics.fmean(s["change_over_window"] for s in slopes
                                                    if s["change_over_window"] is not None) if known else None,
        "per_seed": slopes,
    }
    return report


def screen_caveats(n: int) -> list[str]:
    """What a reader must know before reading the p-values of an n-seed comparison."""
    if n >= SCREEN_SEEDS:
        return []
    out = [f"screen: {n} seed{'s' if n > 1 else ''} (< {SCREEN_SEEDS}); differences and p-values point at what to "
           "run next, they are not a verdict"]
    if n == 1:
        out.append("n = 1: no test is possible; the values are single runs")
    elif n == 2:
        out.append("n = 2: the paired t-test has 1 degree of freedom (t_0.975 = 12.7); its CI is very wide and "
                   "its p-value nearly meaningless")
    return out


def corpus_of(base: TrainingRecipe) -> dict | None:
    """The resolved text corpus (path, files, size, hash) of a text task, else None."""
    if base.task.kind != "char_lm":
        return None
    from lotsim.tasks.text import describe_corpus

    return describe_corpus(base.task.path, getattr(base.task, "glob", None))


def copy_depth_of(report: dict[str, Any]) -> dict[str, Any]:
    """Per arm: the copy-depth breakdown of the test loss of each seed's best checkpoint (cached as
    ``copy_depth.test.json`` in the run folder), averaged over seeds."""
    from lotsim.analysis.copy_depth import analyze_copy_depth, combine_breakdowns

    out = {}
    for arm, entry in report["arms"].items():
        per_seed = []
        for run_dir in entry["runs"]:
            cached = Path(run_dir) / "copy_depth.test.json"
            if cached.is_file():
                per_seed.append(json.loads(cached.read_text()))
                continue
            breakdown = analyze_copy_depth(run_dir, split="test")
            cached.write_text(json.dumps(finite(breakdown), indent=2) + "\n")
            per_seed.append(breakdown)
        out[arm] = combine_breakdowns(per_seed)
    return out


def fmt(x, digits=4) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def report_markdown(report: dict[str, Any]) -> str:
    """A markdown report: caveats, parameters and throughput, the lr sweep, the baseline's
    convergence, one table per metric, and the copy-depth breakdown when computed."""
    n = len(report["seeds"])
    grade = "Screen" if report["grade"] == "screen" else "Verdict"
    lines = [f"# {grade}: {report['recipe']} ({report['task']})", "",
             f"{n} seeds {report['seeds']}, {report['steps']} steps, lr sweep {report['lrs']} "
             f"({report['selection']}); {report['evaluation']}. Baseline: **{report['baseline']}**. "
             "Differences are arm − baseline over shared seeds: paired t (95% CI, and the simultaneous "
             "Bonferroni interval for all arms at once; p Holm-adjusted across arms) and Welch t.", ""]
    lines += [f"> **Caveat — {c}.**" for c in report["caveats"]] + ([""] if report["caveats"] else [])
    if report.get("corpus"):
        c = report["corpus"]
        lines += [f"Corpus: `{c['path']}` ({c['files']} file{'s' if c['files'] != 1 else ''}, {c['bytes']:,} bytes, "
                  f"sha256 {c['sha256'][:16]}…).", ""]
    lines += ["| arm | lr | parameters (total) | non-embedding | d_ff | Δ vs reference | tokens/s |",
              "|---|---|---|---|---|---|---|"]
    for arm, e in report["arms"].items():
        p = e["parameters"]
        lines.append(f"| {arm} | {e['lr']:g} | {p['total']:,} | {p['non_embedding']:,} | {p['d_ff']} | "
                     f"{p['relative_to_reference']:+.2%} | {e['tokens_per_s']['mean']:,.0f} |")
    tuning = report.get("tuning")
    sweep_lrs = tuning["lrs"] if tuning else report["lrs"]
    if tuning or len(sweep_lrs) > 1:
        title = (f"## Learning-rate sweep: validation after {tuning['steps']} steps, seed {tuning['seed']}" if tuning
                 else "## Learning-rate sweep: mean best validation over seeds (full budget)")
        lines += ["", title, "", "| arm | " + " | ".join(f"lr {lr:g}" for lr in sweep_lrs) + " | chosen |",
                  "|---|" + "---|" * (len(sweep_lrs) + 1)]
        for arm, e in report["arms"].items():
            if tuning and arm not in tuning["validation"]:
                blank = " | ".join("" for _ in sweep_lrs)
                lines.append(f"| {arm} | {blank} | {e['lr']:g} ({e['full_arm']}'s) |")
                continue
            scores = tuning["validation"][arm] if tuning else e["lr_sweep"]
            cells = [f"**{fmt(scores[str(lr)])}**" if lr == e["lr"] else fmt(scores[str(lr)]) for lr in sweep_lrs]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {e['lr']:g} |")
    conv = report["baseline_convergence"]
    if conv["slope_per_1k_steps_mean"] is None:
        lines += ["", f"Baseline convergence: fewer than two validation evaluations in the last 20% of training "
                      f"(steps {conv['window'][0]}–{conv['window'][1]}); set train.eval_every <= steps / 10 to measure "
                      "the slope."]
    else:
        lines += ["", f"Baseline convergence: {conv['arm']}'s validation loss changes by "
                      f"{conv['slope_per_1k_steps_mean']:+.4g} per 1000 steps over steps {conv['window'][0]}–"
                      f"{conv['window'][1]} (fitted change over the window {conv['change_over_window_mean']:+.4g}; "
                      "mean over seeds)."]
    mark = "†" if screen_caveats(n) else ""
    for metric in report["metrics"]:
        lines += ["", f"## {metric}", "",
                  f"| arm | n | mean ± sd | median | Δ mean | Δ median | 95% CI (paired) | simultaneous 95% CI "
                  f"| p{mark} (paired) | p{mark} Holm | p{mark} (Welch) |", "|---" * 11 + "|"]
        for arm, e in report["arms"].items():
            s = e["metrics"].get(metric)
            if s is None:
                continue
            v = s.get("vs_baseline")
            if v is None:
                tail = "| (baseline) |" + " |" * 6 if arm == report["baseline"] else "|" + " |" * 7
            else:
                pv = v["paired"]
                tail = (f"| {fmt(v['mean_difference'])} | {fmt(pv['median_difference'])} | {fmt_ci(pv['ci'])} | "
                        f"{fmt_ci(pv['ci_simultaneous'])} | {fmt(pv['p'], 3)} | {fmt(pv['p_holm'], 3)} | "
                        f"{fmt(v['welch']['p'], 3)} |")
            lines.append(f"| {arm} | {s['n']} | {fmt(s['mean'])} ± {fmt(s['sd'], 2)} | {fmt(s['median'])} {tail}")
        if mark:
            lines += ["", f"† {screen_caveats(n)[-1]}."]
    ablations = [(arm, e) for arm, e in report["arms"].items() if "full_arm" in e]
    for metric in report["metrics"] if ablations else []:
        lines += ["", f"## Ablations: {metric}, Δ = ablation − its full arm (paired over the ablation's seeds; "
                      "Holm across ablations)", "",
                  "| ablation | full arm | n | Δ mean | Δ median | 95% CI (paired) | p (paired) | p Holm |",
                  "|---" * 8 + "|"]
        for arm, e in ablations:
            v = e["metrics"].get(metric, {}).get("vs_full")
            if v is not None:
                pv = v["paired"]
                lines.append(f"| {arm} | {e['full_arm']} | {v['n']} | {fmt(v['mean_difference'])} | "
                             f"{fmt(pv['median_difference'])} | {fmt_ci(pv['ci'])} | {fmt(pv['p'], 3)} | "
                             f"{fmt(pv['p_holm'], 3)} |")
    if report.get("copy_depth"):
        from lotsim.analysis.copy_depth import breakdown_markdown

        lines += ["", "## Copy depth: test loss by the longest earlier match the next token continues", "",
                  *breakdown_markdown(report["copy_depth"])]
    return "\n".join(lines) + "\n"


def fmt_ci(ci, digits: int = 4) -> str:
    return "–" if ci is None else f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def finite(obj):
    """NaN/inf -> None, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_comparison(report: dict[str, Any], path: str | Path) -> Path:
    """Per metric, two panels. Top: every seed's test value per arm, seed k at the same offset in
    every arm and joined across arms (the pairing), the arm's mean as a bar. Bottom: the paired
    difference to the baseline with its 95% CI (the number a verdict rests on) and zero marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    metrics = report["metrics"]
    seeds = report["seeds"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(3.8 * len(metrics), 6.4), constrained_layout=True,
                             squeeze=False, sharex="col", height_ratios=(3, 2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for column, metric in enumerate(metrics):
        top, bottom = axes[0, column], axes[1, column]
        present = [i for i, arm in enumerate(arms) if metric in report["arms"][arm]["metrics"]]
        grid = np.full((len(seeds), len(arms)), np.nan)  # [seed, arm]
        for i in present:
            s = report["arms"][arms[i]]["metrics"][metric]
            grid[: len(s["values"]), i] = s["values"]
            top.hlines(s["mean"], i - 0.25, i + 0.25, color="k", lw=1.5, zorder=3)
        for k in range(len(seeds)):  # seed k: the same offset in every arm, joined across arms
            x = np.arange(len(arms)) + offsets[k]
            top.plot(x, grid[k], "-", color="0.75", lw=0.8, zorder=1)
            top.scatter(x, grid[k], s=18, c=[colors[i % len(colors)] for i in range(len(arms))], zorder=2)
        top.set_ylabel(f"test {metric}")
        top.set_title(f"test {metric}", fontsize=9)
        paired = False
        for i, arm in enumerate(arms):
            v = report["arms"][arm]["metrics"].get(metric, {}).get("vs_baseline")
            if v is None:
                continue
            ci = v["paired"]["ci"]
            low, high = (ci if ci is not None else (v["mean_difference"], v["mean_difference"]))
            bottom.errorbar(i, v["mean_difference"], yerr=[[v["mean_difference"] - low], [high - v["mean_difference"]]],
                            fmt="o", color=colors[i % len(colors)], capsize=4)
            paired = True
        if paired:
            bottom.axhline(0.0, color="k", lw=0.8, ls="--")
        else:
            bottom.text(0.5, 0.5, f"{report['baseline']} has no {metric}", transform=bottom.transAxes,
                        ha="center", va="center", fontsize=8, color="0.4")
            bottom.set_yticks([])
        bottom.set_ylabel(f"Δ {metric} vs {report['baseline']}")
        bottom.set_xticks(range(len(arms)), arms, rotation=20, ha="right", fontsize=8)
        bottom.set_xlim(-0.6, len(arms) - 0.4)
    grade = "screen, " if report["grade"] == "screen" else ""
    fig.suptitle(f"{report['recipe']}: {grade}{len(seeds)} seeds, {report['steps']} steps. Top: each seed (dots; "
                 "the same seed joined across arms), arm mean (bar). Bottom: paired difference to "
                 f"{report['baseline']}, 95% CI", fontsize=9)
    path = Path(path)
    from lotsim.analysis.plots import provenance

    fig.savefig(path, dpi=120, metadata=provenance([path.parent / "report.json"], f"compare {report['recipe']}",
                                                   path.suffix.lstrip(".")))
    plt.close(fig)
    return path
