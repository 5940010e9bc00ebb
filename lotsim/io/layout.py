"""The H5MD 1.1 file layout of lotsim trajectories: names, attributes, versions, small HDF5 helpers.

One self-describing HDF5 file per run (R replicas of N oscillators, ``frame`` the time axis)::

    /h5md                              version=[1,1]
        author/                        name (fixed-length bytes)
        creator/                       name=b"lotsim", version (fixed-length bytes)
        modules/lotsim/                version=[0,2] (the file format), phase_storage=b"unwrapped"|b"wrapped"
    /particles/<group>/                N particles = the oscillators (nodes)
        box/                           dimension=1, boundary=[b"periodic"]; dataset edges=[2π]
        phase/value   [frame, node, replica] float32|float64, attr unit=b"rad" (chunked on frames)
        phase/step    [frame] int64     explicit mode, strictly increasing
        phase/time    [frame] float64   dimension scale "time"
        node          [node] int64      dimension scale "node" (= arange)
        <name>        node data [node, ...] or [node, replica, ...]   (attr lotsim_kind=b"node")
        replica       [replica] int64   dimension scale "replica" (= arange)          lotsim extension
        <name>        replica data [replica, ...]   (attr lotsim_kind=b"replica")    lotsim extension
        <name>_axis<i>  dimension scale (= arange) of any further axis of static data
    /connectivity/<group>              [edge, 2] int64 tuples (sender, receiver), attr particles_group
    /observables/<name>/               observables of the group "oscillators"
    /observables/<group>/<name>/       observables of every other group (e.g. "layer_00")
        value [frame, replica, ...extra]; step, time hard links to /particles/<group>/phase/{step,time};
        replica hard link to /particles/<group>/replica; extra_<i> scales (= arange) for extra axes
    /parameters                        attrs recipe_toml, seed, lotsim_version, git_commit, flat scalars;
                                       nested dicts as subgroups (None values skipped)
    /lotsim/edge_weights/<group>       [edge] float64 weights of /connectivity/<group> (attr edges -> it)
    /lotsim/state/                     resume checkpoint (:mod:`lotsim.io.resume`)

H5MD conformance: in a particles group the particle index is the second axis of a time-dependent
``value`` and the first axis of static data; connectivity holds only particle tuples with
``particles_group``; units are the attribute ``unit``. The replica axis (a batch of independent
systems: couplings x seeds) is a lotsim extension: per-replica data and its ``replica`` scale are
tagged ``lotsim_kind = "replica"``; edge weights, which are not particle tuples, live under ``/lotsim``.
In memory lotsim holds arrays replica before node ([frame, R, N], [R, N]); the writer and the reader
translate, so callers never see the file's axis order.

Observables rule: the simulator's single group is named ``"oscillators"`` and its observables live
where H5MD readers look first, ``/observables/<name>``; any other group (training telemetry: one group
per layer) is namespaced as ``/observables/<group>/<name>`` (H5MD allows per-group subgroups). A name that
would collide under this rule (an ``oscillators`` observable named like another group) is refused.

Every axis of every dataset has a dimension scale attached (netCDF tools refuse a dataset that mixes
named and anonymous axes), so ``xarray.open_dataset(path, engine="h5netcdf",
group="particles/oscillators/phase")`` yields ``value(time, node, replica)`` with coordinates, and the
particles group opens the same way.

Format history: 0.1 stored ``phase/value`` as [frame, replica, node], per-replica node data as
[replica, node], the unit attribute as ``units``, the lattice coordinates as ``position`` and the edge
weights as ``/connectivity/<group>_weights``. The reader still reads such files (it finds the axis order
from the dimension labels), and the writer resumes them in their own layout.

This module imports numpy and h5py only (never torch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks to respect
    fcntl = None

H5MD_VERSION = (1, 1)
MODULE_VERSION = (0, 2)
"""lotsim's file format version (``/h5md/modules/lotsim`` attribute ``version``)."""
DEFAULT_GROUP = "oscillators"
CHUNK_BYTES = 256 * 1024
MAX_CHUNK_FRAMES = 4096
GZIP_LEVEL = 4
COMPRESSIONS = ("lzf", "gzip", "none")
RESERVED_NAMES = {"box", "phase", "replica", "node"}
EDGE_WEIGHTS = "lotsim/edge_weights"


class H5MDFormatError(ValueError):
    """The file is missing, not HDF5, or not an H5MD 1.1 file. The message is one line naming the path."""


class OutputExistsError(FileExistsError, ValueError):
    """The output file exists, or another process is writing it. The message is one line naming the path."""


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


def observables_base(group: str) -> str:
    """The HDF5 group holding a particles group's observables (``observable_path`` without the name)."""
    return "observables" if group == DEFAULT_GROUP else f"observables/{group}"


def fixed_string(text: str) -> np.bytes_:
    """A fixed-length string attribute value (H5MD asks for them; a Python str would be variable-length)."""
    return np.bytes_((text or " ").encode())  # never zero-length


def text(value: Any) -> str:
    """An attribute value read back as ``str``."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode()
    return str(value)


def compression_kwargs(compression: str | None) -> dict[str, Any]:
    """h5py ``create_dataset`` filter arguments for a compression name (see ``COMPRESSIONS``)."""
    if compression is None or compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    raise ValueError(f"compression={compression!r} is not allowed; use one of {', '.join(COMPRESSIONS)}")


def check_name(name: str, what: str) -> None:
    """Refuse names that are not a single HDF5 path component."""
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


def write_parameters(group: h5py.Group, params: Mapping[str, Any]) -> None:
    """Store a nested dict as attributes (scalars, lists) and subgroups (dicts); None values are skipped."""
    for key, value in params.items():
        check_name(str(key), "parameter")
        if value is None:
            continue
        if isinstance(value, Mapping):
            write_parameters(group.require_group(str(key)), value)
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


def read_parameters(group: h5py.Group) -> dict[str, Any]:
    """The nested dict stored by :func:`write_parameters` (HDF5 arrays come back as lists)."""
    out: dict[str, Any] = {key: _python_value(value) for key, value in group.attrs.items()}
    for key, child in group.items():
        if isinstance(child, h5py.Group):
            out[key] = read_parameters(child)
    return out


def validate_static(group, n_replicas, n_nodes, node_data, replica_data, edges, weights) -> None:
    """Refuse static data of a particles group whose names or shapes break the layout (arrays in memory order)."""
    names = [*node_data, *replica_data]
    if len(set(names)) != len(names):
        raise ValueError(f"group {group!r}: node_data and replica_data share names {sorted(names)}")
    for name in names:
        check_name(name, "data")
        if name in RESERVED_NAMES:
            raise ValueError(f"group {group!r}: data name {name!r} is reserved ({sorted(RESERVED_NAMES)})")
    for name, arr in node_data.items():
        shape = np.shape(arr)
        if not (shape[:1] == (n_nodes,) or shape[:2] == (n_replicas, n_nodes)):
            raise ValueError(
                f"node_data[{name!r}] has shape {shape}; need [N={n_nodes}, ...] or "
                f"[R={n_replicas}, N={n_nodes}, ...]"
            )
    for name, arr in replica_data.items():
        if np.shape(arr)[:1] != (n_replicas,):
            raise ValueError(f"replica_data[{name!r}] has shape {np.shape(arr)}; need [R={n_replicas}, ...]")
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


def make_scale(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """Create ``group/name`` holding ``data`` and make it a dimension scale named ``name``."""
    ds = group.create_dataset(name, data=data)
    ds.make_scale(name)
    return ds


def attach_scales(ds: h5py.Dataset, scales: list[h5py.Dataset]) -> None:
    """Attach one scale per leading axis of ``ds`` and label the axis with the scale's name."""
    for axis, scale in enumerate(scales):
        ds.dims[axis].attach_scale(scale)
        ds.dims[axis].label = scale.name.rsplit("/", 1)[-1]


def particle_axis(ds: h5py.Dataset) -> int | None:
    """The axis of ``ds`` labelled ``node`` (the particle index), or None."""
    labels = [dim.label for dim in ds.dims]
    return labels.index("node") if "node" in labels else None


def module_version(f: h5py.File) -> tuple[int, int]:
    """lotsim's file format version of an open file (``(0, 1)`` for files that predate the attribute)."""
    module = f.get("h5md/modules/lotsim")
    version = tuple(int(v) for v in np.ravel(module.attrs.get("version", [0, 1]))) if module is not None else ()
    return version if len(version) == 2 else (0, 1)


def open_h5md(path: str | Path, mode: str = "r") -> h5py.File:
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
    if module_version(f) > MODULE_VERSION:
        fmt = ".".join(map(str, module_version(f)))
        f.close()
        raise H5MDFormatError(f"{path}: lotsim file format {fmt} is newer than this lotsim reads "
                              f"({'.'.join(map(str, MODULE_VERSION))}); upgrade lotsim")
    return f


def create_h5md(path: Path, overwrite: bool) -> h5py.File:
    """Create a new file at ``path``, never truncating one that another process has open.

    ``overwrite`` removes an existing file only after taking the lock HDF5 writers hold (an exclusive
    ``flock``), so a file that a running writer holds is refused, untouched; the new file is then created
    exclusively, so of two writers started on the same path at once exactly one wins.
    """
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory; give a file path")
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"{path}: file exists; pass overwrite=True to replace it")
        _remove_unless_locked(path)
    try:
        return h5py.File(path, "w-")
    except FileExistsError:
        raise OutputExistsError(
            f"{path}: another process created this file just now (two runs writing the same output?)"
        ) from None


def _remove_unless_locked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputExistsError(
                    f"{path}: another process is writing this file (a running lotsim run?); not replaced"
                ) from None
        os.unlink(path)  # under the lock: no writer can open the old file in between
    finally:
        os.close(fd)
