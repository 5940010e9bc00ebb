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
  adjustment across arms, and Welch's p, as SciPy computes them (:mod:`lotsim.train.compare_report`);
  fewer than 5 seeds make the report a *screen* with caveats; the baseline's validation-loss slope
  over the last 20% of training says whether it has flattened.

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

from lotsim.train.compare_report import build_report, copy_depth_of, finite, plot_comparison, report_markdown
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
        report["copy_depth"] = copy_depth_of(report)
    (out_dir / "report.json").write_text(json.dumps(finite(report), indent=2) + "\n")
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
