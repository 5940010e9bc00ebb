"""H5MD 1.1 trajectory files: a streaming writer with flat memory and a lazy reader.

Contract: design note formats.md, "Trajectories: H5MD 1.1". One self-describing HDF5 file per run::

    /h5md                              version=[1,1]
        author/                        name (fixed-length bytes)
        creator/                       name=b"lotsim", version (fixed-length bytes)
        modules/lotsim/                version=[0,1], phase_storage=b"unwrapped"|b"wrapped"
    /particles/<group>/
        box/                           dimension=1, boundary=[b"periodic"]; dataset edges=[2π]
        phase/value   [frame, replica, node] float32|float64 (chunked on frames, resizable)
        phase/step    [frame] int64     explicit mode, strictly increasing
        phase/time    [frame] float64   dimension scale "time"
        replica       [replica] int64   dimension scale "replica" (= arange)
        node          [node] int64      dimension scale "node" (= arange)
        <name>        node data: [node, ...] or [replica, node, ...]   (attr lotsim_kind=b"node")
        <name>        replica data: [replica, ...]                      (attr lotsim_kind=b"replica")
    /connectivity/<group>              [edge, 2] int64, attr particles_group -> /particles/<group>
    /connectivity/<group>_weights      [edge] float64, attr edges -> /connectivity/<group>
    /observables/<name>/               observables of the group "oscillators"
    /observables/<group>/<name>/       observables of every other group (e.g. "layer_00")
        value [frame, replica, ...extra]; step, time hard links to /particles/<group>/phase/{step,time};
        replica hard link to /particles/<group>/replica; extra_<i> scales (= arange) for extra axes
    /parameters                        attrs recipe_toml, seed, lotsim_version, git_commit, flat scalars;
                                       nested dicts as subgroups (None values skipped)
    /lotsim/state/                     resume checkpoint: theta, (velocity), extra/<name>;
                                       attrs step, time, groups, frames_written

Observables rule: the simulator's single group is named ``"oscillators"`` and its observables live
where H5MD readers look first, ``/observables/<name>``; any other group (training telemetry: one group
per layer) is namespaced as ``/observables/<group>/<name>`` (H5MD allows per-group subgroups). A name that
would collide under this rule (an ``oscillators`` observable named like another group) is refused.

Every time-dependent dataset has its dimension scales attached (static data too, for its replica/node
axes; further axes, e.g. of ``position`` [node, dim], stay anonymous "phony" dims in netCDF tools), so
``xarray.open_dataset(path, engine="h5netcdf", group="particles/oscillators/phase")`` yields
``value(time, replica, node)`` with coordinates.

Streaming: each group keeps a write buffer of at most one chunk (``chunk_frames = clamp(256 KiB /
(itemsize*R*N), 1, 4096)`` frames); ``append`` copies into it and writes whole, chunk-aligned blocks with
one ``resize`` + slice assignment per dataset, so memory stays flat and HDF5 sees no per-frame writes.
``flush`` also writes a partial chunk and flushes the file: a run killed afterwards leaves a readable
file holding every frame up to the last flush (the file is written without ``libver="latest"`` so no
"file is open for writing" flag survives a crash).

Resume protocol: the simulator calls ``write_state`` (flushes pending frames, then overwrites
``/lotsim/state`` with full-precision integrator state, then flushes the file). ``--resume`` reopens with
``TrajectoryWriter(path, mode="a")``, ``read_state(path)``, ``truncate_after(state.step)`` (drops frames
written after the checkpoint) and continues appending; the result equals an uninterrupted run.

Errors: ``open_trajectory`` / ``read_state`` raise :class:`H5MDFormatError` (a ``ValueError``) with a
one-line message naming the path for a missing file, a non-HDF5 file, a file without ``/h5md`` or with an
unsupported H5MD version. This module imports numpy and h5py only (never torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "DEFAULT_GROUP",
    "H5MDFormatError",
    "ResumeState",
    "Trajectory",
    "TrajectoryWriter",
    "chunk_frames_for",
    "observable_path",
    "open_trajectory",
    "read_state",
]

H5MD_VERSION = (1, 1)
MODULE_VERSION = (0, 1)
DEFAULT_GROUP = "oscillators"
CHUNK_BYTES = 256 * 1024
MAX_CHUNK_FRAMES = 4096
GZIP_LEVEL = 4
COMPRESSIONS = ("lzf", "gzip", "none")
_RESERVED_NAMES = {"box", "phase", "replica", "node"}


class H5MDFormatError(ValueError):
    """The file is missing, not HDF5, or not an H5MD 1.1 file. The message is one line naming the path."""


@dataclass
class ResumeState:
    """Full-precision integrator state stored at ``/lotsim/state`` by :meth:`TrajectoryWriter.write_state`.

    Attributes:
        theta: Phases, as written (typically [replica, node], float64 or the simulation dtype).
        velocity: Phase velocities for second-order (inertial) dynamics, or None.
        step: Integrator step of the checkpoint.
        time: Simulation time of the checkpoint.
        extra: Small named arrays (e.g. RNG state); values stored from ``bytes`` come back as ``bytes``.
        frames_written: Frames on disk per particles group when the checkpoint was taken.
    """

    theta: np.ndarray
    velocity: np.ndarray | None
    step: int
    time: float
    extra: dict[str, Any] = field(default_factory=dict)
    frames_written: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- helpers


def chunk_frames_for(itemsize: int, row_elements: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Frames per chunk so that a chunk is about ``target_bytes``.

    Args:
        itemsize: Bytes per element.
        row_elements: Elements per frame (e.g. R*N).
        target_bytes: Desired chunk size.

    Returns:
        ``clamp(target_bytes // (itemsize*row_elements), 1, 4096)``.
    """
    return int(min(max(target_bytes // max(itemsize * row_elements, 1), 1), MAX_CHUNK_FRAMES))


def observable_path(name: str, group: str) -> str:
    """Where an observable of a particles group lives (see the module docstring for the rule).

    Args:
        name: Observable name, e.g. ``"order_parameter"``.
        group: Particles group name.

    Returns:
        ``/observables/<name>`` for the group ``"oscillators"``, ``/observables/<group>/<name>`` otherwise.
    """
    return f"/observables/{name}" if group == DEFAULT_GROUP else f"/observables/{group}/{name}"


def _fixed(text: str) -> np.bytes_:
    # H5MD asks fixed-length strings; a Python str would become a variable-length one. Never zero-length.
    return np.bytes_((text or " ").encode())


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode()
    return str(value)


def _compression_kwargs(compression: str | None) -> dict[str, Any]:
    if compression is None or compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    raise ValueError(f"compression={compression!r} is not allowed; use one of {', '.join(COMPRESSIONS)}")


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{what} name {name!r} is invalid: non-empty, no '/', not starting with '.'")


def _attr_value(value: Any) -> Any:
    """A Python/numpy parameter value in a form h5py stores as an attribute."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind in "US":
            return np.asarray([str(v) for v in value], dtype=h5py.string_dtype())
        if arr.dtype.kind == "O":
            raise ValueError(f"parameter list {value!r} is ragged or mixed; cannot store it as an attribute")
        return arr
    return value


def _write_parameters(group: h5py.Group, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        _check_name(str(key), "parameter")
        if value is None:
            continue
        if isinstance(value, Mapping):
            _write_parameters(group.require_group(str(key)), value)
        else:
            group.attrs[str(key)] = _attr_value(value)


def _python_value(value: Any) -> Any:
    if isinstance(value, bytes | np.bytes_):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_python_value(v) for v in value.tolist()] if value.ndim else _python_value(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_parameters(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {key: _python_value(value) for key, value in group.attrs.items()}
    for key, child in group.items():
        if isinstance(child, h5py.Group):
            out[key] = _read_parameters(child)
    return out


def _make_scale(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    ds = group.create_dataset(name, data=data)
    ds.make_scale(name)
    return ds


def _attach(ds: h5py.Dataset, scales: list[h5py.Dataset]) -> None:
    for axis, scale in enumerate(scales):
        ds.dims[axis].attach_scale(scale)
        ds.dims[axis].label = scale.name.rsplit("/", 1)[-1]


def _append_rows(ds: h5py.Dataset, n0: int, n1: int, arr: np.ndarray) -> None:
    """``ds.resize(n1, axis=0); ds[n0:n1] = arr`` for a dataset holding ``n0`` rows, through h5py's
    low-level calls: the same HDF5 operations without the high-level layer's shape queries and selection
    parsing (~0.1 ms per dataset, paid at every chunk). Arrays of another dtype or layout take the
    high-level path, which lets HDF5 convert them as before."""
    if not (isinstance(arr, np.ndarray) and arr.dtype == ds.dtype and arr.flags.c_contiguous):
        ds.resize(n1, axis=0)
        ds[n0:n1] = arr
        return
    rest = arr.shape[1:]
    dsid = ds.id
    dsid.set_extent((n1, *rest))
    fspace = dsid.get_space()
    fspace.select_hyperslab((n0, *(0 for _ in rest)), (n1 - n0, *rest))
    dsid.write(h5py.h5s.create_simple(arr.shape), fspace, arr)


def _open_h5md(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an existing H5MD 1.1 file, or raise H5MDFormatError with one line naming the path."""
    path = Path(path)
    if not path.exists():
        raise H5MDFormatError(f"{path}: no such file")
    if path.is_dir() or not h5py.is_hdf5(path):
        raise H5MDFormatError(f"{path}: not an HDF5 file")
    try:
        f = h5py.File(path, mode)
    except OSError as err:
        if "unable to lock file" in str(err):
            raise H5MDFormatError(
                f"{path}: locked by another process (is its writer still running?)"
            ) from err
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise H5MDFormatError(f"{path}: cannot open HDF5 file ({msg})") from err
    if "h5md" not in f or not isinstance(f["h5md"], h5py.Group):
        f.close()
        raise H5MDFormatError(f"{path}: HDF5 file has no /h5md group; not an H5MD trajectory")
    version = tuple(int(v) for v in np.ravel(f["h5md"].attrs.get("version", [])))
    if version != H5MD_VERSION:
        f.close()
        raise H5MDFormatError(f"{path}: H5MD version {list(version)} is not supported; need [1, 1]")
    return f


# ------------------------------------------------------------------------------------------ writer


class _FrameSeries:
    """One particles group's time-dependent datasets plus a write buffer of at most one chunk.

    Buffered frames start at ``n_disk``; a buffer is written once it reaches the next chunk boundary, so
    every write except the one forced by ``flush`` ends on a chunk boundary.
    """

    def __init__(self, phase: h5py.Group, observables: dict[str, h5py.Dataset]):
        self.value: h5py.Dataset = phase["value"]
        self.step: h5py.Dataset = phase["step"]
        self.time: h5py.Dataset = phase["time"]
        self.obs = observables
        self.chunk_frames = int(self.value.chunks[0])
        _, self.n_replicas, self.n_nodes = self.value.shape
        cf = self.chunk_frames
        self.buf_phase = np.empty((cf, self.n_replicas, self.n_nodes), dtype=self.value.dtype)
        self.buf_step = np.empty(cf, dtype=np.int64)
        self.buf_time = np.empty(cf, dtype=np.float64)
        self.buf_obs = {k: np.empty((cf, *ds.shape[1:]), dtype=ds.dtype) for k, ds in observables.items()}
        self.n_buf = 0
        self.n_disk = self._consistent_length()
        self.last_step: int | None = int(self.step[self.n_disk - 1]) if self.n_disk else None

    def _datasets(self) -> list[h5py.Dataset]:
        return [self.value, self.step, self.time, *self.obs.values()]

    def _consistent_length(self) -> int:
        # After a crash the datasets of one group may disagree; keep the frames all of them hold.
        n = min(ds.shape[0] for ds in self._datasets())
        self._resize(n)
        return n

    def _resize(self, n: int) -> None:
        for ds in self._datasets():
            if ds.shape[0] != n:
                ds.resize(n, axis=0)

    def _write(self, steps: np.ndarray, times: np.ndarray, phase: np.ndarray, obs: dict[str, np.ndarray]):
        n0, n1 = self.n_disk, self.n_disk + len(steps)
        for ds, arr in ((self.value, phase), (self.step, steps), (self.time, times),
                        *((ds, obs[k]) for k, ds in self.obs.items())):
            _append_rows(ds, n0, n1, arr)
        self.n_disk = n1

    def append(self, steps: np.ndarray, times: np.ndarray, phase: np.ndarray, obs: dict[str, np.ndarray]):
        k, i, cf = len(steps), 0, self.chunk_frames
        while i < k:
            if self.n_buf == 0 and self.n_disk % cf == 0 and k - i >= cf:
                n = (k - i) // cf * cf  # whole aligned chunks go straight from the caller's block
                self._write(
                    steps[i : i + n],
                    times[i : i + n],
                    phase[i : i + n],
                    {name: v[i : i + n] for name, v in obs.items()},
                )
                i += n
                continue
            room = cf - self.n_disk % cf - self.n_buf  # frames until the next chunk boundary
            take = min(room, k - i)
            b0, b1 = self.n_buf, self.n_buf + take
            self.buf_phase[b0:b1] = phase[i : i + take]
            self.buf_step[b0:b1] = steps[i : i + take]
            self.buf_time[b0:b1] = times[i : i + take]
            for name, v in obs.items():
                self.buf_obs[name][b0:b1] = v[i : i + take]
            self.n_buf, i = b1, i + take
            if take == room:
                self.flush()
        self.last_step = int(steps[-1])

    def flush(self) -> None:
        if self.n_buf:
            n = self.n_buf
            self._write(
                self.buf_step[:n],
                self.buf_time[:n],
                self.buf_phase[:n],
                {name: b[:n] for name, b in self.buf_obs.items()},
            )
            self.n_buf = 0

    def truncate_after(self, step: int) -> None:
        """Drop frames with ``step`` > the given step (reads the step column backwards, block by block)."""
        self.flush()
        n = self.n_disk
        while n > 0:
            lo = max(0, n - MAX_CHUNK_FRAMES)
            block = self.step[lo:n]
            keep = int(np.searchsorted(block, step, side="right"))
            if keep > 0 or lo == 0:
                n = lo + keep
                break
            n = lo
        self._resize(n)
        self.n_disk = n
        self.last_step = int(self.step[n - 1]) if n else None


class TrajectoryWriter:
    """Streams frames to an H5MD file with flat memory: buffers whole chunks, appends by resize.

    Args:
        path: File to write.
        mode: ``"w"`` creates a file (fails if it exists unless ``overwrite``); ``"a"`` reopens an existing
            lotsim H5MD file to resume it (header arguments below are then ignored; the file keeps its own).
        overwrite: In mode ``"w"``, replace an existing file.
        compression: ``"lzf"`` (+shuffle, default), ``"gzip"`` (+shuffle, level 4) or ``"none"``.
        flush_frames: If set, :meth:`flush` runs automatically once a group has received this many frames
            since the last flush. None: only explicit :meth:`flush`, :meth:`write_state` and :meth:`close`.
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
        flush_frames: int | None = None,
        parameters: dict | None = None,
        recipe_toml: str = "",
        seed: int | None = None,
        author: str = "lotsim user",
        lotsim_version: str = "",
        git_commit: str = "",
        unwrapped: bool = True,
    ):
        self.path = Path(path)
        self._filters = _compression_kwargs(compression)
        if flush_frames is not None and flush_frames < 1:
            raise ValueError(f"flush_frames={flush_frames} must be a positive integer or None")
        self._flush_frames = flush_frames
        self._since_flush: dict[str, int] = {}
        self._series: dict[str, _FrameSeries] = {}
        if mode == "w":
            if self.path.exists() and not overwrite:
                raise FileExistsError(f"{self.path}: file exists; pass overwrite=True to replace it")
            self._file = h5py.File(self.path, "w")
            self._write_header(parameters, recipe_toml, seed, author, lotsim_version, git_commit, unwrapped)
        elif mode == "a":
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no such file to resume")
            self._file = _open_h5md(self.path, "r+")
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
        h5md.create_group("author").attrs["name"] = _fixed(author)
        creator = h5md.create_group("creator")
        creator.attrs["name"] = _fixed("lotsim")
        creator.attrs["version"] = _fixed(lotsim_version)
        module = h5md.create_group("modules/lotsim")
        module.attrs["version"] = np.asarray(MODULE_VERSION, dtype=np.int32)
        module.attrs["phase_storage"] = _fixed("unwrapped" if unwrapped else "wrapped")
        params = f.create_group("parameters")
        _write_parameters(params, parameters or {})
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

        Raises:
            ValueError: Bad shapes/names, a name collision, or (mode ``"a"``) a group that exists with an
                incompatible layout.
        """
        _check_name(group, "particles group")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype={dtype} is not allowed; use float32 or float64")
        if n_replicas < 1 or n_nodes < 1:
            raise ValueError(f"n_replicas={n_replicas}, n_nodes={n_nodes} must be >= 1")
        observables = {
            k: (tuple(int(s) for s in v[0]), np.dtype(v[1])) for k, v in (observables or {}).items()
        }
        node_data, replica_data = dict(node_data or {}), dict(replica_data or {})
        if group in self._series:
            self._check_compatible(
                group, n_replicas, n_nodes, dtype, node_data, replica_data, edges, weights, observables
            )
            return
        if f"particles/{group}" in self._file:
            raise ValueError(f"particles group {group!r} already exists in {self.path}")
        self._validate_static(group, n_replicas, n_nodes, node_data, replica_data, edges, weights)
        for name in observables:
            _check_name(name, "observable")
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
            shape=(0, n_replicas, n_nodes),
            dtype=dtype,
            maxshape=(None, n_replicas, n_nodes),
            chunks=(cf, n_replicas, n_nodes),
            **self._filters,
        )
        value.attrs["units"] = "rad"
        column_chunk = self._multiple_chunk(cf, 8)
        step = phase.create_dataset(
            "step", shape=(0,), dtype=np.int64, maxshape=(None,), chunks=(column_chunk,), **self._filters
        )
        time = phase.create_dataset(
            "time", shape=(0,), dtype=np.float64, maxshape=(None,), chunks=(column_chunk,), **self._filters
        )
        time.make_scale("time")
        # replica/node scales live in the particles group so that its static data can share them too.
        replica = _make_scale(particles, "replica", np.arange(n_replicas, dtype=np.int64))
        node = _make_scale(particles, "node", np.arange(n_nodes, dtype=np.int64))
        _attach(value, [time, replica, node])
        _attach(step, [time])

        for name, arr in node_data.items():
            ds = particles.create_dataset(name, data=arr)
            ds.attrs["lotsim_kind"] = _fixed("node")
            _attach(ds, [replica, node] if ds.shape[:2] == (n_replicas, n_nodes) else [node])
        for name, arr in replica_data.items():
            ds = particles.create_dataset(name, data=arr)
            ds.attrs["lotsim_kind"] = _fixed("replica")
            _attach(ds, [replica])
        if edges is not None:
            conn = f.require_group("connectivity")
            e = conn.create_dataset(group, data=np.asarray(edges, dtype=np.int64))
            e.attrs["particles_group"] = particles.ref
            if weights is not None:
                conn.create_dataset(f"{group}_weights", data=np.asarray(weights, dtype=np.float64)).attrs[
                    "edges"
                ] = e.ref

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
                chunks=(self._multiple_chunk(cf, odtype.itemsize * row), n_replicas, *extra),
                **self._filters,
            )
            extras = [
                _make_scale(og, f"extra_{i}", np.arange(size, dtype=np.int64)) for i, size in enumerate(extra)
            ]
            _attach(ov, [time, replica, *extras])
            obs_values[name] = ov
        self._series[group] = _FrameSeries(phase, obs_values)
        self._since_flush[group] = 0

    @staticmethod
    def _multiple_chunk(phase_chunk: int, row_bytes: int) -> int:
        # Chunks of small per-frame datasets hold a whole number of phase chunks (aligned writes), ~256 KiB.
        frames = chunk_frames_for(1, row_bytes)
        return max(phase_chunk, frames // phase_chunk * phase_chunk)

    def _validate_static(self, group, n_replicas, n_nodes, node_data, replica_data, edges, weights) -> None:
        names = [*node_data, *replica_data]
        if len(set(names)) != len(names):
            raise ValueError(f"group {group!r}: node_data and replica_data share names {sorted(names)}")
        for name in names:
            _check_name(name, "data")
            if name in _RESERVED_NAMES:
                raise ValueError(
                    f"group {group!r}: data name {name!r} is reserved ({sorted(_RESERVED_NAMES)})"
                )
        for name, arr in node_data.items():
            shape = np.shape(arr)
            if not (shape[:1] == (n_nodes,) or shape[:2] == (n_replicas, n_nodes)):
                raise ValueError(
                    f"node_data[{name!r}] has shape {shape}; need [N={n_nodes}, ...] or "
                    f"[R={n_replicas}, N={n_nodes}, ...]"
                )
        for name, arr in replica_data.items():
            if np.shape(arr)[:1] != (n_replicas,):
                raise ValueError(
                    f"replica_data[{name!r}] has shape {np.shape(arr)}; need [R={n_replicas}, ...]"
                )
        if edges is not None:
            e = np.asarray(edges)
            if e.ndim != 2 or e.shape[1] != 2 or e.dtype.kind not in "iu":
                raise ValueError(f"edges must be an integer array [E, 2]; got {e.dtype} {e.shape}")
            if e.size and (e.min() < 0 or e.max() >= n_nodes):
                raise ValueError(f"edges hold node indices outside [0, {n_nodes})")
            if weights is not None and np.shape(weights) != (len(e),):
                raise ValueError(f"weights has shape {np.shape(weights)}; need [E={len(e)}]")
        elif weights is not None:
            raise ValueError("weights given without edges")

    def _check_compatible(
        self, group, n_replicas, n_nodes, dtype, node_data, replica_data, edges, weights, observables
    ) -> None:
        s = self._series[group]
        have = (s.n_replicas, s.n_nodes, s.value.dtype)
        if have != (n_replicas, n_nodes, dtype):
            raise ValueError(
                f"group {group!r} in {self.path} has (R, N, dtype)={have}; "
                f"asked ({n_replicas}, {n_nodes}, {dtype})"
            )
        have_obs = {k: (ds.shape[2:], ds.dtype) for k, ds in s.obs.items()}
        if have_obs != observables:
            raise ValueError(
                f"group {group!r} in {self.path} has observables {have_obs}; asked {observables}"
            )
        particles = self._file[f"particles/{group}"]
        for name, arr in {**node_data, **replica_data}.items():
            if name not in particles or not np.array_equal(particles[name][()], arr):
                raise ValueError(
                    f"group {group!r} in {self.path}: stored {name!r} differs from the one given"
                )
        conn = self._file.get("connectivity")
        for name, arr in ((group, edges), (f"{group}_weights", weights)):
            if arr is not None and (
                conn is None or name not in conn or not np.array_equal(conn[name][()], arr)
            ):
                raise ValueError(f"group {group!r} in {self.path}: stored connectivity {name!r} differs")

    def _reopen_groups(self) -> None:
        for group, particles in self._file.get("particles", {}).items():
            if "phase" not in particles:
                continue
            phase = particles["phase"]
            base = self._file.get("observables" if group == DEFAULT_GROUP else f"observables/{group}")
            obs: dict[str, h5py.Dataset] = {}
            for name, og in (base or {}).items():
                # An observable belongs to this group iff it hard-links this phase's step column.
                if (
                    isinstance(og, h5py.Group)
                    and "value" in og
                    and "step" in og
                    and og["step"].id == phase["step"].id
                ):
                    obs[name] = og["value"]
            self._series[group] = _FrameSeries(phase, obs)
            self._since_flush[group] = 0

    # -- frames -------------------------------------------------------------------------------------

    def append(
        self,
        group: str,
        steps: np.ndarray,
        times: np.ndarray,
        phase: np.ndarray,
        observables: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append k frames (buffered; written to disk in whole chunks).

        Args:
            group: Particles group declared by :meth:`add_particles` (or reopened in mode ``"a"``).
            steps: [k] integer steps, strictly increasing and after the last appended step.
            times: [k] simulation times.
            phase: [k, R, N] phases (cast to the group's dtype).
            observables: Every declared observable, each [k, R, *extra].

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
        observables = dict(observables or {})
        if set(observables) != set(s.obs):
            raise ValueError(
                f"group {group!r}: observables given {sorted(observables)}, declared {sorted(s.obs)}"
            )
        for name, v in observables.items():
            v = observables[name] = np.asarray(v)
            if v.shape != (k, *s.obs[name].shape[1:]):
                raise ValueError(f"observable {name!r}: shape {v.shape}, need {(k, *s.obs[name].shape[1:])}")
        if k == 0:
            return
        if steps.dtype.kind not in "iu":
            raise ValueError(f"steps must be integers; got {steps.dtype}")
        if np.any(np.diff(steps) <= 0) or (s.last_step is not None and steps[0] <= s.last_step):
            raise ValueError(
                f"group {group!r}: steps must increase strictly (last written {s.last_step}, "
                f"got {steps[0]}..{steps[-1]})"
            )
        s.append(steps, times, phase, observables)
        self._since_flush[group] += k
        if self._flush_frames is not None and self._since_flush[group] >= self._flush_frames:
            self.flush()

    def _get_series(self, group: str) -> _FrameSeries:
        if group not in self._series:
            raise KeyError(f"no particles group {group!r} in {self.path}; have {sorted(self._series)}")
        return self._series[group]

    def frames_written(self, group: str) -> int:
        """Frames appended to a group so far (on disk plus buffered; all on disk after flush/close)."""
        s = self._get_series(group)
        return s.n_disk + s.n_buf

    def buffered_frames(self, group: str) -> int:
        """Frames of a group held in memory, not yet written (at most one chunk)."""
        return self._get_series(group).n_buf

    def chunk_frames(self, group: str) -> int:
        """Frames per chunk of the group's phase dataset."""
        return self._get_series(group).chunk_frames

    @property
    def groups(self) -> list[str]:
        """Particles groups with a phase element."""
        return list(self._series)

    def flush(self) -> None:
        """Write every buffered frame now (a partial chunk if need be) and flush the HDF5 file."""
        for group, s in self._series.items():
            s.flush()
            self._since_flush[group] = 0
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop every frame with ``step`` greater than the given step, in all groups (used by resume).

        Args:
            step: Last step to keep, typically ``read_state(path).step``.
        """
        for s in self._series.values():
            s.truncate_after(int(step))
        self._file.flush()

    # -- resume checkpoint --------------------------------------------------------------------------

    def write_state(
        self,
        theta: np.ndarray,
        *,
        step: int,
        time: float,
        velocity: np.ndarray | None = None,
        extra: dict[str, np.ndarray | bytes] | None = None,
    ) -> None:
        """Store the resume checkpoint at ``/lotsim/state`` (overwrites the previous one).

        Pending frames are flushed first, so the checkpoint is consistent with the frames on disk.

        Args:
            theta: Full-precision phases (e.g. [R, N] float64); stored with their own dtype.
            step: Integrator step of ``theta``.
            time: Simulation time of ``theta``.
            velocity: Optional phase velocities (inertial dynamics).
            extra: Small named arrays (e.g. RNG state); ``bytes`` values round-trip as ``bytes``.
        """
        self.flush()
        state = self._file.require_group("lotsim/state")
        self._put(state, "theta", np.asarray(theta))
        if velocity is not None:
            self._put(state, "velocity", np.asarray(velocity))
        elif "velocity" in state:
            del state["velocity"]
        extra_group = state.require_group("extra")
        extra = dict(extra or {})
        for name in set(extra_group) - set(extra):
            del extra_group[name]
        for name, value in extra.items():
            _check_name(name, "extra")
            is_bytes = isinstance(value, bytes | bytearray)
            arr = np.frombuffer(bytes(value), dtype=np.uint8) if is_bytes else np.asarray(value)
            self._put(extra_group, name, arr).attrs["bytes"] = is_bytes
        groups = list(self._series)
        state.attrs["step"] = np.int64(step)
        state.attrs["time"] = np.float64(time)
        state.attrs["groups"] = np.array([g.encode() for g in groups] or [b""], dtype="S")
        state.attrs["frames_written"] = np.array(
            [self._series[g].n_disk for g in groups] or [0], dtype=np.int64
        )
        self._file.flush()

    @staticmethod
    def _put(group: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
        # Overwrite in place when the layout matches: deleting datasets leaks file space on every checkpoint.
        if name in group:
            ds = group[name]
            if ds.shape == arr.shape and ds.dtype == arr.dtype:
                ds[...] = arr
                return ds
            del group[name]
        return group.create_dataset(name, data=arr)

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


# ------------------------------------------------------------------------------------------ reader


def read_state(path: str | Path) -> ResumeState:
    """Read the resume checkpoint written by :meth:`TrajectoryWriter.write_state`.

    Args:
        path: H5MD file.

    Returns:
        The :class:`ResumeState`.

    Raises:
        H5MDFormatError: Not an H5MD 1.1 file, or no ``/lotsim/state`` in it.
    """
    with _open_h5md(path) as f:
        if "lotsim/state/theta" not in f:
            raise H5MDFormatError(f"{path}: no /lotsim/state checkpoint (never written with write_state)")
        state = f["lotsim/state"]
        extra: dict[str, Any] = {}
        for name, ds in state.get("extra", {}).items():
            extra[name] = ds[()].tobytes() if bool(ds.attrs.get("bytes", False)) else ds[()]
        groups = [g.decode() for g in state.attrs["groups"] if g]
        counts = [int(n) for n in state.attrs["frames_written"]]
        return ResumeState(
            theta=state["theta"][()],
            velocity=state["velocity"][()] if "velocity" in state else None,
            step=int(state.attrs["step"]),
            time=float(state.attrs["time"]),
            extra=extra,
            frames_written=dict(zip(groups, counts)),
        )


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
        self.parameters: dict[str, Any] = _read_parameters(file["parameters"]) if "parameters" in file else {}
        module = file.get("h5md/modules/lotsim")
        storage = (
            _text(module.attrs.get("phase_storage", b"unwrapped")) if module is not None else "unwrapped"
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
        if not isinstance(ds, h5py.Dataset) or _text(ds.attrs.get("lotsim_kind", b"")) != kind:
            names = [
                n
                for n, d in particles.items()
                if isinstance(d, h5py.Dataset) and _text(d.attrs.get("lotsim_kind", b"")) == kind
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
    return Trajectory(_open_h5md(path))
