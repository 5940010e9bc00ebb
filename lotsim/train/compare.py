"""Multi-seed comparison of attention arms at matched parameters, with statistics.

Protocol (the fairness rules of the attention design):

* every arm is the same recipe with a different ``model.attention`` (plus, for ablation arms, an
  option/freeze change); each arm's SwiGLU width is sized so its total parameter count matches the
  reference arm's (:func:`lotsim.model.match_parameters`, within 2%); total and non-embedding
  counts are reported;
* every arm trains with the same seeds (model init), the same data order (batches are addressed by
  index from ``task.seed``), the same steps, batch and schedule;
* learning rates: with ``tune`` each arm first runs every rate of the sweep (default
  :data:`TUNE_LRS`) on the first seed for a short budget, scored on VALIDATION only (the test split
  is never evaluated), and the full runs use each arm's best rate; without it every arm runs every
  rate of ``lrs`` at every seed and its rate is chosen on the mean validation ``best_metric``;
* each full run is scored on the TEST split with its best-on-validation checkpoint;
* per arm and metric: mean ± sd, median, n; versus the baseline: the mean and median paired
  difference, its 95% CI (paired t: seed i of every arm shares data and RNG seed) and the
  simultaneous Bonferroni interval over the arms, p from the paired t-test with its Holm
  adjustment across arms, and Welch's p, as SciPy computes them; fewer than :data:`SCREEN_SEEDS`
  seeds make the report a *screen* with caveats; the baseline's validation-loss slope over the last
  20% of training says whether it has flattened.

Arms are written ``ATTENTION`` or ``ATTENTION:ABLATION``; each variant declares its ablations
(``Attention.ablations``: options and frozen parameters), e.g. lattice's ``no-oscillator`` (gain
a_h = 0 and frozen: the phase term is exactly off, the parameters stay), ``frozen-phases`` and
``no-coupling``. ``sync_order`` is reported only for arms whose phases act.

Full runs land in ``<out>/runs/<arm>/lr<lr>/seed<s>``, tuning runs in
``<out>/tune/steps<n>/<arm>/lr<lr>/seed<s>``; a finished run (``metrics.json`` / ``tuning.json``
present) is reused and an interrupted one resumed, so rerunning an interrupted comparison continues
it. The report is ``report.json``, ``report.md`` and ``comparison.png`` in ``<out>``.
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


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: an attention variant, optionally ablated."""

    name: str
    attention: str
    ablation: str | None = None  # an ablation or a reading (a preset of the variant)

    @property
    def is_ablation(self) -> bool:
        """An ablation switches a mechanism off (a reading is another version of the whole variant)."""
        from lotsim.model import get_attention

        return self.ablation is not None and self.ablation in get_attention(self.attention).ablations


def ablation_parents(arms: list[Arm]) -> dict[str, str]:
    """Ablation arm -> the full arm it ablates: the first arm of the same attention that is not an
    ablation (``torus`` or a reading such as ``torus:qk-mean``); ablations with no such arm are absent."""
    parents = {}
    for arm in arms:
        if arm.is_ablation:
            parent = next((a.name for a in arms if a.attention == arm.attention and not a.is_ablation), None)
            if parent is not None:
                parents[arm.name] = parent
    return parents


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


TUNE_LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # --tune's default sweep: 4 log-spaced rates (half a decade apart)
TUNE_FRACTION = 4  # --tune's default budget: steps // TUNE_FRACTION per sweep run
SCREEN_SEEDS = 5  # fewer seeds than this: the report is a screen, not a verdict
SILENT_PHASE_ABLATIONS = {"no-oscillator"}  # ablations whose phase term is exactly off (registry contract)


def _lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


@dataclass(frozen=True)
class _Run:
    """One training of a comparison: which arm, rate and seed, where, with which recipe, and whether
    it is a tuning run (short budget, validation only: the test split is never evaluated)."""

    arm: str
    lr: float
    seed: int
    run_dir: Path
    recipe: TrainingRecipe
    tuning: bool = False

    @property
    def done(self) -> Path:
        """The file a finished run leaves: ``metrics.json`` (test) or ``tuning.json`` (validation)."""
        return self.run_dir / ("tuning.json" if self.tuning else "metrics.json")


def tuning_recipe(recipe: TrainingRecipe, steps: int) -> TrainingRecipe:
    """A recipe's short-budget copy for the learning-rate sweep: ``steps`` steps with the warm-up
    scaled by the same factor (the schedule keeps its shape) and ``eval_every`` capped at the budget."""
    full = recipe.train
    warmup = round(full.warmup_steps * steps / full.steps)
    train = full.model_copy(update={"steps": steps, "warmup_steps": warmup, "eval_every": min(full.eval_every, steps)})
    return recipe.model_copy(update={"train": train})


def choose_lr(runs_by_lr: dict[float, list[dict]], lower_is_better: bool) -> float:
    """The rate whose runs have the best mean VALIDATION ``best_metric`` (ties: the first listed; a
    rate with a diverged run, NaN or missing score, ranks last)."""
    def score(lr: float) -> float:
        values = [r["validation_best"] for r in runs_by_lr[lr]]
        if any(v is None or not math.isfinite(v) for v in values):
            return math.inf
        return statistics.fmean(values) if lower_is_better else -statistics.fmean(values)

    return min(runs_by_lr, key=score)


def run_comparison(base: TrainingRecipe, arms: list[Arm], seeds: list[int], out_dir: str | Path, *,
                   lrs: list[float] | None = None, tune: bool = False, tune_steps: int | None = None,
                   baseline: str | None = None, reference: str | None = None,
                   callback: Callable[[dict], None] | None = None, plot: bool = True, jobs: int = 1,
                   copy_depth: bool = False, ablation_seeds: int | None = None) -> dict[str, Any]:
    """Train every arm x lr x seed (or tune each arm's lr first), compare test metrics.

    Args:
        base: the recipe every arm starts from.
        arms: from :func:`parse_arms`.
        seeds: model-init seeds (shared by every arm: the tests are paired).
        out_dir: the comparison folder.
        lrs: learning rates swept for EVERY arm (default: the recipe's; with ``tune``: :data:`TUNE_LRS`).
        tune: the tuning protocol: each arm first runs every rate of ``lrs`` on the first seed for
            ``tune_steps`` steps, scored on VALIDATION (the test split is not evaluated); the full runs
            (every seed, the full budget) then use each arm's best rate. An ablation arm whose full arm
            is in the comparison (:func:`ablation_parents`) is not tuned: it runs at its full arm's
            rate, so it measures what switching the mechanism off costs at that setting. Without ``tune`` every arm
            runs every rate at every seed and full budget, and the rate is chosen on the mean
            validation score over seeds.
        tune_steps: steps of a tuning run (default ``steps // 4``, at least 1).
        baseline: the arm differences are taken against (default ``vanilla`` if present, else the first).
        reference: the arm whose parameter count the others match (default ``lattice`` if present).
        callback: receives ``{"event": "run", ...}`` before each run and ``"run_done"`` after (both
            with ``"phase": "tune" | "full"``), plus the training events of the run (``"train"``
            wrapping them; only with ``jobs=1``).
        plot: write ``comparison.png``.
        jobs: trainings run at once, each in its own process (spawned). A recipe asking for torch's
            default thread count (``train.threads = 0``) gets ``max(1, cores // jobs)`` threads so the
            processes do not oversubscribe the cores. Results do not depend on ``jobs`` when the thread
            count does not change; tokens/s measured side by side are not comparable across runs.
        copy_depth: add each arm's copy-depth breakdown of the test loss (mean over seeds) to the report
            (and ``copy_depth.png`` with ``plot``).
        ablation_seeds: ablation arms run only the first this many seeds (default: all); their
            differences to the baseline and to their full arm are paired over those seeds.

    Returns:
        The report (also written to ``report.json`` / ``report.md``).
    """
    out_dir = Path(out_dir)
    lrs = list(lrs) if lrs else (list(TUNE_LRS) if tune else [base.train.lr])
    if tune_steps is None:
        tune_steps = max(1, base.train.steps // TUNE_FRACTION)
    if tune and not 1 <= tune_steps <= base.train.steps:
        raise ValueError(f"tune_steps={tune_steps} must be between 1 and the full budget of {base.train.steps} steps")
    names = [a.name for a in arms]
    baseline = baseline or ("vanilla" if "vanilla" in names else names[0])
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the arms: {', '.join(names)}")
    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be >= 1")
    if ablation_seeds is not None and not 1 <= ablation_seeds <= len(seeds):
        raise ValueError(f"ablation_seeds={ablation_seeds} must be between 1 and the {len(seeds)} seeds")
    recipes, params = arm_recipes(base, arms, reference)
    parents = ablation_parents(arms)
    arm_seeds = {a.name: seeds[:ablation_seeds] if a.is_ablation and ablation_seeds else seeds for a in arms}
    emit = callback or (lambda event: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored, text = out_dir / "recipe.base.toml", recipe_to_toml(base)
    if stored.is_file() and stored.read_text() != text:
        raise ValueError(f"{str(out_dir)!r} holds a comparison of another recipe; choose another output folder")
    stored.write_text(text)

    def plan(arm: str, lr: float, seed: int, tuning: bool) -> _Run:
        recipe = tuning_recipe(recipes[arm], tune_steps) if tuning else recipes[arm]
        train_cfg = recipe.train.model_copy(update={"lr": lr})
        if jobs > 1 and train_cfg.threads == 0:
            train_cfg = train_cfg.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // jobs)})
        folder = out_dir / (f"tune/steps{tune_steps}" if tuning else "runs") / arm / _lr_tag(lr) / f"seed{seed}"
        return _Run(arm, lr, seed, folder, recipe.model_copy(update={"seed": seed, "train": train_cfg}), tuning)

    tuning = None
    if tune:
        tuned = [arm for arm in names if arm not in parents]
        sweep = _execute([plan(arm, lr, seeds[0], True) for arm in tuned for lr in lrs], jobs, emit)
        table = {arm: {lr: [sweep[(arm, lr, seeds[0])]] for lr in lrs} for arm in tuned}
        chosen = {arm: choose_lr(table[arm], base.train.lower_is_better) for arm in tuned}
        chosen.update({arm: chosen[parent] for arm, parent in parents.items()})
        tuning = {"seed": seeds[0], "steps": tune_steps, "lrs": lrs, "chosen": chosen, "inherited": parents,
                  "validation": {arm: {str(lr): table[arm][lr][0]["validation_best"] for lr in lrs} for arm in tuned},
                  "runs": {arm: {str(lr): table[arm][lr][0]["run_dir"] for lr in lrs} for arm in tuned}}
        full_lrs = {arm: [chosen[arm]] for arm in names}
    else:
        full_lrs = {arm: lrs for arm in names}
    records = _execute([plan(arm, lr, seed, False) for arm in names for lr in full_lrs[arm] for seed in arm_seeds[arm]],
                       jobs, emit)
    runs = {arm: {lr: [records[(arm, lr, seed)] for seed in arm_seeds[arm]] for lr in full_lrs[arm]} for arm in names}
    if not tune:
        chosen = {arm: choose_lr(runs[arm], base.train.lower_is_better) for arm in names}
    report = build_report(base, runs, chosen, params, baseline, seeds, lrs, tuning=tuning, parents=parents)
    if copy_depth:
        report["copy_depth"] = _copy_depth_of(report)
    (out_dir / "report.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (out_dir / "report.md").write_text(report_markdown(report))
    if plot:
        report["plot"] = str(plot_comparison(report, out_dir / "comparison.png"))
        if copy_depth:
            from lotsim.analysis.copy_depth import plot_copy_depth

            report["copy_depth_plot"] = str(plot_copy_depth(report["copy_depth"], out_dir / "copy_depth.png"))
    return report


def _execute(planned: list[_Run], jobs: int, emit: Callable[[dict], None]) -> dict[tuple[str, float, int], dict]:
    """Train what is not finished yet (reusing finished runs, resuming stopped ones); each run's record."""
    total = len(planned)
    records: dict[tuple[str, float, int], dict] = {}
    done = 0

    def describe_run(run: _Run) -> dict:
        return {"arm": run.arm, "lr": run.lr, "seed": run.seed, "phase": "tune" if run.tuning else "full",
                "total": total}

    def started(run: _Run) -> None:
        emit({"event": "run", **describe_run(run), "index": done, "run_dir": str(run.run_dir)})

    def finished(run: _Run) -> None:
        nonlocal done
        record = records[(run.arm, run.lr, run.seed)] = _run_record(run)
        done += 1
        emit({"event": "run_done", **describe_run(run), "index": done, "test": record["test"],
              "validation_best": record["validation_best"]})

    pending = []
    for run in planned:
        if run.done.is_file():  # a finished run is reused
            started(run)
            finished(run)
        else:
            pending.append(run)
    if jobs == 1:
        for run in pending:
            started(run)
            _train_run(run.recipe, run.run_dir, run.tuning, callback=lambda e: emit({"event": "train", "train": e}))
            finished(run)
    elif pending:
        _train_in_pool(pending, jobs, started, finished)
    return records


def _train_run(recipe: TrainingRecipe, run_dir: Path, tuning: bool = False,
               callback: Callable[[dict], None] | None = None) -> None:
    """Train one run of a comparison; a run stopped half-way (``last.pt`` present) is resumed.

    A tuning run is never evaluated on the test split; it leaves ``tuning.json`` with its best
    validation score instead of ``metrics.json``.
    """
    from lotsim.train.loop import train

    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    result = train(recipe, run_dir, resume=resume, callback=callback, evaluate_test=not tuning)
    if tuning and result.finished:
        (run_dir / "tuning.json").write_text(json.dumps(
            {"split": "validation", "best": result.best, "validation": result.validation, "steps": result.step,
             "tokens_per_s": result.tokens_per_s}, indent=2, default=str) + "\n")


def _train_in_pool(pending: list[_Run], jobs: int, started: Callable, finished: Callable) -> None:
    """Run ``pending`` trainings ``jobs`` at a time in spawned processes, reporting each as it ends.

    On Ctrl-C every worker saves its checkpoint (they receive the signal too) before this re-raises,
    so rerunning the comparison resumes them. A SIGTERM sent to this process alone (``kill PID``, a
    scheduler) is passed on to the workers, which checkpoint the same way: none outlives the comparison.
    """
    import multiprocessing
    import signal
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from lotsim.interrupts import handle_signals

    terminated = []

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    with (ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool,
          handle_signals(on_sigterm, (signal.SIGTERM,))):
        futures = {}
        for run in pending:
            started(run)
            futures[pool.submit(_train_run, run.recipe, run.run_dir, run.tuning)] = run
        try:
            remaining = set(futures)
            while remaining:
                complete, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in complete:
                    future.result()  # re-raises a worker's error (TrainingInterrupted included)
                    finished(futures[future])
        except BaseException:
            if terminated:  # only this process got the signal: each worker checkpoints on its own SIGTERM
                for child in multiprocessing.active_children():
                    child.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _run_record(run: _Run) -> dict[str, Any]:
    record = json.loads(run.done.read_text())
    test = {} if run.tuning else _metrics_of(record)
    return {"seed": run.seed, "run_dir": str(run.run_dir), "test": test,
            "validation_best": record["best"]["value"], "tokens_per_s": record["tokens_per_s"]}


def _metrics_of(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_METRICS}


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
        "baseline": baseline, "grade": "screen" if n < SCREEN_SEEDS else "verdict", "caveats": _caveats(n),
        "selection": (f"lr per arm by validation {base.train.best_metric} of a {tuning['steps']}-step sweep on seed "
                      f"{tuning['seed']}" if tuning else
                      f"lr per arm by mean validation {base.train.best_metric} over seeds"),
        "evaluation": "test split, best-on-validation checkpoint", "metrics": metric_names, "arms": {},
        "corpus": _corpus_of(base),
    }
    if tuning:
        report["tuning"] = tuning
    if len(lrs) > 1:  # a best rate on the sweep's edge may not be the arm's best: say so
        edges = [f"{arm}'s best rate {chosen[arm]:g} is the sweep's "
                 f"{'smallest' if chosen[arm] == min(lrs) else 'largest'}"
                 for arm in arms if chosen[arm] in (min(lrs), max(lrs))]
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


def _caveats(n: int) -> list[str]:
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


def _corpus_of(base: TrainingRecipe) -> dict | None:
    """The resolved text corpus (path, files, size, hash) of a text task, else None."""
    if base.task.kind != "char_lm":
        return None
    from lotsim.tasks.text import describe_corpus

    return describe_corpus(base.task.path, getattr(base.task, "glob", None))


def _copy_depth_of(report: dict[str, Any]) -> dict[str, Any]:
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
            cached.write_text(json.dumps(_finite(breakdown), indent=2) + "\n")
            per_seed.append(breakdown)
        out[arm] = combine_breakdowns(per_seed)
    return out


def _fmt(x, digits=4) -> str:
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
            cells = [f"**{_fmt(scores[str(lr)])}**" if lr == e["lr"] else _fmt(scores[str(lr)]) for lr in sweep_lrs]
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
    mark = "†" if _caveats(n) else ""
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
                tail = (f"| {_fmt(v['mean_difference'])} | {_fmt(pv['median_difference'])} | {_ci(pv['ci'])} | "
                        f"{_ci(pv['ci_simultaneous'])} | {_fmt(pv['p'], 3)} | {_fmt(pv['p_holm'], 3)} | "
                        f"{_fmt(v['welch']['p'], 3)} |")
            lines.append(f"| {arm} | {s['n']} | {_fmt(s['mean'])} ± {_fmt(s['sd'], 2)} | {_fmt(s['median'])} {tail}")
        if mark:
            lines += ["", f"† {_caveats(n)[-1]}."]
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
                lines.append(f"| {arm} | {e['full_arm']} | {v['n']} | {_fmt(v['mean_difference'])} | "
                             f"{_fmt(pv['median_difference'])} | {_ci(pv['ci'])} | {_fmt(pv['p'], 3)} | "
                             f"{_fmt(pv['p_holm'], 3)} |")
    if report.get("copy_depth"):
        from lotsim.analysis.copy_depth import breakdown_markdown

        lines += ["", "## Copy depth: test loss by the longest earlier match the next token continues", "",
                  *breakdown_markdown(report["copy_depth"])]
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
