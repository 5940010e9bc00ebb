"""The Python API for notebooks and scripts: run a simulation in memory, load a run, load a model.

Everything here is a thin layer over what the command line uses, so a notebook and ``lotsim
simulate`` give the same numbers for the same recipe:

* :func:`simulate` validates keyword arguments into the same
  :class:`~lotsim.config.SimulationRecipe` as ``lotsim simulate`` and runs the same driver
  (:func:`lotsim.simulation.run_simulation`); without ``out`` the H5MD file goes to a temporary folder
  that is deleted once the arrays are in memory.
* :func:`load_run` reads any ``lotsim simulate`` file (or a run folder holding one) into a
  :class:`Run`: plain numpy arrays, and an xarray Dataset with :meth:`Run.to_xarray`.
* :func:`load_model` reads a ``lotsim train`` checkpoint (a file or a run folder) into a
  :class:`TrainedModel`: the eval-mode model, its vocabulary, ``encode``/``decode`` and text
  generation (``lotsim generate``).

The analysis functions work on the arrays directly: :mod:`lotsim.observables` (order parameters,
effective frequencies, locked clusters, winding numbers, ...) takes phases with the node axis last.

Legend: ``f`` frames, ``r`` replicas (couplings x seeds), ``n`` nodes, ``e`` edges, ``t`` tokens.
"""

from __future__ import annotations

import difflib
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray

    from lotsim.config import SimulationRecipe
    from lotsim.model import LOTModel

__all__ = ["Run", "TrainedModel", "load_model", "load_run", "simulate"]


# -------------------------------------------------------------------------------------------------
# Simulations


@dataclass
class Run:
    """A simulation's trajectory in memory (see :func:`simulate` and :func:`load_run`).

    Attributes:
        theta: Phases [f, r, n] (unwrapped when ``unwrapped``; the node axis last, as
            :mod:`lotsim.observables` expects).
        times: [f] times; steps: [f] integration steps.
        coupling: [r] coupling K of each replica; seed: [r] its seed.
        omega: [r, n] natural frequencies (None if the file has none).
        r, psi: [f, r] Kuramoto order parameter r_1 and mean phase psi_1 of each frame.
        positions: [n, d] node positions (None for graphs without geometry).
        edges: [e, 2] (sender j, receiver i) pairs; weights: [e] A_ij, or None when uniform or not
            stored (the complete graph keeps its edges implicit).
        recipe: The validated recipe that made the run (None if the file stores none).
        path: The H5MD file, or None when it was a temporary file (already deleted).
        unwrapped: Phases are stored unwrapped (exact effective frequencies).
        warnings: One-line notes (partial file, wrapped phases).
    """

    theta: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    coupling: np.ndarray
    seed: np.ndarray
    omega: np.ndarray | None
    r: np.ndarray
    psi: np.ndarray
    positions: np.ndarray | None
    edges: np.ndarray
    weights: np.ndarray | None
    recipe: SimulationRecipe | None
    path: Path | None
    unwrapped: bool = True
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        f, r, n = self.theta.shape
        return (f"Run({f} frames x {r} replicas x {n} nodes, t = {self.times[0]:g}..{self.times[-1]:g}, "
                f"K = {np.unique(self.coupling).tolist()}, path={None if self.path is None else str(self.path)!r})")

    def to_xarray(self) -> xarray.Dataset:
        """The run as an ``xarray.Dataset`` with named dimensions ``time``, ``replica``, ``node``.

        Variables: ``theta`` (time, replica, node), ``r`` and ``psi`` (time, replica), ``omega``
        (replica, node) when stored; coordinates ``time``, ``step``, ``coupling`` and ``seed`` (per
        replica); the resolved recipe (TOML text) in ``attrs["recipe_toml"]``.

        Raises:
            ImportError: xarray is not installed (``pip install xarray``).
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("Run.to_xarray needs xarray: pip install xarray") from None
        from lotsim.config import recipe_to_toml

        data = {"theta": (("time", "replica", "node"), self.theta), "r": (("time", "replica"), self.r),
                "psi": (("time", "replica"), self.psi)}
        if self.omega is not None:
            data["omega"] = (("replica", "node"), self.omega)
        coords = {"time": self.times, "step": ("time", self.steps), "coupling": ("replica", self.coupling),
                  "seed": ("replica", self.seed), "node": np.arange(self.theta.shape[2]),
                  "replica": np.arange(self.theta.shape[1])}
        attrs = {"unwrapped": int(self.unwrapped)}
        if self.recipe is not None:
            attrs["recipe_toml"] = recipe_to_toml(self.recipe)
        dataset = xr.Dataset(data, coords=coords, attrs=attrs)
        dataset["theta"].attrs.update(long_name="phase", units="rad")
        dataset["time"].attrs.update(long_name="time")
        return dataset


def _sections() -> dict[str, type]:
    """The recipe's sections: ``{name: section model}`` (``lattice``, ``dynamics``, ...)."""
    from pydantic import BaseModel

    from lotsim.config import SimulationRecipe

    return {name: info.annotation for name, info in SimulationRecipe.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}


def recipe_keys() -> dict[str, str]:
    """Keyword names :func:`simulate` accepts for single recipe keys -> their dotted recipe key.

    Top-level keys keep their name (``seed``, ``replicas``, ``name``, ``shard``); a key of a section
    is accepted by its own name when no other section uses that name (``topology``, ``coupling``,
    ``t_max``, ``dist``, ...). Keys that several sections share (``file``) are given as a section
    dict (``initial={"kind": "file", "file": "x.npy"}``) or as an override (``"initial.file=x.npy"``).
    """
    from lotsim.config import SimulationRecipe

    sections = _sections()
    top = {name: name for name in SimulationRecipe.model_fields if name not in sections}
    seen: dict[str, list[str]] = {}
    for name, model in sections.items():
        for key in model.model_fields:
            seen.setdefault(key, []).append(f"{name}.{key}")
    unique = {key: paths[0] for key, paths in seen.items() if len(paths) == 1 and key not in top}
    return {**top, **unique}


def _updates(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`simulate` -> ``{dotted key: value}`` updates of the recipe dict."""
    from lotsim.config import RecipeError

    sections = _sections()
    flat = recipe_keys()
    updates: dict[str, Any] = {}
    for key, value in keys.items():
        if key in sections:
            if not isinstance(value, Mapping):
                raise RecipeError(f"{key}= must be a dict of [{key}] keys, got {type(value).__name__}")
            updates.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in flat:
            updates[flat[key]] = value
        else:
            hint = difflib.get_close_matches(key, [*flat, *sections], n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(f"simulate() got an unknown keyword {key!r}{suggestion}; allowed: the sections "
                              f"{', '.join(sorted(sections))} as dicts, or {', '.join(sorted(flat))}")
    for dotted, value in updates.items():
        if isinstance(value, tuple | np.ndarray):  # shape=(64, 64), coupling=np.linspace(...)
            updates[dotted] = np.asarray(value).tolist()
    # a duration given here replaces the recipe's other duration key, as on the command line
    if "dynamics.steps" in updates:
        updates.setdefault("dynamics.t_max", None)
    if "dynamics.t_max" in updates:
        updates.setdefault("dynamics.steps", None)
    return updates


def simulate(recipe: str | Path | None = None, *, overrides: Sequence[str] = (), out: str | Path | None = None,
             overwrite: bool = False, **keys: Any) -> Run:
    """Run a simulation (exactly what ``lotsim simulate`` runs) and return it in memory.

    Args:
        recipe: A TOML recipe file (optional: the embedded defaults otherwise).
        overrides: ``"section.key=value"`` strings, as ``lotsim simulate --set`` takes them.
        out: Keep the H5MD file here (default: a temporary file, deleted after reading it).
        overwrite: Replace an existing ``out``.
        **keys: Recipe keys: a section as a dict (``frequencies={"dist": "gaussian", "width": 0.5}``)
            or a single key by its name (``topology="square"``, ``shape=(64, 64)``, ``coupling=2.0``,
            ``t_max=100``; see :func:`recipe_keys`). Order of precedence: recipe file, then ``keys``,
            then ``overrides``.

    Returns:
        A :class:`Run` with the phases [f, r, n] and everything needed to analyse them.

    Raises:
        lotsim.config.RecipeError: an unknown key or a bad value (one line naming it).
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        lotsim.simulation.SimulationBlowUp: the phases became NaN/inf.
    """
    from lotsim.config import SimulationRecipe, load_recipe
    from lotsim.simulation import run_simulation

    resolved = load_recipe(SimulationRecipe, recipe, list(overrides), _updates(keys))
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it")
        run_simulation(resolved, out, overwrite=overwrite)
        return load_run(out)
    with tempfile.TemporaryDirectory(prefix="lotsim-") as folder:
        path = Path(folder) / "traj.h5"
        run_simulation(resolved, path)
        run = load_run(path)
    run.path = None
    return run


def _trajectory_file(path: Path) -> Path:
    """A run folder -> its one ``.h5`` file; a file stays itself."""
    if not path.is_dir():
        return path
    files = sorted(path.glob("*.h5"))
    if len(files) != 1:
        raise ValueError(f"{str(path)!r} holds {len(files)} .h5 files; pass the trajectory file itself")
    return files[0]


def load_run(path: str | Path) -> Run:
    """Read a ``lotsim simulate`` trajectory (an H5MD file, or a run folder holding one) into memory.

    A partial file (a killed run) is read up to its last complete frame, with a note in
    ``Run.warnings``. For files larger than memory, stream them with
    :meth:`lotsim.io.Trajectory.iter_frames` (what ``lotsim analyze`` does).

    Raises:
        lotsim.io.H5MDFormatError: not an H5MD file (one line naming it).
        ValueError: no phases, no frames, or a folder without exactly one ``.h5`` file.
    """
    from lotsim import observables as obs
    from lotsim.analysis._run import node_positions, read_run_info, stream_blocks
    from lotsim.config import SimulationRecipe, validate_recipe
    from lotsim.io import open_trajectory

    path = _trajectory_file(Path(path))
    with open_trajectory(path) as traj:
        info = read_run_info(traj)
        theta = np.empty((info.n_frames, info.n_replicas, info.n_nodes))
        for frames, block in stream_blocks(traj, info.n_frames):
            theta[frames] = block
        try:
            omega = np.asarray(traj.node_data("natural_frequency"), dtype=np.float64)
            omega = np.broadcast_to(omega, (info.n_replicas, info.n_nodes)).copy()
        except (KeyError, ValueError):
            omega = None
        positions = node_positions(traj, info)
        edges, weights = traj.edges
    recipe = None
    if traj.recipe_toml.strip():
        try:
            recipe = validate_recipe(SimulationRecipe, tomllib.loads(traj.recipe_toml))
        except (ValueError, tomllib.TOMLDecodeError):
            info.warnings.append(f"{path.name}: the stored recipe does not validate with this lotsim version")
    r, psi = obs.order_parameter(theta)
    return Run(theta=theta, times=info.times.copy(), steps=info.steps.copy(), coupling=info.couplings,
               seed=info.seeds, omega=omega, r=r, psi=psi, positions=positions, edges=np.asarray(edges),
               weights=None if weights is None else np.asarray(weights), recipe=recipe, path=path,
               unwrapped=info.unwrapped, warnings=list(info.warnings))


# -------------------------------------------------------------------------------------------------
# Trained models


@dataclass
class TrainedModel:
    """A ``lotsim train`` checkpoint, ready for inference (see :func:`load_model`).

    Attributes:
        model: The eval-mode float32 :class:`~lotsim.model.LOTModel` with the checkpoint's weights.
        vocabulary: ``{"kind": "char"|"byte"|"tokens", "itos": [...] or None, "join": str}``, or None
            when the task has no token names (then prompts are token ids).
        recipe: The resolved training recipe (TOML text), or None.
        step: Optimiser steps done when the checkpoint was written, or None.
        path: The checkpoint file read.
    """

    model: LOTModel
    vocabulary: dict[str, Any] | None
    recipe: str | None
    step: int | None
    path: Path

    @property
    def recipe_dict(self) -> dict[str, Any]:
        """The stored recipe as a nested dict ({} if none)."""
        return tomllib.loads(self.recipe) if self.recipe else {}

    def encode(self, text: str) -> list[int]:
        """Prompt text -> token ids with the checkpoint's vocabulary.

        Characters for ``char``, UTF-8 bytes for ``byte``, token names for ``tokens`` (split on
        spaces when the vocabulary joins with a space, else one character each); without a vocabulary
        the prompt is token ids separated by spaces or commas.

        Raises:
            ValueError: a character or token the vocabulary does not have (one line naming it).
        """
        vocab = self.vocabulary
        task = self.recipe_dict.get("task", {})
        if vocab is None and isinstance(task, dict) and task.get("kind") == "char_lm":
            raise ValueError(f"the checkpoint stores no vocabulary and its corpus {task.get('path')!r} is not here "
                             f"(relative paths are relative to where training ran); run from that folder")
        if vocab is None or (vocab["kind"] != "byte" and not vocab.get("itos")):
            try:
                ids = [int(part) for part in text.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"this checkpoint stores no vocabulary: the prompt must be token ids separated "
                                 f"by spaces, got {text!r}") from None
        elif vocab["kind"] == "byte":
            ids = list(text.encode("utf-8"))
        else:
            lookup = {token: i for i, token in enumerate(vocab["itos"])}
            pieces = text.split() if vocab.get("join") == " " else list(text)
            unknown = sorted({p for p in pieces if p not in lookup})
            if unknown:
                shown = "".join(vocab["itos"]) if vocab.get("join") == "" else " ".join(vocab["itos"])
                raise ValueError(f"the prompt has {len(unknown)} token(s) not in the vocabulary: "
                                 f"{' '.join(map(repr, unknown[:5]))}; the vocabulary is {shown[:200]!r}")
            ids = [lookup[p] for p in pieces]
        bad = [i for i in ids if not 0 <= i < self.model.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range; the model has ids "
                             f"0..{self.model.config.vocab_size - 1}")
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (ids joined by spaces when there is no vocabulary)."""
        vocab = self.vocabulary
        ids = [int(i) for i in ids]
        if vocab is None or (vocab["kind"] != "byte" and not vocab.get("itos")):
            return " ".join(map(str, ids))
        if vocab["kind"] == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return vocab.get("join", "").join(vocab["itos"][i] for i in ids)

    def generate(self, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = 0, use_cache: bool = True) -> str:
        """Continue ``prompt`` (text) by ``max_new_tokens`` tokens; returns only the new text.

        See :meth:`lotsim.model.LOTModel.generate` for the sampling arguments.
        """
        import torch

        device = next(self.model.parameters()).device
        idx = torch.tensor([self.encode(prompt)], dtype=torch.long, device=device)
        out = self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                                  use_cache=use_cache)
        return self.decode(out[0, idx.shape[1]:].tolist())


def load_model(checkpoint: str | Path) -> TrainedModel:
    """Load a ``lotsim train`` checkpoint (a file, or a run folder: its ``best.pt``, else ``last.pt``).

    The model is rebuilt from the recipe stored in the checkpoint; the vocabulary is the one stored
    in the checkpoint, else the one the task defines (for a char-LM, the characters of its corpus).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: not a lotsim checkpoint, or weights that do not fit the stored config (one line).
    """
    from lotsim.train.checkpoint import model_from_checkpoint, read_checkpoint

    contents = read_checkpoint(checkpoint)
    vocabulary = contents.vocabulary
    if vocabulary is None and contents.recipe:  # older checkpoints: the task's own (never imports code)
        from lotsim.tasks import vocabulary_from_recipe

        vocabulary = vocabulary_from_recipe(tomllib.loads(contents.recipe))
    return TrainedModel(model=model_from_checkpoint(contents).eval(), vocabulary=vocabulary,
                        recipe=contents.recipe, step=contents.step, path=contents.path)
