"""The frame buffer of one particles group: appends in whole, chunk-aligned blocks, with flat memory.

:class:`FrameSeries` holds a group's time-dependent datasets (phase value, step, time, observables)
and a buffer of at most one chunk. Frames are copied into the buffer; once it reaches the next chunk
boundary it is written as one block (one ``resize`` + slice write per dataset), so HDF5 sees no
per-frame writes. :class:`lotsim.io.writer.TrajectoryWriter` owns one series per group.
"""

from __future__ import annotations

import h5py
import numpy as np

from lotsim.io.layout import MAX_CHUNK_FRAMES, particle_axis


def _append_rows(ds: h5py.Dataset, n0: int, n1: int, arr: np.ndarray) -> None:
    """``ds.resize(n1, axis=0); ds[n0:n1] = arr`` for a dataset holding ``n0`` rows, through h5py's
    low-level calls: the same HDF5 operations without the high-level layer's shape queries and selection
    parsing (~0.1 ms per dataset, paid at every chunk). ``arr`` is a C-contiguous array of the
    dataset's dtype (a slice of the writer's own buffer)."""
    rest = arr.shape[1:]
    dsid = ds.id
    dsid.set_extent((n1, *rest))
    fspace = dsid.get_space()
    fspace.select_hyperslab((n0, *(0 for _ in rest)), (n1 - n0, *rest))
    dsid.write(h5py.h5s.create_simple(arr.shape), fspace, arr)


class FrameSeries:
    """One particles group's time-dependent datasets plus its write buffer of at most one chunk.

    Buffered frames start at ``n_disk``; the buffer is written once it reaches the next chunk boundary, so
    every write except the one forced by ``flush`` ends on a chunk boundary.
    """

    def __init__(self, phase: h5py.Group, observables: dict[str, h5py.Dataset]):
        self.value: h5py.Dataset = phase["value"]
        self.step: h5py.Dataset = phase["step"]
        self.time: h5py.Dataset = phase["time"]
        self.obs = observables
        self.chunk_frames = cf = int(self.value.chunks[0])
        # [frame, node, replica] (H5MD: particle index second); a file of format 0.1 resumed in its own
        # [frame, replica, node] layout
        self.node_major = particle_axis(self.value) == 1
        _, a, b = self.value.shape
        self.n_nodes, self.n_replicas = (a, b) if self.node_major else (b, a)
        self.buf_phase = np.empty((cf, a, b), dtype=self.value.dtype)
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

    def append(self, steps: np.ndarray, times: np.ndarray, phase: np.ndarray, obs: dict[str, np.ndarray]):
        k, i = len(steps), 0
        if k == 1 and self.n_buf + 1 < self.chunk_frames - self.n_disk % self.chunk_frames:
            j = self.n_buf  # one frame that does not complete the chunk (the simulator's case): no slicing
            self.buf_phase[j] = phase[0].T if self.node_major else phase[0]
            self.buf_step[j], self.buf_time[j] = steps[0], times[0]
            for name, v in obs.items():
                self.buf_obs[name][j] = v[0]
            self.n_buf, self.last_step = j + 1, int(steps[0])
            return
        while i < k:
            room = self.chunk_frames - self.n_disk % self.chunk_frames - self.n_buf  # to the chunk boundary
            take = min(room, k - i)
            b0, b1 = self.n_buf, self.n_buf + take
            rows = phase[i : i + take]  # [take, R, N]
            self.buf_phase[b0:b1] = rows.transpose(0, 2, 1) if self.node_major else rows
            self.buf_step[b0:b1] = steps[i : i + take]
            self.buf_time[b0:b1] = times[i : i + take]
            for name, v in obs.items():
                self.buf_obs[name][b0:b1] = v[i : i + take]
            self.n_buf, i = b1, i + take
            if take == room:
                self.flush()
        self.last_step = int(steps[-1])

    def flush(self) -> None:
        n = self.n_buf
        if not n:
            return
        n0, n1 = self.n_disk, self.n_disk + n
        _append_rows(self.value, n0, n1, self.buf_phase[:n])
        _append_rows(self.step, n0, n1, self.buf_step[:n])
        _append_rows(self.time, n0, n1, self.buf_time[:n])
        for name, ds in self.obs.items():
            _append_rows(ds, n0, n1, self.buf_obs[name][:n])
        self.n_disk, self.n_buf = n1, 0

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
