"""Lazy read access to lotsim H5MD trajectories: frames stay on disk until asked for.

The layout is described in :mod:`lotsim.io.layout`. The reader hands out arrays in lotsim's in-memory
order, replica before node (phases [frame, R, N], per-replica node data [R, N, ...]), whatever the
file's format version. ``open_trajectory`` raises :class:`~lotsim.io.layout.H5MDFormatError` (a
``ValueError``) with a one-line message naming the path for a missing file, a non-HDF5 file, a file
without ``/h5md``, an unsupported H5MD version or a newer lotsim file format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lotsim.io.layout import (
    DEFAULT_GROUP,
    EDGE_WEIGHTS,
    module_version,
    observable_path,
    observables_base,
    open_h5md,
    particle_axis,
    read_parameters,
    text,
)

_FORMAT_0_1_NAMES = {"lattice_position": "position"}  # names that format 0.1 files used


class PhaseView:
    """Phases of one particles group as a lazy [frame, replica, node] array.

    Indexing reads only the selected frames (``view[a:b]``, ``view[i, r]``, ``view[()]`` for all); the
    file stores [frame, node, replica] and the view swaps the axes of what it reads.

    Attributes:
        dataset: The underlying h5py dataset (the file's own axis order, chunks and filters).
    """

    def __init__(self, dataset: h5py.Dataset):
        self.dataset = dataset
        self._swap = particle_axis(dataset) == 1
        f, a, b = dataset.shape
        self.shape: tuple[int, int, int] = (f, b, a) if self._swap else (f, a, b)
        self.dtype = dataset.dtype
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[()]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not self._swap:
            return self.dataset[key]
        keys = list(key) if isinstance(key, tuple) else [key]
        if Ellipsis in keys:
            i = keys.index(Ellipsis)
            keys[i : i + 1] = [slice(None)] * (3 - len(keys) + 1)
        keys += [slice(None)] * (3 - len(keys))
        frame, replica, node = keys
        out = self.dataset[frame, node, replica]
        if not (_is_int(replica) or _is_int(node)):
            out = np.ascontiguousarray(np.swapaxes(out, -1, -2))
        return out


def _is_int(key: Any) -> bool:
    return isinstance(key, int | np.integer)


class TrajectoryGroup:
    """One particles group of a trajectory (``Trajectory.group(name)``); the same accessors as
    :class:`Trajectory`, whose own accessors read its default group."""

    def __init__(self, file: h5py.File, name: str, format_version: tuple[int, int]):
        self.file = file
        self.name = name
        self._particles = file[f"particles/{name}"]
        self._format_version = format_version

    @property
    def phase(self) -> PhaseView:
        """Phases, lazily: a :class:`PhaseView` [frame, replica, node] (``[()]`` loads them all)."""
        return PhaseView(self._particles["phase/value"])

    @property
    def steps(self) -> np.ndarray:
        """Steps of the frames [frame] int64."""
        return self._particles["phase/step"][()]

    @property
    def times(self) -> np.ndarray:
        """Times of the frames [frame] float64."""
        return self._particles["phase/time"][()]

    @property
    def n_frames(self) -> int:
        """Frames stored."""
        return self.phase.shape[0]

    @property
    def n_replicas(self) -> int:
        """Replicas R."""
        return self.phase.shape[1]

    @property
    def n_nodes(self) -> int:
        """Nodes N (the oscillators)."""
        return self.phase.shape[2]

    @property
    def observable_names(self) -> list[str]:
        """Observables sampled with the group's frames."""
        step_id = self._particles["phase/step"].id
        return [
            n
            for n, og in (self.file.get(observables_base(self.name)) or {}).items()
            if isinstance(og, h5py.Group) and "step" in og and og["step"].id == step_id
        ]

    def observable(self, name: str) -> h5py.Dataset:
        """An observable, lazily: an h5py dataset [frame, replica, ...extra] (``[()]`` loads it)."""
        path = f"{observable_path(name, self.name)}/value"
        if path not in self.file:
            raise KeyError(
                f"{self.file.filename}: group {self.name!r} has no observable {name!r}; "
                f"have {self.observable_names}"
            )
        return self.file[path]

    def _static(self, name: str, kind: str) -> h5py.Dataset:
        def of_kind(ds: Any) -> bool:
            return isinstance(ds, h5py.Dataset) and text(ds.attrs.get("lotsim_kind", b"")) == kind

        ds = self._particles.get(name)
        if not of_kind(ds) and self._format_version < (0, 2) and name in _FORMAT_0_1_NAMES:
            ds = self._particles.get(_FORMAT_0_1_NAMES[name])
        if not of_kind(ds):
            names = [n for n, d in self._particles.items() if of_kind(d)]
            raise KeyError(f"{self.file.filename}: no {kind} data {name!r} in {self._particles.name}; have {names}")
        return ds

    def node_data(self, name: str) -> np.ndarray:
        """Per-node static data [N, ...], or [R, N, ...] when it differs between replicas."""
        ds = self._static(name, "node")
        labels = [dim.label for dim in ds.dims]
        data = ds[()]
        return np.ascontiguousarray(np.swapaxes(data, 0, 1)) if labels[:2] == ["node", "replica"] else data

    def replica_data(self, name: str) -> np.ndarray:
        """Per-replica static data [R, ...]."""
        return self._static(name, "replica")[()]

    @property
    def edges(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Connectivity: ``(edges [E, 2] int64 (sender, receiver), weights [E] float64 or None)``;
        ``edges`` is [0, 2] if none were stored."""
        conn = self.file.get("connectivity")
        if conn is None or self.name not in conn:
            return np.zeros((0, 2), dtype=np.int64), None
        weights = self.file.get(f"{EDGE_WEIGHTS}/{self.name}")
        if weights is None:  # format 0.1
            weights = conn.get(f"{self.name}_weights")
        return conn[self.name][()], (weights[()] if weights is not None else None)

    def iter_frames(self, chunk_frames: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream the phases in blocks of frames with flat memory.

        Args:
            chunk_frames: Frames per block; default a whole number of on-disk chunks, about 4 MiB.

        Yields:
            ``(frames, block)``: the slice of frame indices and the phases [len(frames), R, N].
        """
        view = self.phase
        ds, n = view.dataset, view.shape[0]
        if chunk_frames is None:
            per_chunk = ds.chunks[0] if ds.chunks else 1
            row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
            chunk_frames = per_chunk * max(1, (4 << 20) // max(per_chunk * row_bytes, 1))
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames} must be >= 1")
        for start in range(0, n, chunk_frames):
            frames = slice(start, min(start + chunk_frames, n))
            yield frames, view[frames]


class Trajectory:
    """Lazy read access to an H5MD trajectory; frames stay on disk until asked for.

    Use :func:`open_trajectory`. The accessors read the default group: ``"oscillators"`` if present, else
    the only particles group; ``traj.group(name)`` gives the same accessors for any group, and the
    methods that take a name also take ``group=``.

    Attributes:
        path: The file.
        groups: Particles groups with a phase element, in file order.
        parameters: Nested dict read back from ``/parameters`` (includes ``recipe_toml``, ``seed``,
            ``lotsim_version``, ``git_commit``); HDF5 arrays come back as lists.
        unwrapped: True if phases are stored unwrapped (``phase_storage`` in ``/h5md/modules/lotsim``).
        format_version: lotsim's file format version, e.g. ``(0, 2)``.
    """

    def __init__(self, file: h5py.File):
        self.file = file
        self.path = Path(file.filename)
        self.groups: list[str] = [g for g, p in file.get("particles", {}).items() if "phase" in p]
        self.parameters: dict[str, Any] = read_parameters(file["parameters"]) if "parameters" in file else {}
        module = file.get("h5md/modules/lotsim")
        storage = text(module.attrs.get("phase_storage", b"unwrapped")) if module is not None else "unwrapped"
        self.unwrapped: bool = storage == "unwrapped"
        self.format_version = module_version(file)

    @property
    def recipe_toml(self) -> str:
        """The resolved recipe TOML text ("" if none was stored)."""
        return str(self.parameters.get("recipe_toml", ""))

    def group(self, name: str | None = None) -> TrajectoryGroup:
        """One particles group (default: ``"oscillators"`` if present, else the only group)."""
        if name is None:
            name = DEFAULT_GROUP if DEFAULT_GROUP in self.groups or len(self.groups) != 1 else self.groups[0]
        if name not in self.groups:
            raise KeyError(f"{self.path}: no particles group {name!r}; have {self.groups}")
        return TrajectoryGroup(self.file, name, self.format_version)

    @property
    def phase(self) -> PhaseView:
        """Phases of the default group, lazily: [frame, replica, node] (``[()]`` loads them all)."""
        return self.group().phase

    @property
    def steps(self) -> np.ndarray:
        """Steps of the default group's frames [frame] int64."""
        return self.group().steps

    @property
    def times(self) -> np.ndarray:
        """Times of the default group's frames [frame] float64."""
        return self.group().times

    @property
    def n_frames(self) -> int:
        """Frames stored for the default group."""
        return self.group().n_frames

    @property
    def n_replicas(self) -> int:
        """Replicas R of the default group."""
        return self.group().n_replicas

    @property
    def n_nodes(self) -> int:
        """Nodes N of the default group."""
        return self.group().n_nodes

    @property
    def observable_names(self) -> list[str]:
        """Observables sampled with the default group's frames."""
        return self.group().observable_names

    @property
    def edges(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The default group's connectivity: ``(edges [E, 2] int64, weights [E] float64 or None)``."""
        return self.group().edges

    def observable(self, name: str, group: str | None = None) -> h5py.Dataset:
        """An observable, lazily: an h5py dataset [frame, replica, ...extra] (``[()]`` loads it)."""
        return self.group(group).observable(name)

    def node_data(self, name: str, group: str | None = None) -> np.ndarray:
        """Per-node static data [N, ...] or [R, N, ...] stored by ``add_particles(node_data=...)``."""
        return self.group(group).node_data(name)

    def replica_data(self, name: str, group: str | None = None) -> np.ndarray:
        """Per-replica static data [R, ...] stored by ``add_particles(replica_data=...)``."""
        return self.group(group).replica_data(name)

    def iter_frames(
        self, group: str | None = None, chunk_frames: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream a group's phases in blocks ``(frames, [f, R, N])``; see :meth:`TrajectoryGroup.iter_frames`."""
        return self.group(group).iter_frames(chunk_frames)

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_trajectory(path: str | Path) -> Trajectory:
    """Open an H5MD 1.1 trajectory for reading (use as a context manager).

    Args:
        path: The file.

    Returns:
        A lazy :class:`Trajectory`.

    Raises:
        H5MDFormatError: Missing file, not HDF5, no ``/h5md`` group, H5MD version other than [1, 1], or
            a lotsim file format newer than this reader; the message is one line naming the path.
    """
    return Trajectory(open_h5md(path))
