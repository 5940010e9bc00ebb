"""Recipes: TOML files validated by pydantic v2, with ``--set a.b=value`` overrides.

Every section mirrors a component (``[lattice]``, ``[frequencies]``, ``[initial]``, ``[dynamics]``,
``[output]``); unknown keys are errors that name the key and the allowed ones. Overrides are parsed
with TOML value syntax and applied to the raw dict *before* validation, so they get the same checks.
The resolved recipe (every default filled in) is written next to every output.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lotsim.lattice import FILE_TOPOLOGIES, Lattice, Topology, WeightKind, build_lattice, lattice_size
from lotsim.naming import RunName


class RecipeError(ValueError):
    """A recipe or override is invalid; the message is one line naming the key and what is allowed."""


class Section(BaseModel):
    """Base of every recipe section: strict keys, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationSection(Section):
    """Base of the simulation sections: numbers must also be finite (NaN/inf name their key)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_SEED = 2**63 - 1
"""Largest seed: seeds are stored as int64 (one per replica, ``seed + s``)."""
MAX_STEPS = 2**53
"""Most integration steps of one run: beyond 2**53 float64 no longer counts steps exactly."""
MAX_TWIST = 2**31 - 1
"""Largest winding number of a twisted state (beyond n/2 a q-twist on n nodes only aliases)."""
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class LatticeSection(SimulationSection):
    """Which graph the oscillators live on (see :func:`lotsim.lattice.build_lattice`)."""

    topology: Topology = "complete"
    n: Annotated[int, Field(ge=1)] | None = None
    shape: list[Annotated[int, Field(ge=1)]] | None = None
    periodic: bool = True
    weights: WeightKind = "uniform"
    lattice_constant: Annotated[float, Field(gt=0)] = 1.0
    exponent: float = 1.0
    coupling_range: Annotated[float, Field(gt=0)] | None = None
    k: Annotated[int, Field(ge=1)] = 4
    p: Annotated[float, Field(ge=0, le=1)] = 0.1
    degree: Annotated[int, Field(ge=1)] = 3
    file: str | None = None
    directed: bool = False
    seed: Seed | None = None

    @model_validator(mode="after")
    def _file_needs_file_topology(self):
        if self.file is not None and self.topology not in FILE_TOPOLOGIES:
            raise ValueError(f"lattice.file is given but lattice.topology is {self.topology!r}; the file is read "
                             f"only by {' or '.join(FILE_TOPOLOGIES)} (--topology edgelist)")
        return self

    def build_kwargs(self, default_seed: int) -> dict[str, Any]:
        """This section as :func:`lotsim.lattice.build_lattice` keywords (``seed`` falls back to the run's)."""
        kwargs = self.model_dump(exclude={"file", "seed"})
        return {**kwargs, "path": self.file, "seed": default_seed if self.seed is None else self.seed}

    def build(self, default_seed: int) -> Lattice:
        """The lattice this section describes."""
        return build_lattice(**self.build_kwargs(default_seed))

    def size(self) -> tuple[int, int] | None:
        """(nodes, directed edges) the lattice will have, estimated without building it (see
        :func:`lotsim.lattice.lattice_size`); None for graphs read from a file."""
        return lattice_size(**self.build_kwargs(0))


class FrequencySection(SimulationSection):
    """Natural frequencies: ``width`` is the std (gaussian), half-width gamma (lorentzian) or the
    half-range (uniform, on [mean - width, mean + width]). ``quantile`` sampling uses
    omega_j = F^-1((j - 1/2)/N), placed on nodes in a seeded random order."""

    dist: Literal["constant", "gaussian", "lorentzian", "uniform", "file"] = "lorentzian"
    mean: float = 0.0
    width: Annotated[float, Field(ge=0)] = 0.5
    sampling: Literal["random", "quantile"] = "quantile"
    file: str | None = None

    @model_validator(mode="after")
    def _file_and_dist(self):
        if self.dist == "file" and self.file is None:
            raise ValueError("frequencies.dist = 'file' needs frequencies.file (--freq-file)")
        if self.dist != "file" and self.file is not None:
            raise ValueError(f"frequencies.file is given but frequencies.dist is {self.dist!r}; set "
                             "frequencies.dist = 'file' (--freq-dist file) to use the file")
        return self


class InitialSection(SimulationSection):
    """Initial phases: random (uniform), sync (all zero), twisted (q-twist along the first axis),
    vortex (a +1 vortex at the centre of a 2-D grid) or file (.npy of shape (n,) or (replicas, n),
    or a lotsim .h5 run whose last state is continued)."""

    kind: Literal["random", "sync", "twisted", "vortex", "file"] = "random"
    twist: Annotated[int, Field(ge=-MAX_TWIST, le=MAX_TWIST)] = 1
    file: str | None = None

    @model_validator(mode="after")
    def _file_and_kind(self):
        if self.kind == "file" and self.file is None:
            raise ValueError("initial.kind = 'file' needs initial.file (.npy, .txt or a lotsim .h5 run)")
        if self.kind != "file" and self.file is not None:
            raise ValueError(f"initial.file is given but initial.kind is {self.kind!r}; set initial.kind = 'file' "
                             "(or --init FILE) to use the file")
        return self


CouplingSpec = float | list[float] | str
DEFAULT_T_MAX = 50.0


class DynamicsSection(SimulationSection):
    """The oscillator equations and their integration."""

    coupling: CouplingSpec = "0:3:13"
    normalization: Literal["mean-field", "degree", "none"] = "mean-field"
    harmonics: list[float] = [1.0]
    frustration: float | list[float] = 0.0
    noise: Annotated[float, Field(ge=0)] = 0.0
    inertia: Annotated[float, Field(ge=0)] = 0.0
    integrator: Literal["euler", "heun", "rk4", "dopri5", "dop853"] = "rk4"
    dt: Annotated[float, Field(gt=0)] = 0.05
    rtol: Annotated[float, Field(ge=0)] | None = None
    atol: Annotated[float, Field(ge=0)] | None = None
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    t_max: Annotated[float, Field(gt=0)] | None = None
    backend: Literal["auto", "torch", "numba", "cupy"] = "auto"
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float64"

    @field_validator("coupling", mode="before")
    @classmethod
    def _check_coupling(cls, value):
        coupling_count(value)  # checks the syntax and finiteness without building a long range
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value):
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"device {value!r} is not one of cpu, cuda, cuda:<index>")
        return value

    @field_validator("harmonics")
    @classmethod
    def _check_harmonics(cls, value):
        if not value:
            raise ValueError("harmonics needs at least one amplitude, e.g. [1.0]")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_duration(cls, data):
        if isinstance(data, dict) and data.get("steps") is None and data.get("t_max") is None:
            return {**data, "t_max": DEFAULT_T_MAX}
        return data

    @model_validator(mode="after")
    def _tolerances_need_adaptive(self):
        if (self.rtol is not None or self.atol is not None) and self.integrator not in ("dopri5", "dop853"):
            raise ValueError(f"dynamics.rtol/atol set the error control of integrators 'dopri5' and 'dop853', but "
                             f"the integrator is {self.integrator!r} (fixed step dt); set dynamics.integrator = "
                             f"\"dopri5\" or \"dop853\"")
        return self

    @model_validator(mode="after")
    def _one_duration(self):
        if self.steps is not None and self.t_max is not None:
            raise ValueError(f"give dynamics.steps ({self.steps}) or dynamics.t_max ({self.t_max}), not both")
        if self.t_max is not None and not self.t_max / self.dt <= MAX_STEPS:
            raise ValueError(f"dynamics.t_max / dynamics.dt = {self.t_max:g} / {self.dt:g} is "
                             f"{self.t_max / self.dt:.3g} steps; at most 2**53 are allowed")
        return self

    @property
    def n_steps(self) -> int:
        """Number of integration steps (``t_max / dt`` rounded to the nearest integer); the one place
        the step count is derived."""
        return self.steps if self.steps is not None else max(1, round(self.t_max / self.dt))


class OutputSection(SimulationSection):
    """Where and how results are stored."""

    dir: str = "outputs"
    save_every: Annotated[int, Field(ge=1)] = 10
    compression: Literal["lzf", "gzip", "none"] = "lzf"
    precision: Literal["same", "float32", "float64"] = "same"


class SimulationRecipe(SimulationSection):
    """A ``lotsim simulate`` recipe. ``replicas`` is the number of seeds per coupling: a run holds
    ``len(couplings) * replicas`` replicas, replica ``c * replicas + s`` having coupling ``c`` and
    seed ``seed + s`` (frequencies and initial phases depend on the seed only). File paths in a
    recipe file are relative to its folder. ``shard = "i/n"``
    keeps the i-th of n contiguous blocks of that replica grid, so a sweep can run as n jobs whose
    files together hold exactly the replicas of the full run."""

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value):
        if value is not None:
            parse_shard(value)
        return value

    name: RunName = "simulate"
    seed: Seed = 0
    replicas: Annotated[int, Field(ge=1)] = 1
    shard: str | None = None
    lattice: LatticeSection = LatticeSection(n=1000)
    frequencies: FrequencySection = FrequencySection()
    initial: InitialSection = InitialSection()
    dynamics: DynamicsSection = DynamicsSection()
    output: OutputSection = OutputSection()

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("lattice.file", "frequencies.file", "initial.file")

    @model_validator(mode="after")
    def _seeds_fit(self):
        if self.seed + self.replicas - 1 > MAX_SEED:
            raise ValueError(f"seed {self.seed} + replicas {self.replicas} exceeds the largest seed 2**63 - 1")
        return self

    @property
    def n_replicas(self) -> int:
        """Replicas of the whole run (``len(couplings) * replicas``, before sharding)."""
        return coupling_count(self.dynamics.coupling) * self.replicas

    @property
    def n_frames(self) -> int:
        """Frames a complete run stores: the initial state, every ``save_every``-th step and the last."""
        total, every = self.dynamics.n_steps, self.output.save_every
        return total // every + 1 + (1 if total % every else 0)


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"shard {spec!r} must look like i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])


_RANGE = re.compile(r"^\s*([-+0-9.eE]+|[-+]?inf|nan)\s*:\s*([-+0-9.eE]+|[-+]?inf|nan)\s*:\s*([0-9]+)\s*$", re.I)


def _coupling_spec(spec: CouplingSpec) -> list[float] | tuple[float, float, int]:
    """A list of values, or (start, stop, count) for a range; raises ValueError naming the bad value."""
    if isinstance(spec, bool):
        raise ValueError(f"coupling must be a number, a list or start:stop:count, got {spec!r}")
    if isinstance(spec, int | float):
        values = [float(spec)]
    elif isinstance(spec, list):
        if not spec:
            raise ValueError("coupling list is empty")
        try:
            values = [float(v) for v in spec]
        except (TypeError, ValueError):
            raise ValueError(f"coupling list {spec!r} holds something that is not a number") from None
    elif isinstance(spec, str):
        match = _RANGE.match(spec)
        if match:
            start, stop, count = float(match[1]), float(match[2]), int(match[3])
            if count < 1:
                raise ValueError(f"coupling range {spec!r} needs count >= 1")
            if not (math.isfinite(start) and math.isfinite(stop)):
                raise ValueError(f"coupling range {spec!r} must have finite ends (no NaN or inf)")
            return start, stop, count
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ValueError(f"coupling {spec!r} is not a number, a comma list or start:stop:count") from None
    else:
        raise ValueError(f"coupling must be a number, a list or start:stop:count, got {spec!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"coupling {spec!r} must be finite (no NaN or inf)")
    return values


def coupling_count(spec: CouplingSpec) -> int:
    """How many couplings ``spec`` holds, without building a range; raises ValueError if it is invalid."""
    parsed = _coupling_spec(spec)
    return parsed[2] if isinstance(parsed, tuple) else len(parsed)


def parse_couplings(spec: CouplingSpec) -> list[float]:
    """A coupling value, a list, or a range ``start:stop:count`` (inclusive, like numpy.linspace)."""
    parsed = _coupling_spec(spec)
    if not isinstance(parsed, tuple):
        return parsed
    start, stop, count = parsed
    if count == 1:
        return [start]
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


# --------------------------------------------------------------------------------------------------
# Loading, overriding and reporting errors

RecipeT = TypeVar("RecipeT", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value) with TOML value syntax (bare words become strings)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    path = [part.strip() for part in key.strip().split(".")]
    if not all(path):
        raise RecipeError(f"override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each ``a.b=value`` override set."""
    out = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file; a missing or malformed file is a :class:`RecipeError`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {err}") from None


def validate_recipe(model: type[RecipeT], data: dict) -> RecipeT:
    """Validate ``data`` against ``model``; errors become one-line :class:`RecipeError` messages."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, model)) from None


def load_recipe(model: type[RecipeT], path: str | Path | None = None, overrides: list[str] = (),
                updates: dict | None = None) -> RecipeT:
    """Load a recipe: TOML file (optional) -> ``updates`` (e.g. CLI flags) -> overrides -> validation."""
    data = read_toml(path) if path is not None else {}
    if path is not None:
        _resolve_paths(data, getattr(model, "PATH_KEYS", ()), Path(path).parent)
    for dotted, value in (updates or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_recipe(model, apply_overrides(data, list(overrides)))


def _resolve_paths(data: dict, keys: tuple[str, ...], base: Path) -> None:
    """Make relative file paths written in a recipe file relative to that file's folder."""
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str) and not Path(node[last]).is_absolute():
            node[last] = str(base / node[last])


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names of the (sub)model reached by following ``loc``; None if it is not a model."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _field_loc(model: type[BaseModel], loc: tuple) -> tuple[str, ...]:
    """The part of an error location that names recipe keys (list indices and union branches dropped)."""
    keys: list[str] = []
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            break
        keys.append(part)
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
    return tuple(keys)


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """The first error as one line: ``dynamics.dt: Input should be greater than 0 (got -1)``.

    Of the errors one key gets (one per branch of a union such as ``float | list[float]``), the one
    that reached deepest into the value is shown: it is the branch the user meant.
    """
    errors = err.errors()
    first = errors[0]
    if first["type"] == "extra_forbidden":
        loc = tuple(str(p) for p in first["loc"] if not isinstance(p, int))
        allowed = _fields_at(model, loc[:-1]) or []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{'.'.join(loc)}: unknown key{suggestion}; allowed: {', '.join(allowed)}"
    key = _field_loc(model, first["loc"])
    same_key = [e for e in errors if _field_loc(model, e["loc"]) == key]
    shown = max(same_key, key=lambda e: len(e["loc"]))
    message = shown["msg"].removeprefix("Value error, ")
    got = shown.get("input")
    value = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    more = len({_field_loc(model, e["loc"]) for e in errors}) - 1
    return f"{'.'.join(key) or 'recipe'}: {message}{value}{f' [+{more} more]' if more else ''}"


def recipe_to_dict(recipe: BaseModel) -> dict:
    """The resolved recipe as a nested dict of TOML values (None values omitted: TOML has no null)."""
    return _drop_none(recipe.model_dump(mode="json"))


def recipe_to_toml(recipe: BaseModel) -> str:
    """The resolved recipe as TOML text."""
    return tomli_w.dumps(recipe_to_dict(recipe))


def _drop_none(data):
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def recipe_keys(model: type[BaseModel]) -> list[tuple[str, Any, str]]:
    """Every key of a recipe as ``(dotted key, default, allowed values)``, for generated help.

    Defaults are those of ``model()`` (a section's own default may differ from its class's, e.g. the
    simulation's ``lattice.n = 1000``); ``allowed`` is the Literal choices or the type.
    """
    defaults = model().model_dump(mode="json")
    rows: list[tuple[str, Any, str]] = []

    def walk(cls: type[BaseModel], values: dict, prefix: str) -> None:
        for name, info in cls.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, values[name], f"{prefix}{name}.")
            else:
                rows.append((f"{prefix}{name}", values[name], _describe_type(annotation)))

    walk(model, defaults, "")
    return rows


def _describe_type(annotation: Any) -> str:
    """``Literal["a", "b"]`` -> ``a|b``; ``int | None`` -> ``int``; others by name."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is Annotated:
        return _describe_type(args[0])
    if args:
        parts = [_describe_type(a) for a in args if a is not type(None)]
        if origin is list:
            return f"list[{', '.join(parts)}]"
        return " | ".join(parts)
    return getattr(annotation, "__name__", str(annotation))
