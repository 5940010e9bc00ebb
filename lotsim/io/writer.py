"""Streaming H5MD writer with flat memory: it owns one chunk-sized frame buffer per particles group.

``append`` checks the frames and copies them into the group's buffer (:mod:`lotsim.io.frames`); once
the buffer reaches the next chunk boundary it is written as one whole, chunk-aligned block, so memory
stays flat and HDF5 sees no per-frame writes. ``append`` returns how many frames are still buffered: 0
means every frame appended so far is on disk (the simulator checkpoints only then). ``flush`` also
writes a partial chunk and flushes the file; ``write_state`` flushes and stores the resume checkpoint
(:mod:`lotsim.io.resume`). A run killed afterwards leaves a readable file holding every frame up to the
last flush (the file is written without ``libver="latest"`` so no "file is open for writing" flag
survives a crash). A new file never replaces one that another process is writing
(:func:`lotsim.io.layout.create_h5md`). The layout is described in :mod:`lotsim.io.layout`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lotsim.io.frames import FrameSeries
from lotsim.io.layout import (
    DEFAULT_GROUP,
    EDGE_WEIGHTS,
    H5MD_VERSION,
    MODULE_VERSION,
    attach_scales,
    check_name,
    chunk_frames_for,
    compression_kwargs,
    create_h5md,
    fixed_string,
    make_scale,
    observable_path,
    observables_base,
    open_h5md,
    validate_static,
    write_parameters,
)
from lotsim.io.resume import store_state


class TrajectoryWriter:
    """Streams frames to an H5MD file with flat memory: buffers whole chunks, appends by resize.

    Args:
        path: File to write.
        mode: ``"w"`` creates a file (fails if it exists unless ``overwrite``); ``"a"`` reopens an existing
            lotsim H5MD file to resume it (header arguments below are then ignored; the file keeps its own).
        overwrite: In mode ``"w"``, replace an existing file.
        compression: ``"lzf"`` (+shuffle, default), ``"gzip"`` (+shuffle, level 4) or ``"none"``.
        parameters: Flat or nested dict stored under ``/parameters`` (None values skipped).
        recipe_toml: Resolved recipe TOML text (``/parameters`` attribute ``recipe_toml``).
        seed: Run seed (``/parameters`` attribute ``seed``), skipped when None.
        author: ``/h5md/author`` name.
        lotsim_version: ``/h5md/creator`` version; defaults to ``lotsim.__version__``.
        git_commit: ``/parameters`` attribute ``git_commit``.
        unwrapped: Declares whether phases are stored unwrapped (True) or wrapped to [0, 2π); recorded as
            ``/h5md/modules/lotsim`` attribute ``phase_storage``. The writer does not transform data.

    Example:
        >>> with TrajectoryWriter("run.h5", overwrite=True) as w:  # doctest: +SKIP
        ...     w.add_particles("oscillators", n_replicas=4, n_nodes=1024,
        ...                     observables={"order_parameter": ((), np.float64)})
        ...     w.append("oscillators", steps, times, phase, {"order_parameter": r})
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mode: str = "w",
        overwrite: bool = False,
        compression: str | None = "lzf",
        parameters: dict | None = None,
        recipe_toml: str = "",
        seed: int | None = None,
        author: str = "lotsim user",
        lotsim_version: str = "",
        git_commit: str = "",
        unwrapped: bool = True,
    ):
        self.path = Path(path)
        self._filters = compression_kwargs(compression)
        self._series: dict[str, FrameSeries] = {}
        if mode == "w":
            self._file = create_h5md(self.path, overwrite)
            self._write_header(parameters, recipe_toml, seed, author, lotsim_version, git_commit, unwrapped)
        elif mode == "a":
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no such file to resume")
            self._file = open_h5md(self.path, "r+")
            self._reopen_groups()
        else:
            raise ValueError(f"mode={mode!r} is not allowed; use 'w' (create) or 'a' (resume)")

    # -- header -------------------------------------------------------------------------------------

    def _write_header(self, parameters, recipe_toml, seed, author, lotsim_version, git_commit, unwrapped):
        if not lotsim_version:
            from lotsim import __version__ as lotsim_version
        f = self._file
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.asarray(H5MD_VERSION, dtype=np.int32)
        h5md.create_group("author").attrs["name"] = fixed_string(author)
        creator = h5md.create_group("creator")
        creator.attrs["name"] = fixed_string("lotsim")
        creator.attrs["version"] = fixed_string(lotsim_version)
        module = h5md.create_group("modules/lotsim")
        module.attrs["version"] = np.asarray(MODULE_VERSION, dtype=np.int32)
        module.attrs["phase_storage"] = fixed_string("unwrapped" if unwrapped else "wrapped")
        params = f.create_group("parameters")
        write_parameters(params, parameters or {})
        params.attrs["recipe_toml"] = recipe_toml
        params.attrs["lotsim_version"] = lotsim_version
        params.attrs["git_commit"] = git_commit
        if seed is not None:
            params.attrs["seed"] = np.int64(seed)

    # -- particles groups ---------------------------------------------------------------------------

    def add_particles(
        self,
        group: str,
        *,
        n_replicas: int,
        n_nodes: int,
        dtype: Any = np.float32,
        node_data: dict[str, np.ndarray] | None = None,
        replica_data: dict[str, np.ndarray] | None = None,
        edges: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        observables: dict[str, tuple[tuple[int, ...], Any]] | None = None,
    ) -> None:
        """Declare a particles group: its phase element, static data, connectivity and observables.

        Args:
            group: Group name, e.g. ``"oscillators"`` or ``"layer_00"``.
            n_replicas: R, replicas (batched couplings/seeds) per frame.
            n_nodes: N, oscillators per replica.
            dtype: Phase storage dtype, float32 or float64.
            node_data: Per-node static arrays, shape [N, ...] or [R, N, ...] (e.g. ``natural_frequency``,
                ``position`` [N, dim], ``id`` [N]); stored as ``/particles/<group>/<name>``.
            replica_data: Per-replica static arrays, shape [R, ...] (e.g. ``coupling``, ``seed``).
            edges: Lattice edges [E, 2] int, node indices in [0, N).
            weights: Edge weights [E] (requires ``edges``).
            observables: ``name -> (extra_shape, dtype)``; values are [frame, R, *extra_shape], sampled on
                the phase's frames (e.g. ``{"order_parameter": ((), np.float64)}``).

        Arrays are given replica before node, as lotsim holds them in memory; the file stores them with
        the particle (node) index first, as H5MD asks (see :mod:`lotsim.io.layout`).

        Raises:
            ValueError: Bad shapes or names, a name collision, or a group that already exists.
        """
        check_name(group, "particles group")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype={dtype} is not allowed; use float32 or float64")
        if n_replicas < 1 or n_nodes < 1:
            raise ValueError(f"n_replicas={n_replicas}, n_nodes={n_nodes} must be >= 1")
        observables = {
            k: (tuple(int(s) for s in v[0]), np.dtype(v[1])) for k, v in (observables or {}).items()
        }
        node_data, replica_data = dict(node_data or {}), dict(replica_data or {})
        if f"particles/{group}" in self._file:
            raise ValueError(f"particles group {group!r} already exists in {self.path}")
        validate_static(group, n_replicas, n_nodes, node_data, replica_data, edges, weights)
        for name in observables:
            check_name(name, "observable")
            if observable_path(name, group) in self._file:
                raise ValueError(f"observable path {observable_path(name, group)} already exists")
        if group != DEFAULT_GROUP and observables and f"observables/{group}" in self._file:
            raise ValueError(f"/observables/{group} already exists (an observable of {DEFAULT_GROUP!r}?)")

        f = self._file
        particles = f.require_group("particles").create_group(group)
        box = particles.create_group("box")
        box.attrs["dimension"] = np.int32(1)
        box.attrs["boundary"] = np.array([b"periodic"], dtype="S8")
        box.create_dataset("edges", data=np.array([2 * math.pi]))

        cf = chunk_frames_for(dtype.itemsize, n_replicas * n_nodes)
        phase = particles.create_group("phase")
        value = phase.create_dataset(
            "value",
            shape=(0, n_nodes, n_replicas),
            dtype=dtype,
            maxshape=(None, n_nodes, n_replicas),
            chunks=(cf, n_nodes, n_replicas),
            **self._filters,
        )
        value.attrs["unit"] = "rad"
        column_chunk = _multiple_chunk(cf, 8)
        step = phase.create_dataset(
            "step", shape=(0,), dtype=np.int64, maxshape=(None,), chunks=(column_chunk,), **self._filters
        )
        time = phase.create_dataset(
            "time", shape=(0,), dtype=np.float64, maxshape=(None,), chunks=(column_chunk,), **self._filters
        )
        time.make_scale("time")
        # replica/node scales live in the particles group so that its static data can share them too.
        replica = make_scale(particles, "replica", np.arange(n_replicas, dtype=np.int64))
        node = make_scale(particles, "node", np.arange(n_nodes, dtype=np.int64))
        attach_scales(value, [time, node, replica])
        attach_scales(step, [time])

        for name, arr in node_data.items():
            arr = np.asarray(arr)
            per_replica = arr.shape[:2] == (n_replicas, n_nodes)
            if per_replica:
                arr = np.ascontiguousarray(arr.swapaxes(0, 1))  # particle index first: [N, R, ...]
            self._static(particles, name, arr, "node", [node, replica] if per_replica else [node])
        for name, arr in replica_data.items():
            self._static(particles, name, np.asarray(arr), "replica", [replica])
        if edges is not None:
            conn = f.require_group("connectivity")
            e = conn.create_dataset(group, data=np.asarray(edges, dtype=np.int64))
            e.attrs["particles_group"] = particles.ref
            if weights is not None:
                w = f.require_group(EDGE_WEIGHTS).create_dataset(group, data=np.asarray(weights, np.float64))
                w.attrs["edges"] = e.ref

        obs_values: dict[str, h5py.Dataset] = {}
        for name, (extra, odtype) in observables.items():
            og = f.create_group(observable_path(name, group))
            og["step"], og["time"], og["replica"] = step, time, replica  # hard links: one shared grid
            row = n_replicas * int(np.prod(extra, dtype=np.int64))
            ov = og.create_dataset(
                "value",
                shape=(0, n_replicas, *extra),
                dtype=odtype,
                maxshape=(None, n_replicas, *extra),
                chunks=(_multiple_chunk(cf, odtype.itemsize * row), n_replicas, *extra),
                **self._filters,
            )
            extras = [
                make_scale(og, f"extra_{i}", np.arange(size, dtype=np.int64)) for i, size in enumerate(extra)
            ]
            attach_scales(ov, [time, replica, *extras])
            obs_values[name] = ov
        self._series[group] = FrameSeries(phase, obs_values)

    @staticmethod
    def _static(particles: h5py.Group, name: str, arr: np.ndarray, kind: str, scales: list[h5py.Dataset]):
        """Store static data with every axis named: the given scales, then ``<name>_axis<i>`` scales."""
        ds = particles.create_dataset(name, data=arr)
        ds.attrs["lotsim_kind"] = fixed_string(kind)
        extra = [
            make_scale(particles, f"{name}_axis{axis}", np.arange(ds.shape[axis], dtype=np.int64))
            for axis in range(len(scales), ds.ndim)
        ]
        attach_scales(ds, [*scales, *extra])

    def _reopen_groups(self) -> None:
        for group, particles in self._file.get("particles", {}).items():
            if "phase" not in particles:
                continue
            phase = particles["phase"]
            obs: dict[str, h5py.Dataset] = {}
            for name, og in (self._file.get(observables_base(group)) or {}).items():
                # An observable belongs to this group iff it hard-links this phase's step column.
                if (
                    isinstance(og, h5py.Group)
                    and "value" in og
                    and "step" in og
                    and og["step"].id == phase["step"].id
                ):
                    obs[name] = og["value"]
            self._series[group] = FrameSeries(phase, obs)

    # -- frames -------------------------------------------------------------------------------------

    @property
    def groups(self) -> list[str]:
        """Particles groups with a phase element."""
        return list(self._series)

    def append(
        self,
        group: str,
        steps: np.ndarray,
        times: np.ndarray,
        phase: np.ndarray,
        observables: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Append k frames (buffered; written to disk in whole chunks).

        Args:
            group: Particles group declared by :meth:`add_particles` (or reopened in mode ``"a"``).
            steps: [k] integer steps, strictly increasing and after the last appended step.
            times: [k] simulation times.
            phase: [k, R, N] phases (cast to the group's dtype).
            observables: Every declared observable, each [k, R, *extra].

        Returns:
            Frames of the group still buffered in memory (less than one chunk); 0 when every frame
            appended so far is on disk.

        Raises:
            KeyError: Unknown group.
            ValueError: Shape mismatch, missing/unknown observables, or non-increasing steps.
        """
        s = self._get_series(group)
        steps = np.asarray(steps).reshape(-1)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        phase = np.asarray(phase)
        k = len(steps)
        if times.shape != (k,) or phase.shape != (k, s.n_replicas, s.n_nodes):
            raise ValueError(
                f"group {group!r}: need steps [k], times [k], phase [k, {s.n_replicas}, "
                f"{s.n_nodes}]; got {steps.shape}, {times.shape}, {phase.shape}"
            )
        observables = observables or {}
        if observables.keys() != s.obs.keys():
            raise ValueError(
                f"group {group!r}: observables given {sorted(observables)}, declared {sorted(s.obs)}"
            )
        observables = {name: np.asarray(v) for name, v in observables.items()}
        for name, v in observables.items():
            if v.shape[0] != k or v.shape[1:] != s.buf_obs[name].shape[1:]:  # no HDF5 query per call
                raise ValueError(f"observable {name!r}: shape {v.shape}, need {(k, *s.buf_obs[name].shape[1:])}")
        if k == 0:
            return s.n_buf
        if steps.dtype.kind not in "iu":
            raise ValueError(f"steps must be integers; got {steps.dtype}")
        if (s.last_step is not None and steps[0] <= s.last_step) or (k > 1 and np.any(np.diff(steps) <= 0)):
            raise ValueError(
                f"group {group!r}: steps must increase strictly (last written {s.last_step}, "
                f"got {steps[0]}..{steps[-1]})"
            )
        s.append(steps, times, phase, observables)
        return s.n_buf

    def _get_series(self, group: str) -> FrameSeries:
        if group not in self._series:
            raise KeyError(f"no particles group {group!r} in {self.path}; have {sorted(self._series)}")
        return self._series[group]

    def flush(self) -> None:
        """Write every buffered frame now (a partial chunk if need be) and flush the HDF5 file."""
        for s in self._series.values():
            s.flush()
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop every frame with ``step`` greater than the given step, in all groups (used by resume).

        Args:
            step: Last step to keep, typically ``read_state(path).step``.
        """
        for s in self._series.values():
            s.truncate_after(int(step))
        self._file.flush()

    def write_state(
        self,
        theta: np.ndarray,
        *,
        step: int,
        time: float,
        velocity: np.ndarray | None = None,
        extra: dict[str, np.ndarray | bytes] | None = None,
    ) -> None:
        """Flush pending frames, then store the resume checkpoint at ``/lotsim/state`` and flush the file.

        Args:
            theta: Full-precision phases (e.g. [R, N] float64); stored with their own dtype.
            step: Integrator step of ``theta``.
            time: Simulation time of ``theta``.
            velocity: Optional phase velocities (inertial dynamics).
            extra: Small named arrays (e.g. RNG state); ``bytes`` values round-trip as ``bytes``.
        """
        self.flush()
        store_state(self._file, theta, step=step, time=time, velocity=velocity, extra=extra,
                    frames_written={g: s.n_disk for g, s in self._series.items()})
        self._file.flush()

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if not self._file.id.valid:
            return
        try:
            self.flush()
        finally:
            self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _multiple_chunk(phase_chunk: int, row_bytes: int) -> int:
    # Chunks of small per-frame datasets hold a whole number of phase chunks (aligned writes), ~256 KiB.
    frames = chunk_frames_for(1, row_bytes)
    return max(phase_chunk, frames // phase_chunk * phase_chunk)
