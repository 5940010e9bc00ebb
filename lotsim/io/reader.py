"""Lazy read access to lotsim H5MD trajectories: frames stay on disk until asked for.

The layout is described in :mod:`lotsim.io.layout`. ``open_trajectory`` raises
:class:`~lotsim.io.layout.H5MDFormatError` (a ``ValueError``) with a one-line message naming the path for
a missing file, a non-HDF5 file, a file without ``/h5md`` or with an unsupported H5MD version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lotsim.io.layout import DEFAULT_GROUP, observable_path, open_h5md, read_parameters, text


class Trajectory:
    """Lazy read access to an H5MD trajectory; frames stay on disk until asked for.

    Use :func:`open_trajectory`. Group arguments default to ``"oscillators"`` if present, else to the only
    particles group.

    Attributes:
        path: The file.
        groups: Particles groups with a phase element, in file order.
        parameters: Nested dict read back from ``/parameters`` (includes ``recipe_toml``, ``seed``,
            ``lotsim_version``, ``git_commit``); HDF5 arrays come back as lists.
        unwrapped: True if phases are stored unwrapped (``phase_storage`` in ``/h5md/modules/lotsim``).
    """

    def __init__(self, file: h5py.File):
        self.file = file
        self.path = Path(file.filename)
        self.groups: list[str] = [g for g, p in file.get("particles", {}).items() if "phase" in p]
        self.parameters: dict[str, Any] = read_parameters(file["parameters"]) if "parameters" in file else {}
        module = file.get("h5md/modules/lotsim")
        storage = (
            text(module.attrs.get("phase_storage", b"unwrapped")) if module is not None else "unwrapped"
        )
        self.unwrapped: bool = storage == "unwrapped"

    @property
    def recipe_toml(self) -> str:
        """The resolved recipe TOML text ("" if none was stored)."""
        return str(self.parameters.get("recipe_toml", ""))

    def _group(self, group: str | None) -> str:
        if group is None:
            if DEFAULT_GROUP in self.groups or len(self.groups) != 1:
                group = DEFAULT_GROUP
            else:
                group = self.groups[0]
        if group not in self.groups:
            raise KeyError(f"{self.path}: no particles group {group!r}; have {self.groups}")
        return group

    def phase(self, group: str | None = None) -> h5py.Dataset:
        """Phases, lazily: an h5py dataset [frame, replica, node]."""
        return self.file[f"particles/{self._group(group)}/phase/value"]

    def steps(self, group: str | None = None) -> np.ndarray:
        """Steps of the frames [frame] int64."""
        return self.file[f"particles/{self._group(group)}/phase/step"][()]

    def times(self, group: str | None = None) -> np.ndarray:
        """Times of the frames [frame] float64."""
        return self.file[f"particles/{self._group(group)}/phase/time"][()]

    def n_frames(self, group: str | None = None) -> int:
        """Frames stored for a group."""
        return int(self.phase(group).shape[0])

    def n_replicas(self, group: str | None = None) -> int:
        """Replicas R of a group."""
        return int(self.phase(group).shape[1])

    def n_nodes(self, group: str | None = None) -> int:
        """Nodes N of a group."""
        return int(self.phase(group).shape[2])

    def observable_names(self, group: str | None = None) -> list[str]:
        """Observables sampled with a group's frames."""
        group = self._group(group)
        base = (
            self.file.get("observables") if group == DEFAULT_GROUP else self.file.get(f"observables/{group}")
        )
        step_id = self.file[f"particles/{group}/phase/step"].id
        return [
            n
            for n, og in (base or {}).items()
            if isinstance(og, h5py.Group) and "step" in og and og["step"].id == step_id
        ]

    def observable(self, name: str, group: str | None = None) -> h5py.Dataset:
        """An observable, lazily: an h5py dataset [frame, replica, ...extra] (``[()]`` loads it)."""
        group = self._group(group)
        path = f"{observable_path(name, group)}/value"
        if path not in self.file:
            raise KeyError(
                f"{self.path}: group {group!r} has no observable {name!r}; "
                f"have {self.observable_names(group)}"
            )
        return self.file[path]

    def _static(self, name: str, group: str | None, kind: str) -> np.ndarray:
        particles = self.file[f"particles/{self._group(group)}"]
        ds = particles.get(name)
        if not isinstance(ds, h5py.Dataset) or text(ds.attrs.get("lotsim_kind", b"")) != kind:
            names = [
                n
                for n, d in particles.items()
                if isinstance(d, h5py.Dataset) and text(d.attrs.get("lotsim_kind", b"")) == kind
            ]
            raise KeyError(f"{self.path}: no {kind} data {name!r} in {particles.name}; have {names}")
        return ds[()]

    def node_data(self, name: str, group: str | None = None) -> np.ndarray:
        """Per-node static data [N, ...] or [R, N, ...] stored by ``add_particles(node_data=...)``."""
        return self._static(name, group, "node")

    def replica_data(self, name: str, group: str | None = None) -> np.ndarray:
        """Per-replica static data [R, ...] stored by ``add_particles(replica_data=...)``."""
        return self._static(name, group, "replica")

    def edges(self, group: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Lattice connectivity.

        Returns:
            ``(edges [E, 2] int64, weights [E] float64 or None)``; ``edges`` is [0, 2] if none were stored.
        """
        group = self._group(group)
        conn = self.file.get("connectivity")
        if conn is None or group not in conn:
            return np.zeros((0, 2), dtype=np.int64), None
        weights = conn.get(f"{group}_weights")
        return conn[group][()], (weights[()] if weights is not None else None)

    def iter_frames(
        self, group: str | None = None, chunk_frames: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream the phases in blocks of frames with flat memory.

        Args:
            group: Particles group.
            chunk_frames: Frames per block; default a whole number of on-disk chunks, about 4 MiB.

        Yields:
            ``(frames, block)``: the slice of frame indices and the phases [len(frames), R, N].
        """
        ds = self.phase(group)
        n = ds.shape[0]
        if chunk_frames is None:
            per_chunk = ds.chunks[0] if ds.chunks else 1
            row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
            chunk_frames = per_chunk * max(1, (4 << 20) // max(per_chunk * row_bytes, 1))
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames} must be >= 1")
        for start in range(0, n, chunk_frames):
            frames = slice(start, min(start + chunk_frames, n))
            yield frames, ds[frames]

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
        H5MDFormatError: Missing file, not HDF5, no ``/h5md`` group, or H5MD version other than [1, 1];
            the message is one line naming the path.
    """
    return Trajectory(open_h5md(path))
