"""H5MD trajectory layer: round trip, flat memory, crash safety, resume, errors, layout details."""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from lotsim.io import (
    H5MDFormatError,
    OutputExistsError,
    TrajectoryWriter,
    chunk_frames_for,
    observable_path,
    open_trajectory,
    read_state,
)

REPO = Path(__file__).resolve().parents[1]


def _frames(start: int, stop: int, n_replicas: int, n_nodes: int, dtype=np.float32):
    """Deterministic frames ``start..stop-1``: steps [k], times [k], phase [k, R, N], r [k, R]."""
    i = np.arange(start, stop)
    steps = 10 * i
    times = 0.05 * i
    phase = (0.37 * i[:, None, None] + np.arange(n_replicas)[:, None] + 0.01 * np.arange(n_nodes)).astype(
        dtype
    )
    r = np.abs(np.exp(1j * phase.astype(np.float64)).mean(axis=-1))
    return steps, times, phase, r


def _append_range(w, group, start, stop, block, n_replicas, n_nodes, dtype=np.float32, with_r=True):
    """Append frames ``start..stop-1`` in blocks; returns the frames left buffered by the last append."""
    buffered = 0
    for a in range(start, stop, block):
        steps, times, phase, r = _frames(a, min(a + block, stop), n_replicas, n_nodes, dtype)
        buffered = w.append(group, steps, times, phase, {"order_parameter": r} if with_r else None)
    return buffered


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_three_groups(tmp_path):
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    omega = rng.normal(size=(3, 16))
    position = rng.random((16, 2))
    edges = np.array([[i, (i + 1) % 16] for i in range(16)])
    weights = rng.random(16)
    params = {"dt": 0.01, "lattice": {"topology": "ring", "n": 16, "skip": None, "shape": [4, 4]}, "tag": "x"}
    recipe = '[lattice]\ntopology = "ring"\nn = 16\n'
    with TrajectoryWriter(path, parameters=params, recipe_toml=recipe, seed=7, git_commit="abc123") as w:
        w.add_particles(
            "oscillators",
            n_replicas=3,
            n_nodes=16,
            node_data={"natural_frequency": omega, "position": position, "id": np.arange(16)},
            replica_data={"coupling": np.array([0.5, 1.0, 2.0]), "seed": np.array([1, 2, 3])},
            edges=edges,
            weights=weights,
            observables={"order_parameter": ((), np.float64), "local_order": ((16,), np.float32)},
        )
        w.add_particles(
            "layer_00",
            n_replicas=2,
            n_nodes=8,
            dtype=np.float64,
            observables={"order_parameter": ((), np.float64)},
        )
        w.add_particles("layer_01", n_replicas=1, n_nodes=5, edges=np.array([[0, 1], [3, 4]]))
        for a in range(0, 50, 6):  # awkward block sizes, groups interleaved
            steps, times, phase, r = _frames(a, min(a + 6, 50), 3, 16)
            w.append("oscillators", steps, times, phase, {"order_parameter": r, "local_order": np.cos(phase)})
        _append_range(w, "layer_00", 0, 33, 5, 2, 8, np.float64)
        _append_range(w, "layer_01", 0, 9, 4, 1, 5, with_r=False)

    with open_trajectory(path) as t:
        assert t.n_frames == 50
        assert sorted(t.groups) == ["layer_00", "layer_01", "oscillators"]
        steps, times, phase, r = _frames(0, 50, 3, 16)
        assert isinstance(t.phase.dataset, h5py.Dataset) and t.phase.shape == (50, 3, 16)
        np.testing.assert_array_equal(t.phase[()], phase)
        np.testing.assert_array_equal(t.steps, steps)
        np.testing.assert_array_equal(t.times, times)
        np.testing.assert_array_equal(t.observable("order_parameter")[()], r)
        np.testing.assert_array_equal(t.observable("local_order")[()], np.cos(phase))
        assert sorted(t.observable_names) == ["local_order", "order_parameter"]
        np.testing.assert_array_equal(t.node_data("natural_frequency"), omega)
        np.testing.assert_array_equal(t.node_data("position"), position)
        np.testing.assert_array_equal(t.node_data("id"), np.arange(16))
        np.testing.assert_array_equal(t.replica_data("coupling"), [0.5, 1.0, 2.0])
        np.testing.assert_array_equal(t.replica_data("seed"), [1, 2, 3])
        e, wts = t.edges
        np.testing.assert_array_equal(e, edges)
        np.testing.assert_array_equal(wts, weights)
        assert (t.n_frames, t.n_replicas, t.n_nodes) == (50, 3, 16)

        steps, times, phase, r = _frames(0, 33, 2, 8, np.float64)
        assert t.group("layer_00").phase.dtype == np.float64
        np.testing.assert_array_equal(t.group("layer_00").phase[()], phase)
        np.testing.assert_array_equal(t.group("layer_00").steps, steps)
        np.testing.assert_array_equal(t.observable("order_parameter", "layer_00")[()], r)
        assert t.group("layer_00").observable_names == ["order_parameter"]
        steps, times, phase, _ = _frames(0, 9, 1, 5)
        np.testing.assert_array_equal(t.group("layer_01").phase[()], phase)
        np.testing.assert_array_equal(t.group("layer_01").times, times)
        assert t.group("layer_01").observable_names == []
        e, wts = t.group("layer_01").edges
        np.testing.assert_array_equal(e, [[0, 1], [3, 4]])
        assert wts is None

        blocks = list(t.iter_frames("oscillators", chunk_frames=7))
        assert [b[0] for b in blocks][-1] == slice(49, 50)
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), t.phase[()])

        p = t.parameters
        assert p["dt"] == 0.01 and p["tag"] == "x"
        assert p["lattice"] == {"topology": "ring", "n": 16, "shape": [4, 4]}  # None skipped
        assert p["recipe_toml"] == t.recipe_toml == recipe
        assert (p["seed"], p["git_commit"], p["lotsim_version"]) == (7, "abc123", "0.1.0")
        assert t.unwrapped is True
        with pytest.raises(KeyError, match="no particles group 'nope'"):
            t.group("nope")
        with pytest.raises(KeyError, match="no observable"):
            t.observable("missing")
        with pytest.raises(KeyError, match="no node data"):
            t.node_data("coupling")


def test_layout_header_box_scales_and_hard_links(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, author="Ada", lotsim_version="9.9", unwrapped=False) as w:
        w.add_particles(
            "oscillators",
            n_replicas=2,
            n_nodes=4,
            edges=np.array([[0, 1]]),
            weights=[2.0],
            node_data={"natural_frequency": np.zeros(4)},
            observables={"order_parameter": ((), np.float64)},
        )
        w.add_particles(
            "layer_00", n_replicas=1, n_nodes=3, observables={"order_parameter": ((), np.float64)}
        )
        _append_range(w, "oscillators", 0, 5, 5, 2, 4)
        _append_range(w, "layer_00", 0, 3, 3, 1, 3)

    with h5py.File(path, "r") as f:
        h5md = f["h5md"]
        np.testing.assert_array_equal(h5md.attrs["version"], [1, 1])
        for obj, key, text in [
            (h5md["author"], "name", b"Ada"),
            (h5md["creator"], "name", b"lotsim"),
            (h5md["creator"], "version", b"9.9"),
        ]:
            assert obj.attrs[key] == text
            assert obj.attrs.get_id(key).get_type().is_variable_str() is False  # fixed-length, as H5MD asks
        module = h5md["modules/lotsim"]
        np.testing.assert_array_equal(module.attrs["version"], [0, 2])
        assert module.attrs["phase_storage"] == b"wrapped"

        box = f["particles/oscillators/box"]
        assert box.attrs["dimension"] == 1
        assert box.attrs["boundary"].dtype == np.dtype("S8")
        assert list(box.attrs["boundary"]) == [b"periodic"]
        np.testing.assert_allclose(box["edges"][()], [2 * math.pi])

        phase = f["particles/oscillators/phase"]
        value = phase["value"]
        assert [value.dims[i].label for i in range(3)] == ["time", "node", "replica"]  # H5MD: particle 2nd
        assert h5py.h5ds.is_attached(value.id, phase["time"].id, 0)
        assert h5py.h5ds.is_attached(value.id, f["particles/oscillators/node"].id, 1)
        assert h5py.h5ds.is_attached(value.id, f["particles/oscillators/replica"].id, 2)
        assert list(value.dims[0].keys()) == ["time"]
        assert value.maxshape == (None, 4, 2)
        assert value.chunks == (chunk_frames_for(4, 8), 4, 2)
        assert value.attrs["unit"] == "rad" and "units" not in value.attrs
        np.testing.assert_array_equal(value[()], _frames(0, 5, 2, 4)[2].transpose(0, 2, 1))
        assert (value.compression, value.shuffle) == ("lzf", True)
        assert phase["step"].dtype == np.int64 and phase["time"].dtype == np.float64

        obs = f["observables/order_parameter"]
        assert observable_path("order_parameter", "oscillators") == "/observables/order_parameter"
        assert obs["step"].id == phase["step"].id and obs["time"].id == phase["time"].id  # hard links
        assert obs["value"].shape == (5, 2)
        layer = f["observables/layer_00/order_parameter"]
        assert layer["step"].id == f["particles/layer_00/phase/step"].id
        assert layer["time"].id == f["particles/layer_00/phase/time"].id

        conn = f["connectivity/oscillators"]
        assert f[conn.attrs["particles_group"]].name == "/particles/oscillators"
        assert list(f["connectivity"]) == ["oscillators"]  # only particle tuples
        weights = f["lotsim/edge_weights/oscillators"]
        assert f[weights.attrs["edges"]].name == "/connectivity/oscillators" and weights[()].tolist() == [2.0]

    with open_trajectory(path) as t:
        assert t.unwrapped is False


# ------------------------------------------------------------------------------------------ streaming


def test_append_keeps_memory_flat(tmp_path):
    n_nodes, block, n_frames = 1024, 7, 20_000
    base = np.random.default_rng(0).random((block, 1, n_nodes), dtype=np.float32) * np.float32(2 * np.pi)
    ones = np.ones((block, 1))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with TrajectoryWriter(tmp_path / "big.h5") as w:
        w.add_particles(
            "oscillators", n_replicas=1, n_nodes=n_nodes, observables={"order_parameter": ((), np.float64)}
        )
        chunk = chunk_frames_for(4, n_nodes)
        assert chunk == 64  # 256 KiB / (4 B * 1024)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            most_buffered = 0
            for b in range(n_frames // block + 1):
                steps = np.arange(b * block, (b + 1) * block)
                buffered = w.append(
                    "oscillators", steps, 0.01 * steps, base + np.float32(1e-3 * b), {"order_parameter": ones}
                )
                most_buffered = max(most_buffered, buffered)
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
        frames = int(steps[-1]) + 1
    raw = frames * n_nodes * 4
    assert frames == (n_frames // block + 1) * block
    assert most_buffered < chunk <= chunk + block
    assert peak < 2 * 2**20, f"numpy/python allocations peaked at {peak / 2**20:.1f} MiB"
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    assert rss_growth < raw / 3, f"peak RSS grew by {rss_growth / 2**20:.0f} MiB for {raw / 2**20:.0f} MiB"
    with open_trajectory(tmp_path / "big.h5") as t:
        assert t.n_frames == frames
        assert t.phase.dataset.chunks[0] == chunk
        np.testing.assert_array_equal(t.steps, np.arange(frames))
        np.testing.assert_array_equal(t.phase[-block:], base + np.float32(1e-3 * (n_frames // block)))


def test_writes_are_chunk_aligned_after_partial_flush(tmp_path):
    with TrajectoryWriter(tmp_path / "a.h5") as w:
        w.add_particles(
            "oscillators", n_replicas=4, n_nodes=4096, observables={"order_parameter": ((), float)}
        )
        assert chunk_frames_for(4, 4 * 4096) == 4
        assert _append_range(w, "oscillators", 0, 3, 3, 4, 4096) == 3
        w.flush()  # partial chunk: 3 frames on disk
        assert _append_range(w, "oscillators", 3, 4, 1, 4, 4096) == 0  # frame 3 completed the chunk boundary
        assert _append_range(w, "oscillators", 4, 15, 11, 4, 4096) == 3  # 8 frames went to disk, 3 wait
    with open_trajectory(tmp_path / "a.h5") as t:
        assert t.phase.dataset.chunks[0] == 4
        np.testing.assert_array_equal(t.phase[()], _frames(0, 15, 4, 4096)[2])


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_compression_options(tmp_path, compression):
    path = tmp_path / f"{compression}.h5"
    with TrajectoryWriter(path, compression=compression) as w:
        w.add_particles("oscillators", n_replicas=2, n_nodes=32, observables={"order_parameter": ((), float)})
        _append_range(w, "oscillators", 0, 100, 9, 2, 32)
    with open_trajectory(path) as t:
        assert t.phase.dataset.compression == {"none": None}.get(compression, compression)
        assert t.phase.dataset.shuffle is (compression != "none")
        np.testing.assert_array_equal(t.phase[()], _frames(0, 100, 2, 32)[2])
        np.testing.assert_array_equal(t.observable("order_parameter")[()], _frames(0, 100, 2, 32)[3])
    with pytest.raises(ValueError, match="compression='zstd' is not allowed"):
        TrajectoryWriter(tmp_path / "x.h5", compression="zstd")


# ------------------------------------------------------------------------------------ crash and resume


def test_killed_run_is_readable_up_to_last_flush(tmp_path):
    path = tmp_path / "killed.h5"
    proc = _run_python(f"""
        import os, signal
        import numpy as np
        from lotsim.io import TrajectoryWriter
        from test_h5md import _append_range
        w = TrajectoryWriter({str(path)!r})
        obs = {{"order_parameter": ((), float)}}
        w.add_particles("oscillators", n_replicas=2, n_nodes=16, observables=obs)
        for a in range(0, 105, 35):
            _append_range(w, "oscillators", a, a + 35, 7, 2, 16)
            w.flush()
        w.write_state(np.full((2, 16), 1.5), step=1040, time=5.2, extra={{"rng": b"\\x00\\x01seed"}})
        _append_range(w, "oscillators", 105, 118, 13, 2, 16)  # buffered, never flushed
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -9, proc.stderr
    with open_trajectory(path) as t:
        assert t.n_frames == 105
        steps, times, phase, r = _frames(0, 105, 2, 16)
        np.testing.assert_array_equal(t.steps, steps)
        np.testing.assert_array_equal(t.phase[()], phase)
        np.testing.assert_array_equal(t.observable("order_parameter")[()], r)
    state = read_state(path)
    assert (state.step, state.time, state.frames_written) == (1040, 5.2, {"oscillators": 105})
    np.testing.assert_array_equal(state.theta, np.full((2, 16), 1.5))
    assert state.velocity is None and state.extra == {"rng": b"\x00\x01seed"}


def _uninterrupted(path, n_frames):
    with TrajectoryWriter(path) as w:
        w.add_particles("oscillators", n_replicas=3, n_nodes=40, observables={"order_parameter": ((), float)})
        w.add_particles("layer_00", n_replicas=1, n_nodes=4)
        _append_range(w, "oscillators", 0, n_frames, 5, 3, 40)
        _append_range(w, "layer_00", 0, n_frames, 5, 1, 4, with_r=False)


def _assert_same_frames(a, b):
    with open_trajectory(a) as ta, open_trajectory(b) as tb:
        for g in ("oscillators", "layer_00"):
            np.testing.assert_array_equal(ta.group(g).steps, tb.group(g).steps)
            np.testing.assert_array_equal(ta.group(g).times, tb.group(g).times)
            np.testing.assert_array_equal(ta.group(g).phase[()], tb.group(g).phase[()])
        np.testing.assert_array_equal(
            ta.observable("order_parameter")[()], tb.observable("order_parameter")[()]
        )
        assert ta.phase.dataset.chunks == tb.phase.dataset.chunks


def test_resume_equals_uninterrupted_run(tmp_path):
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    _uninterrupted(ref, 100)

    with TrajectoryWriter(run) as w:
        w.add_particles("oscillators", n_replicas=3, n_nodes=40, observables={"order_parameter": ((), float)})
        w.add_particles("layer_00", n_replicas=1, n_nodes=4)
        _append_range(w, "oscillators", 0, 40, 5, 3, 40)
        _append_range(w, "layer_00", 0, 40, 5, 1, 4, with_r=False)
        theta = np.random.default_rng(1).random((3, 40))
        w.write_state(theta, step=390, time=1.95, velocity=-theta, extra={"counter": np.int64(4)})
        _append_range(w, "oscillators", 40, 47, 7, 3, 40)  # frames past the checkpoint: to be dropped
        _append_range(w, "layer_00", 40, 43, 3, 1, 4, with_r=False)
        w.flush()

    state = read_state(run)
    assert (state.step, state.time) == (390, 1.95)
    np.testing.assert_array_equal(state.theta, theta)
    np.testing.assert_array_equal(state.velocity, -theta)
    assert state.extra["counter"] == 4
    with open_trajectory(run) as t:
        assert t.group("oscillators").n_frames == 47
    with TrajectoryWriter(run, mode="a") as w:
        w.truncate_after(state.step)
    with open_trajectory(run) as t:
        assert t.group("oscillators").n_frames == t.group("layer_00").n_frames == 40
    with TrajectoryWriter(run, mode="a") as w:
        with pytest.raises(ValueError, match="steps must increase"):
            w.append("oscillators", *_frames(39, 40, 3, 40)[:3], {"order_parameter": np.zeros((1, 3))})
        _append_range(w, "oscillators", 40, 100, 5, 3, 40)
        _append_range(w, "layer_00", 40, 100, 5, 1, 4, with_r=False)
    _assert_same_frames(ref, run)


def test_resume_after_sigkill(tmp_path):
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    _uninterrupted(ref, 60)
    proc = _run_python(f"""
        import os, signal
        import numpy as np
        from lotsim.io import TrajectoryWriter
        from test_h5md import _append_range
        w = TrajectoryWriter({str(run)!r})
        obs = {{"order_parameter": ((), float)}}
        w.add_particles("oscillators", n_replicas=3, n_nodes=40, observables=obs)
        w.add_particles("layer_00", n_replicas=1, n_nodes=4)
        _append_range(w, "oscillators", 0, 30, 5, 3, 40)
        _append_range(w, "layer_00", 0, 30, 5, 1, 4, with_r=False)
        w.write_state(np.zeros((3, 40)), step=290, time=1.45)
        _append_range(w, "oscillators", 30, 33, 3, 3, 40)
        _append_range(w, "layer_00", 30, 31, 1, 1, 4, with_r=False)
        w.flush()
        _append_range(w, "oscillators", 33, 35, 2, 3, 40)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -9, proc.stderr
    state = read_state(run)
    with TrajectoryWriter(run, mode="a") as w:
        assert sorted(w.groups) == ["layer_00", "oscillators"]
        with pytest.raises(ValueError, match="already exists"):
            w.add_particles("oscillators", n_replicas=3, n_nodes=40)
        w.truncate_after(state.step)
        _append_range(w, "oscillators", 30, 60, 5, 3, 40)
        _append_range(w, "layer_00", 30, 60, 5, 1, 4, with_r=False)
    _assert_same_frames(ref, run)


def test_sigkill_after_many_unflushed_chunks_keeps_the_checkpoint_and_resumes(tmp_path):
    # The simulator checkpoints (flushes) only every few seconds of work: between two checkpoints the
    # writer writes whole chunks (HDF5 allocates, compresses, evicts) without flushing. A SIGKILL there
    # must leave the file as of the last flush, and resuming from it must equal an uninterrupted run.
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    n_nodes, total = 1024, 3300  # float32: 64 frames per chunk, ~50 chunks written after the checkpoint
    with TrajectoryWriter(ref) as w:
        w.add_particles("oscillators", n_replicas=2, n_nodes=n_nodes, observables={"order_parameter": ((), float)})
        _append_range(w, "oscillators", 0, total, 64, 2, n_nodes)
    proc = _run_python(f"""
        import os, signal
        import numpy as np
        from lotsim.io import TrajectoryWriter
        from test_h5md import _append_range
        w = TrajectoryWriter({str(run)!r})
        w.add_particles("oscillators", n_replicas=2, n_nodes={n_nodes}, observables={{"order_parameter": ((), float)}})
        _append_range(w, "oscillators", 0, 200, 64, 2, {n_nodes})
        w.write_state(np.zeros((2, {n_nodes})), step=1990, time=9.95)
        assert _append_range(w, "oscillators", 200, 3300, 64, 2, {n_nodes}) < 64
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -9, proc.stderr
    with open_trajectory(run) as t:
        assert t.n_frames == 200
        np.testing.assert_array_equal(t.phase[()], _frames(0, 200, 2, n_nodes)[2])
    state = read_state(run)
    assert state.step == 1990 and state.frames_written == {"oscillators": 200}
    with TrajectoryWriter(run, mode="a") as w:
        w.truncate_after(state.step)
        _append_range(w, "oscillators", 200, total, 64, 2, n_nodes)
    with open_trajectory(ref) as a, open_trajectory(run) as b:
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_array_equal(a.phase[()], b.phase[()])
        np.testing.assert_array_equal(a.observable("order_parameter")[()], b.observable("order_parameter")[()])


# ------------------------------------------------------------------------------------------- errors


def test_open_errors_are_one_line_and_name_the_path(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5\n")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.create_group("h5md").attrs["version"] = [1, 0]
    missing = tmp_path / "missing.h5"
    for path, why in [
        (text, "not an HDF5 file"),
        (plain, "no /h5md group"),
        (old, "version \\[1, 0\\]"),
        (missing, "no such file"),
    ]:
        for opener in (open_trajectory, read_state):
            with pytest.raises(H5MDFormatError, match=why) as info:
                opener(path)
            assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert issubclass(H5MDFormatError, ValueError)

    nostate = tmp_path / "nostate.h5"
    with TrajectoryWriter(nostate) as w:
        w.add_particles("oscillators", n_replicas=1, n_nodes=2)
    with pytest.raises(H5MDFormatError, match="no /lotsim/state"):
        read_state(nostate)


def test_writer_refuses_bad_input(tmp_path):
    path = tmp_path / "a.h5"
    with TrajectoryWriter(path) as w:
        w.add_particles("oscillators", n_replicas=2, n_nodes=3, observables={"order_parameter": ((), float)})
        steps, times, phase, r = _frames(0, 4, 2, 3)
        with pytest.raises(ValueError, match="phase \\[k, 2, 3\\]"):
            w.append("oscillators", steps, times, phase[:, :1], {"order_parameter": r})
        with pytest.raises(ValueError, match="observables given"):
            w.append("oscillators", steps, times, phase)
        with pytest.raises(ValueError, match="increase strictly"):
            w.append("oscillators", steps[::-1], times, phase, {"order_parameter": r})
        with pytest.raises(KeyError, match="no particles group"):
            w.append("layer_00", steps, times, phase)
        with pytest.raises(ValueError, match="node_data\\['omega'\\] has shape"):
            w.add_particles("layer_00", n_replicas=2, n_nodes=3, node_data={"omega": np.zeros(4)})
        with pytest.raises(ValueError, match="reserved"):
            w.add_particles("layer_00", n_replicas=2, n_nodes=3, node_data={"phase": np.zeros(3)})
        with pytest.raises(ValueError, match="outside"):
            w.add_particles("layer_00", n_replicas=2, n_nodes=3, edges=np.array([[0, 3]]))
        with pytest.raises(ValueError, match="already exists"):
            w.add_particles("order_parameter", n_replicas=1, n_nodes=1, observables={"r": ((), float)})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TrajectoryWriter(path)
    TrajectoryWriter(path, overwrite=True).close()
    with pytest.raises(FileNotFoundError):
        TrajectoryWriter(tmp_path / "missing.h5", mode="a")


def test_overwrite_never_touches_a_file_another_process_is_writing(tmp_path):
    path = tmp_path / "busy.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from lotsim.io import TrajectoryWriter
            from test_h5md import _append_range
            w = TrajectoryWriter({str(path)!r})
            w.add_particles("oscillators", n_replicas=2, n_nodes=8, observables={{"order_parameter": ((), float)}})
            _append_range(w, "oscillators", 0, 10, 5, 2, 8)
            w.flush()
            print("ready", flush=True)
            sys.stdin.read()  # hold the file open until told to finish
            _append_range(w, "oscillators", 10, 20, 5, 2, 8)
            w.close()
        """)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        size = path.stat().st_size
        with pytest.raises(OutputExistsError, match="another process is writing this file") as info:
            TrajectoryWriter(path, overwrite=True)
        assert str(path) in str(info.value) and isinstance(info.value, ValueError)
        with pytest.raises(OutputExistsError, match="file exists"):
            TrajectoryWriter(path)
        assert path.stat().st_size == size
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    with open_trajectory(path) as t:  # the holder's run is whole
        np.testing.assert_array_equal(t.phase[()], _frames(0, 20, 2, 8)[2])
    TrajectoryWriter(path, overwrite=True).close()  # nobody holds it now: replaced
    with open_trajectory(path) as t:
        assert t.groups == []
    with pytest.raises(OutputExistsError, match="is a directory"):
        TrajectoryWriter(tmp_path, overwrite=True)


def test_a_writer_that_loses_the_race_to_create_the_file_says_so_and_touches_nothing(tmp_path, monkeypatch):
    path = tmp_path / "raced.h5"
    with TrajectoryWriter(path) as w:
        w.add_particles("oscillators", n_replicas=1, n_nodes=3)
    before = path.read_bytes()
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the other writer created it after our check
    with pytest.raises(OutputExistsError, match="another process created this file just now"):
        TrajectoryWriter(path)
    assert path.read_bytes() == before


def test_exception_inside_with_still_leaves_readable_file(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(RuntimeError), TrajectoryWriter(path) as w:
        w.add_particles("oscillators", n_replicas=1, n_nodes=8)
        _append_range(w, "oscillators", 0, 11, 11, 1, 8, with_r=False)
        raise RuntimeError("simulated failure")
    with open_trajectory(path) as t:
        assert t.n_frames == 11


# ----------------------------------------------------------------------------------- boundaries, xarray


def test_io_does_not_import_torch():
    proc = _run_python("import sys, lotsim.io; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_xarray_sees_named_dimensions(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    path = tmp_path / "x.h5"
    with TrajectoryWriter(path) as w:
        w.add_particles(
            "oscillators",
            n_replicas=3,
            n_nodes=6,
            node_data={"natural_frequency": np.ones((3, 6)), "lattice_position": np.zeros((6, 2))},
            replica_data={"coupling": np.arange(3.0)},
            observables={"order_parameter": ((), float)},
        )
        _append_range(w, "oscillators", 0, 20, 6, 3, 6)
    with xr.open_dataset(path, engine="h5netcdf", group="particles/oscillators/phase") as ds:
        assert ds["value"].dims == ("time", "node", "replica")
        assert dict(ds.sizes) == {"time": 20, "replica": 3, "node": 6}
        np.testing.assert_array_equal(ds["time"].values, _frames(0, 20, 3, 6)[1])
        in_memory_order = ds["value"].transpose("time", "replica", "node").values
        np.testing.assert_array_equal(in_memory_order, _frames(0, 20, 3, 6)[2])
    with xr.open_dataset(path, engine="h5netcdf", group="observables/order_parameter") as ds:
        assert ds["value"].dims == ("time", "replica")
    with xr.open_dataset(path, engine="h5netcdf", group="particles/oscillators") as ds:
        assert ds["natural_frequency"].dims == ("node", "replica")
        assert ds["lattice_position"].dims == ("node", "lattice_position_axis1")
        assert ds["coupling"].dims == ("replica",)


# ------------------------------------------------------------------------- H5MD conformance, old files

TOPOLOGIES = {
    "ring": {"n": 6}, "chain": {"n": 6}, "square": {"shape": [3, 3]},
    "triangular": {"shape": [2, 4], "periodic": False}, "hexagonal": {"shape": [1, 2], "periodic": False},
    "hypercubic": {"shape": [2, 2, 2], "periodic": False},
    "complete": {"n": 5}, "small-world": {"n": 8, "k": 2}, "random-regular": {"n": 6, "degree": 3},
    "erdos-renyi": {"n": 6, "p": 0.5}, "edgelist": {"file": "edges.txt"}, "graphml": {"file": "graph.graphml"},
}


def _simulate(tmp_path, topology, **dynamics):
    import networkx as nx

    from lotsim.config import SimulationRecipe, load_recipe
    from lotsim.simulation import run_simulation

    (tmp_path / "edges.txt").write_text("0 1\n1 2\n2 3\n3 0\n")
    nx.write_graphml(nx.cycle_graph(4), tmp_path / "graph.graphml")
    lattice = {"topology": topology, **TOPOLOGIES[topology]}
    if "file" in lattice:
        lattice["file"] = str(tmp_path / lattice["file"])
    recipe = load_recipe(SimulationRecipe, None, [], {
        "lattice": lattice, "dynamics": {"coupling": "0.5:1:2", "steps": 6, "dt": 0.05, **dynamics},
        "frequencies": {"dist": "gaussian"}, "output": {"save_every": 2}, "replicas": 2})
    path = tmp_path / f"{topology}.h5"
    run_simulation(recipe, path)
    return path, recipe


def _assert_h5md_conformant(path):
    """H5MD 1.1 rules a generic reader relies on, checked on every object of the file."""
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["h5md"].attrs["version"], [1, 1])
        for key in ("author", "creator"):
            assert f[f"h5md/{key}"].attrs.get_id("name").get_type().is_variable_str() is False
        for name, particles in f["particles"].items():
            assert {"dimension", "boundary"} <= set(particles["box"].attrs)
            n = particles["node"].shape[0]
            for key, obj in particles.items():
                if isinstance(obj, h5py.Group) and "value" in obj:  # time-dependent element
                    assert obj["value"].shape[1] == n, (name, key)
                    assert obj["step"].shape == obj["time"].shape == obj["value"].shape[:1]
                elif isinstance(obj, h5py.Dataset) and obj.attrs.get("lotsim_kind") == b"node":
                    assert obj.shape[0] == n, (name, key)  # time-independent: particle index first
        for key, conn in f.get("connectivity", {}).items():
            assert conn.dtype.kind == "i" and conn.ndim == 2 and conn.shape[1] == 2, key
            assert f[conn.attrs["particles_group"]].name == f"/particles/{key}"

        def no_units(name, obj):
            assert "units" not in obj.attrs, name

        f.visititems(no_units)


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_every_topology_is_h5md_conformant_and_opens_in_xarray(tmp_path, topology):
    """The README's line opens the phases of a file of every topology, with named dimensions."""
    path, recipe = _simulate(tmp_path, topology)
    _assert_h5md_conformant(path)
    with open_trajectory(path) as t:
        n, frames, replicas = t.n_nodes, t.n_frames, t.n_replicas
        phase, omega = t.phase[()], t.node_data("natural_frequency")
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf", group="particles/oscillators/phase") as ds:
        assert ds["value"].dims == ("time", "node", "replica")
        assert dict(ds.sizes) == {"time": frames, "node": n, "replica": replicas} and replicas == 4
        np.testing.assert_array_equal(ds["value"].transpose("time", "replica", "node").values, phase)
    with xr.open_dataset(path, engine="h5netcdf", group="particles/oscillators") as ds:
        assert ds["natural_frequency"].dims == ("node", "replica")
        np.testing.assert_array_equal(ds["natural_frequency"].values.T, omega)
        if "lattice_position" in ds:
            assert ds["lattice_position"].dims[0] == "node"


def test_a_generic_h5md_reader_sees_n_oscillators(tmp_path):
    pyh5md = pytest.importorskip("pyh5md")
    path, _ = _simulate(tmp_path, "square")
    with pyh5md.File(str(path), "r") as f:
        particles = f.particles_group("oscillators")
        phase = pyh5md.element(particles, "phase")
        assert phase.value.shape[1] == 9 and phase.step.shape == phase.value.shape[:1]
        assert pyh5md.element(particles, "natural_frequency").shape[0] == 9
        assert pyh5md.element(particles, "lattice_position").shape == (9, 2)


def test_format_0_1_files_are_read_in_the_same_order(tmp_path):
    """A file written by lotsim's file format 0.1 ([frame, replica, node], ``units``, ``position``,
    ``/connectivity/<group>_weights``) reads as the same run written today."""
    import tomllib

    from lotsim.config import SimulationRecipe
    from lotsim.simulation import run_simulation

    old = REPO / "tests" / "data" / "format_0_1.h5"
    with open_trajectory(old) as t:
        assert t.format_version == (0, 1) and t.phase.dataset.dims[1].label == "replica"
        recipe = SimulationRecipe.model_validate(tomllib.loads(t.recipe_toml))
        stored = _everything(t)
    new = tmp_path / "new.h5"
    run_simulation(recipe, new)
    with open_trajectory(new) as t:
        assert t.format_version == (0, 2)
        fresh = _everything(t)
    assert stored.keys() == fresh.keys()
    for key, value in stored.items():
        np.testing.assert_array_equal(value, fresh[key], err_msg=key)

    # the writer resumes a 0.1 file in its own layout
    copy = tmp_path / "old.h5"
    copy.write_bytes(old.read_bytes())
    with TrajectoryWriter(copy, mode="a") as w:
        w.truncate_after(10)
        w.append("oscillators", np.array([15, 20]), np.array([0.75, 1.0]), stored["phase"][3:],
                 {"order_parameter": stored["order_parameter"][3:], "mean_phase": stored["mean_phase"][3:]})
    with open_trajectory(copy) as t:
        assert t.format_version == (0, 1)
        np.testing.assert_array_equal(t.phase[()], stored["phase"])
        np.testing.assert_array_equal(t.steps, stored["steps"])


def _everything(t):
    edges, weights = t.edges
    return {"phase": t.phase[()], "phase_1": t.phase[1], "phase_r": t.phase[:, 1], "phase_rn": t.phase[2, 1, 3],
            "steps": t.steps, "times": t.times, "natural_frequency": t.node_data("natural_frequency"),
            "lattice_position": t.node_data("lattice_position"), "coupling": t.replica_data("coupling"),
            "edges": edges, "weights": weights, "order_parameter": t.observable("order_parameter")[()],
            "mean_phase": t.observable("mean_phase")[()], "blocks": np.concatenate([b for _, b in t.iter_frames()]),
            "array": np.asarray(t.phase, dtype=np.float64), "ellipsis": t.phase[..., 0], "frames": t.phase[[0, 2]]}


def test_the_python_example_of_docs_formats_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "docs" / "formats.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    _simulate(tmp_path, "square")[0].rename(tmp_path / "run.h5")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/formats.md", "exec"), {})
    assert capsys.readouterr().out.split()[:3] == ["4", "4", "9"]


def test_a_newer_file_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "future.h5"
    with TrajectoryWriter(path) as w:
        w.add_particles("oscillators", n_replicas=1, n_nodes=2)
    with h5py.File(path, "r+") as f:
        f["h5md/modules/lotsim"].attrs["version"] = [0, 9]
    with pytest.raises(H5MDFormatError, match="file format 0.9 is newer") as info:
        open_trajectory(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
