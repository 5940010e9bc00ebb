"""Training recipes: ``[task] [model] [train] [output]`` plus ``name`` and ``seed``.

Validated by pydantic v2 with the project's recipe machinery (:mod:`lotsim.config`): unknown keys
are one-line errors naming the key and the allowed ones, ``--set a.b=value`` overrides are applied
before validation. ``[task]`` is dispatched on ``kind`` to the task's own options model
(:data:`lotsim.tasks.TASK_OPTIONS`); ``[model]`` is the model's :class:`~lotsim.model.ModelConfig`,
whose ``vocab_size`` and ``seq_len`` are derived from the task when not given (one place for derived
values). ``TrainingRecipe()`` is the embedded default: copy-reverse with lattice attention, the
same as ``recipes/copy_reverse_lattice.toml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from lotsim.config import RecipeError, Section, format_validation_error, load_recipe, recipe_to_toml, validate_recipe
from lotsim.model import ModelConfig
from lotsim.tasks import TASK_OPTIONS, CopyReverseOptions, task_shape

DEFAULT_MODEL: dict[str, Any] = {
    "d_model": 64, "n_layers": 2, "n_heads": 4, "attention": "lattice",
}


class TrainSection(Section):
    """The optimisation schedule, evaluation cadence and logging.

    Attributes:
        steps: optimiser steps (the schedule's length).
        batch_size: sequences per micro-batch and process (tokens per step = batch_size x seq_len x
            grad_accum x processes).
        grad_accum: micro-batches accumulated per optimiser step.
        lr: peak learning rate (AdamW).
        min_lr_ratio: the cosine schedule decays to lr x min_lr_ratio.
        warmup_steps: linear warm-up from 0.
        schedule: ``cosine`` (after warm-up) or ``constant``.
        weight_decay: decoupled weight decay, applied to weight matrices only (never to norms,
            embeddings or the per-head oscillator scalars).
        betas: AdamW betas.
        grad_clip: max global gradient norm (0: no clipping).
        regularization: weight of each regulariser the model reports by name (e.g. ``sync``,
            ``diversity`` of the lattice attention); 0 or absent: not applied.
        freeze: parameter-name patterns (fnmatch) held at their initial values (ablations).
        eval_every: evaluate on the validation split every N steps (and at the end).
        eval_batches: validation batches per evaluation (fixed: the same sequences every time).
        eval_batch_size: held-out batch size (default batch_size).
        test_batches: test batches of the final evaluation (None: the whole split where it is
            finite, else 32).
        log_every: write a training line to metrics.jsonl every N steps.
        checkpoint_every: save ``last`` every N steps (default eval_every).
        best_metric: validation metric that picks the ``best`` checkpoint (``loss``/``bpc`` lower
            is better, anything else higher).
        telemetry_every: write phase telemetry every N steps (0: never).
        telemetry_sequences: validation sequences in the fixed telemetry probe batch.
        device: ``auto`` (cuda if present), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (bf16 autocast on a bf16-capable GPU, float32 otherwise), ``fp32``, ``bf16``
            (GPU only).
        threads: torch CPU threads per process (0: torch's default). 1 by default: small models run
            about as fast on one thread, and several threads slow down badly on a busy machine.
        stop_at: stop after this step as if interrupted (resumable; the schedule still spans ``steps``).
        compile: run the training forward and backward through ``torch.compile`` (evaluation stays
            eager). On a CPU it costs a one-off compilation (85 s of wall time for the baby-GPT
            shape on a loaded 2-core machine; cached on disk for later runs; needs a C++ compiler)
            and then saves about a sixth of each step, so it pays for runs of a few thousand steps;
            see docs/performance.md.
    """

    steps: Annotated[int, Field(ge=1)] = 1500
    batch_size: Annotated[int, Field(ge=1)] = 64
    grad_accum: Annotated[int, Field(ge=1)] = 1
    lr: Annotated[float, Field(gt=0)] = 3e-3
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    regularization: dict[str, Annotated[float, Field(ge=0)]] = {}
    freeze: list[str] = []
    eval_every: Annotated[int, Field(ge=1)] = 250
    eval_batches: Annotated[int, Field(ge=1)] = 8
    eval_batch_size: Annotated[int, Field(ge=1)] | None = None
    test_batches: Annotated[int, Field(ge=1)] | None = None
    log_every: Annotated[int, Field(ge=1)] = 25
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
    best_metric: str = "loss"
    telemetry_every: Annotated[int, Field(ge=0)] = 100
    telemetry_sequences: Annotated[int, Field(ge=1)] = 4
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: Annotated[int, Field(ge=0)] = 1
    stop_at: Annotated[int, Field(ge=0)] | None = None
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda") and value != "mps":
            raise ValueError(f"device {value!r} is not allowed; use auto, cpu, cuda or cuda:<i>")
        return value

    @property
    def held_out_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    @property
    def lower_is_better(self) -> bool:
        """Whether a smaller ``best_metric`` is better."""
        return self.best_metric in ("loss", "bpc", "perplexity")


class OutputSection(Section):
    """Where the run folder goes: ``<dir>/<recipe name>/<run or a timestamp>/``.

    Attributes:
        dir: the outputs root.
        run: the run folder's name (default: a timestamp).
        tensorboard: also write TensorBoard event files under ``tb/`` (if tensorboard is installed).
    """

    dir: str = "outputs"
    run: str | None = None
    tensorboard: bool = True


def _task_options(value: Any):
    """Dispatch a raw ``[task]`` table to its options model on ``kind`` (``target`` implies custom)."""
    if not isinstance(value, dict):
        return value
    kind = value.get("kind", "custom" if "target" in value else "copy_reverse")
    if kind not in TASK_OPTIONS:
        raise ValueError(f"kind {kind!r} is not a task; allowed: {', '.join(TASK_OPTIONS)}")
    options_cls = TASK_OPTIONS[kind]
    try:
        return options_cls.model_validate({**value, "kind": kind})
    except ValidationError as err:
        raise ValueError(format_validation_error(err, options_cls)) from None


class TrainingRecipe(Section):
    """A ``lotsim train`` recipe (see the module docstring and ``docs/training.md``). Relative file
    paths written in a recipe file are relative to that file's folder (``--set`` values and the
    embedded default: to the working directory)."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("task.path", "model.attention_options.file")

    name: str = "copy_reverse_lattice"
    seed: int = 0
    task: SerializeAsAny[Section] = CopyReverseOptions()
    model: ModelConfig
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        # [model] keys left out take the training defaults (a small lattice model)
        if isinstance(data, dict) and isinstance(data.get("model", {}), dict):
            data = {**data, "model": {**DEFAULT_MODEL, **data.get("model", {})}}
        return data

    @field_validator("task", mode="before")
    @classmethod
    def _dispatch_task(cls, value: Any) -> Any:
        return _task_options(value)

    @field_validator("model", mode="before")
    @classmethod
    def _derive_model_shape(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if not isinstance(value, dict):
            return value
        if task is None:  # [task] is invalid and reported; keep the model's own errors apart
            return {"vocab_size": 1, "seq_len": 1, **value}
        vocab, seq_len = task_shape(task)
        given = {"vocab_size": value.get("vocab_size"), "seq_len": value.get("seq_len")}
        for key, need in (("vocab_size", vocab), ("seq_len", seq_len)):
            if isinstance(given[key], int) and given[key] < need:
                raise ValueError(f"{key}={given[key]} is smaller than the task needs ({need}); leave it out "
                                 f"to derive it from the task")
        return {**value, "vocab_size": given["vocab_size"] or vocab, "seq_len": given["seq_len"] or seq_len}


def load_training_recipe(path: str | Path | None = None, overrides: list[str] = (),
                         updates: dict | None = None) -> TrainingRecipe:
    """TOML file (optional: the embedded default otherwise) -> updates -> ``--set`` overrides -> validation.

    Raises:
        RecipeError: one line naming the key and what is allowed.
    """
    return load_recipe(TrainingRecipe, path, list(overrides), updates)


def recipe_from_toml(text: str, overrides: list[str] = ()) -> TrainingRecipe:
    """A recipe from TOML text (e.g. the one stored in a checkpoint), with optional overrides."""
    import tomllib

    from lotsim.config import apply_overrides

    return validate_recipe(TrainingRecipe, apply_overrides(tomllib.loads(text), list(overrides)))


__all__ = [
    "DEFAULT_MODEL",
    "OutputSection",
    "RecipeError",
    "TrainSection",
    "TrainingRecipe",
    "load_training_recipe",
    "recipe_from_toml",
    "recipe_to_toml",
]
