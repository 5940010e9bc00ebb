"""The numba kernels of the fixed-step CPU backend, and the packing of their arguments.

How one call of ``step_fn(state, n_steps)`` runs (deterministic systems; the driver is
:mod:`lotsim.dynamics.numba_backend`): a single compiled call does every step. Per Runge-Kutta stage,
one pass over blocks of nodes

1. aggregates ``sum_j W_ij (sin m theta_j, cos m theta_j)`` from the stage's sin/cos buffers
   (padded neighbour table, CSR rows, or the two mean-field sums),
2. forms ``sum_m h_m [S_i cos(m theta_i + a_m) - C_i sin(m theta_i + a_m)]`` with the angle-addition
   identity (no transcendental per edge, none for the frustration either),
3. updates the Runge-Kutta accumulator and the next stage's input in place,
4. evaluates sin/cos of the next stage input for its own nodes only: 2N transcendentals per
   harmonic per stage, with a branch-free vectorisable ``sincos`` (Cody-Waite reduction, fdlibm
   polynomials, within 1 ulp of libm for |x| < 1e6; larger phases take libm per block).

Only step 4's buffers are read across nodes, so they are double-buffered; steps 1-3 work in per-thread
scratch of one block (it stays in L1) or update the state and the Runge-Kutta accumulators in place:
memory is O(N + E) per replica and flat in the number of steps. Threads split the
replicas (one parallel region per call), or blocks of nodes (one parallel region per stage); results
are bitwise equal either way.

Legend: ``b`` replicas, ``n`` nodes, ``k`` neighbour slots, ``m`` harmonics, ``e`` stored edges.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from lotsim.dynamics.core import KuramotoSystem, Method, NeighbourOperator, SparseOperator

_JIT = {"cache": True, "error_model": "numpy", "fastmath": False}
_BLOCK = 256  # nodes per work item: a block's buffers stay in L1
_NEIGHBOURS, _CSR, _MEAN_FIELD = 0, 1, 2
_ONE = np.uint64(1)
_MIN_RUN = 16  # shortest run of translated table rows read at fixed offsets instead of gathered

# ---------------------------------------------------------------------------------------------------
# sin and cos together, branch-free so the loops that call it vectorise (fdlibm k_sin / k_cos)

_INV_PIO2 = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e00  # first 33 bits of pi/2: q * _PIO2_1 is exact for |q| < 2**20
_PIO2_2 = 6.07710050630396597660e-11  # next 33 bits
_PIO2_3 = 2.02226624879595063154e-21  # pi/2 - _PIO2_1 - _PIO2_2
_SINCOS_LIMIT = 1.0e6  # |x| above this takes libm (the reduction above needs |q| < 2**20)
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11


@njit(inline="always", **_JIT)
def _sincos(x):
    """(sin x, cos x) in float64 for |x| < 1e6, within about 1 ulp of libm."""
    q = np.floor(x * _INV_PIO2 + 0.5)
    r = ((x - q * _PIO2_1) - q * _PIO2_2) - q * _PIO2_3  # r in [-pi/4, pi/4]
    z = r * r
    sp = r + (z * r) * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    hz = 0.5 * z
    w = 1.0 - hz
    cp = w + (((1.0 - w) - hz) + z * (z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))))
    quadrant = np.int64(q) & 3
    s = cp if quadrant & 1 else sp
    c = sp if quadrant & 1 else cp
    s = -s if quadrant & 2 else s
    c = -c if (quadrant + 1) & 2 else c
    return s, c


# ---------------------------------------------------------------------------------------------------
# The kernel. One work item = (replica r, block of nodes i0:i1) for one stage. Arguments are packed in
# tuples (CPython passes calls of more than 30 arguments as *args, which numba cannot inline):
#   theta, vel (b, n)   the state, updated in place (vel is (1, 1) for first-order systems)
#   par     (omega (b, n), coupling (b, n), harm (m,), cos_a (m,), sin_a (m,), mult (m,), stage_c (s,),
#            stage_w (s,), consts [mu, final]): frequencies, coupling strengths, per harmonic the amplitude,
#            cos/sin of the phase lag and the order m; the Runge-Kutta tableau (see _tableau)
#   op      (kind, index (n, k) uint32, weight (n, k), pieces (p, 3) [lo, hi, run], block_pieces
#            (blocks, 2), run_offset (runs, k) uint64, run_weight (runs, k), indptr (n + 1,),
#            indices (e,) uint32, data (e,), mean-field scale): the coupling operator
#   buf     (S, C (2, m, b, n): sin/cos of the current [cur] and next [1 - cur] stage input;
#            per thread and block: AS, AC (threads, m, block): W S and W C; D (threads, block): the
#            coupling sum, then the slope; Y (threads, block): next stage input;
#            V (b, n): next velocity input; AT, AV (b, n): Runge-Kutta accumulators;
#            psum (2, m, b, blocks), sums (2, m, b): the mean-field sums)
#   dw (steps, b, n)    noise increments (used when ``noisy``)


@njit(**_JIT)
def _reduce_mean_field(r, buf):
    """sums[:, m, r] = sum over blocks of the partial sums, in a fixed order (deterministic)."""
    psum, sums = buf[9], buf[10]
    for m in range(psum.shape[1]):
        for h in range(2):
            acc = 0.0
            for blk in range(psum.shape[3]):
                acc += psum[h, m, r, blk]
            sums[h, m, r] = acc


@njit(**_JIT)
def _stage_chunk(r, blk0, blk1, stage, cur, step, theta, vel, par, op, inertial, noisy, dw, buf):
    """Runge-Kutta stage ``stage`` for blocks blk0:blk1 of replica r; ``stage = -1`` prepares stage 0.

    Written as one function, block loop outermost: a numba call costs ~1 ns per node at this block
    size (the ~30 arrays cross every call), and inlining helpers at the numba level multiplies the
    compile time by ten. Per block:
    1. AS/AC = W S/C[cur] (neighbour table: lattice runs at fixed offsets, others gathered; CSR; mean field),
    2. D = omega + K sum_m h_m [AS cos(m th + a_m) - AC sin(m th + a_m)], the lag by angle addition,
    3. the Runge-Kutta update in the torch reference's order of operations; Y, V = the next input,
    4. S/C[1 - cur] = sin/cos of the next input (+ the block's mean-field partial sums).
    Each loop touches at most three arrays, so LLVM's runtime alias checks stay within its limits
    and every loop vectorises. AS, AC, D and Y live one block at a time in per-thread scratch, which
    stays in L1: at 512^2 the state no longer fits in L2, and writing them back cost a third of the time.
    """
    omega, coupling, harm, cos_a, sin_a, mult, stage_c, stage_w, consts = par
    kind, index, weight, pieces, block_pieces, run_offset, run_weight, indptr, indices, data, scale = op
    S, C, AS, AC, D, Y, V, AT, AV, psum, sums = buf
    n = theta.shape[1]
    n_harm = harm.shape[0]
    k = index.shape[1]  # neighbour slots (>= 1: the table pads empty rows)
    mu, final = consts[0], consts[1]
    first = stage == 0
    last = stage == stage_w.shape[0] - 1
    w_s = stage_w[max(stage, 0)]
    c_s = stage_c[max(stage, 0)]
    nxt = 0 if stage < 0 else 1 - cur
    # this replica's rows (1-D views); the block scratch (AS, AC, D, Y) is this thread's, indexed i - i0
    th, om, kk, at = theta[r], omega[r], coupling[r], AT[r]
    tid = numba.get_thread_id()
    d, y = D[tid], Y[tid]
    src = th if stage < 0 or last else y  # the next stage input: src[i - so]
    if inertial:
        vl, v, av = vel[r], V[r], AV[r]
    else:
        vl, v, av = vel[0], vel[0], vel[0]  # unused
    for blk in range(blk0, blk1):
        i0 = np.uint64(blk * _BLOCK)  # unsigned indices spare numba's negative-index wraparound (3x)
        i1 = np.uint64(min(blk * _BLOCK + _BLOCK, n))
        so = np.uint64(0) if stage < 0 or last else i0
        if stage < 0:
            if inertial:
                for i in range(i0, i1):
                    v[i] = vl[i]
        else:
            # 1. aggregate
            for m in range(n_harm):
                s_in, c_in, a_s, a_c = S[cur, m, r], C[cur, m, r], AS[tid, m], AC[tid, m]
                if kind == _NEIGHBOURS:
                    for p in range(block_pieces[blk, 0], block_pieces[blk, 1]):
                        lo = max(np.uint64(pieces[p, 0]), i0)
                        hi = min(np.uint64(pieces[p, 1]), i1)
                        run = pieces[p, 2]
                        if run >= 0:  # the gather's terms in the gather's order: bitwise equal
                            o1 = run_offset[run, 0]  # uint64: i + o wraps to i - |o|
                            w1 = run_weight[run, 0]
                            for i in range(lo, hi):
                                a_s[i - i0] = w1 * s_in[i + o1]
                                a_c[i - i0] = w1 * c_in[i + o1]
                            for slot in range(1, k, 3):  # up to three slots per pass over a_s, a_c
                                o1, w1 = run_offset[run, slot], run_weight[run, slot]
                                if slot + 2 < k:
                                    o2, w2 = run_offset[run, slot + 1], run_weight[run, slot + 1]
                                    o3, w3 = run_offset[run, slot + 2], run_weight[run, slot + 2]
                                    for i in range(lo, hi):
                                        a_s[i - i0] = (((a_s[i - i0] + w1 * s_in[i + o1]) + w2 * s_in[i + o2])
                                                       + w3 * s_in[i + o3])
                                        a_c[i - i0] = (((a_c[i - i0] + w1 * c_in[i + o1]) + w2 * c_in[i + o2])
                                                       + w3 * c_in[i + o3])
                                elif slot + 1 < k:
                                    o2, w2 = run_offset[run, slot + 1], run_weight[run, slot + 1]
                                    for i in range(lo, hi):
                                        a_s[i - i0] = (a_s[i - i0] + w1 * s_in[i + o1]) + w2 * s_in[i + o2]
                                        a_c[i - i0] = (a_c[i - i0] + w1 * c_in[i + o1]) + w2 * c_in[i + o2]
                                else:
                                    for i in range(lo, hi):
                                        a_s[i - i0] = a_s[i - i0] + w1 * s_in[i + o1]
                                        a_c[i - i0] = a_c[i - i0] + w1 * c_in[i + o1]
                        else:
                            for i in range(lo, hi):
                                j = index[i, 0]
                                acc_s = weight[i, 0] * s_in[j]
                                acc_c = weight[i, 0] * c_in[j]
                                for slot in range(1, k):
                                    j = index[i, slot]
                                    acc_s += weight[i, slot] * s_in[j]
                                    acc_c += weight[i, slot] * c_in[j]
                                a_s[i - i0] = acc_s
                                a_c[i - i0] = acc_c
                elif kind == _CSR:
                    for i in range(i0, i1):
                        acc_s = 0.0
                        acc_c = 0.0
                        for e in range(indptr[i], indptr[i + _ONE]):
                            acc_s += data[e] * s_in[indices[e]]
                            acc_c += data[e] * c_in[indices[e]]
                        a_s[i - i0] = acc_s
                        a_c[i - i0] = acc_c
                else:
                    xs, xc = sums[0, m, r], sums[1, m, r]
                    for i in range(i0, i1):
                        a_s[i - i0] = scale * (xs - s_in[i])
                        a_c[i - i0] = scale * (xc - c_in[i])
            # 2. the coupling sum, then the drift
            if n_harm == 0:
                for i in range(i0, i1):
                    d[i - i0] = 0.0
            for m in range(n_harm):
                s_in, c_in, a_s, a_c = S[cur, m, r], C[cur, m, r], AS[tid, m], AC[tid, m]
                h, ca, sa = harm[m], cos_a[m], sin_a[m]
                for i in range(i0, i1):
                    term = h * (a_s[i - i0] * (c_in[i] * ca - s_in[i] * sa)
                                - a_c[i - i0] * (s_in[i] * ca + c_in[i] * sa))
                    d[i - i0] = term if m == 0 else d[i - i0] + term
            for i in range(i0, i1):
                d[i - i0] = om[i] + kk[i] * d[i - i0]
            # 3. the update: stage input y + c_s k; step y + final * sum_s w_s k_s; + noise
            if not inertial:  # k = d
                if last:
                    if first:
                        for i in range(i0, i1):
                            th[i] = th[i] + final * (d[i - i0] * w_s)
                    else:
                        for i in range(i0, i1):
                            th[i] = th[i] + final * (at[i] + w_s * d[i - i0])
                else:
                    if first:
                        for i in range(i0, i1):
                            at[i] = d[i - i0] * w_s
                    else:
                        for i in range(i0, i1):
                            at[i] = at[i] + w_s * d[i - i0]
                    for i in range(i0, i1):
                        y[i - i0] = th[i] + c_s * d[i - i0]
                if noisy:
                    for i in range(i0, i1):
                        src[i - so] = src[i - so] + dw[step, r, i]
            else:  # y = (theta, v), k = (v, (drift - v) / mu) with v the stage's velocity input
                for i in range(i0, i1):
                    d[i - i0] = (d[i - i0] - v[i]) / mu
                if last:
                    if first:
                        for i in range(i0, i1):
                            th[i] = th[i] + final * (v[i] * w_s)
                        for i in range(i0, i1):
                            vl[i] = vl[i] + final * (d[i - i0] * w_s)
                    else:
                        for i in range(i0, i1):
                            th[i] = th[i] + final * (at[i] + w_s * v[i])
                        for i in range(i0, i1):
                            vl[i] = vl[i] + final * (av[i] + w_s * d[i - i0])
                    if noisy:
                        for i in range(i0, i1):
                            vl[i] = vl[i] + dw[step, r, i] / mu
                    for i in range(i0, i1):
                        v[i] = vl[i]
                else:
                    if first:
                        for i in range(i0, i1):
                            at[i] = v[i] * w_s
                        for i in range(i0, i1):
                            av[i] = d[i - i0] * w_s
                    else:
                        for i in range(i0, i1):
                            at[i] = at[i] + w_s * v[i]
                        for i in range(i0, i1):
                            av[i] = av[i] + w_s * d[i - i0]
                    for i in range(i0, i1):
                        y[i - i0] = th[i] + c_s * v[i]
                    for i in range(i0, i1):
                        v[i] = vl[i] + c_s * d[i - i0]
                    if noisy:
                        for i in range(i0, i1):
                            v[i] = v[i] + dw[step, r, i] / mu
        # 4. sin/cos of the next input
        for m in range(n_harm):
            s_out, c_out, mm = S[nxt, m, r], C[nxt, m, r], mult[m]
            big = 0
            if mm == 1.0:
                for i in range(i0, i1):
                    s_out[i], c_out[i] = _sincos(src[i - so])
                    big += abs(src[i - so]) > _SINCOS_LIMIT
            else:
                for i in range(i0, i1):
                    s_out[i], c_out[i] = _sincos(mm * src[i - so])
                    big += abs(mm * src[i - so]) > _SINCOS_LIMIT
            if big > 0:  # rare: phases beyond 1e6 rad (or NaN/inf), where libm is exact
                for i in range(i0, i1):
                    x = src[i - so] if mm == 1.0 else mm * src[i - so]
                    s_out[i] = np.sin(x)
                    c_out[i] = np.cos(x)
            if kind == _MEAN_FIELD:
                ps = 0.0
                pc = 0.0
                for i in range(i0, i1):
                    ps += s_out[i]
                    pc += c_out[i]
                psum[0, m, r, blk] = ps
                psum[1, m, r, blk] = pc


@njit(**_JIT)
def _integrate_replica(r, n_blocks, n_steps, theta, vel, par, op, inertial, noisy, dw, buf):
    """All ``n_steps`` of replica ``r`` on the calling thread (every block of it, stage after stage)."""
    n_stages = par[7].shape[0]
    kind = op[0]
    zero = np.int64(0)
    _stage_chunk(r, zero, n_blocks, np.int64(-1), zero, zero, theta, vel, par, op, inertial, noisy, dw, buf)
    if kind == _MEAN_FIELD:
        _reduce_mean_field(r, buf)
    cur = np.int64(0)
    for step in range(n_steps):
        for stage in range(n_stages):
            _stage_chunk(r, zero, n_blocks, np.int64(stage), cur, np.int64(step), theta, vel, par, op,
                         inertial, noisy, dw, buf)
            if kind == _MEAN_FIELD:
                _reduce_mean_field(r, buf)
            cur = 1 - cur


@njit(parallel=True, **_JIT)
def _integrate(by_replica, chunk, n_steps, theta, vel, par, op, inertial, noisy, dw, buf):
    """Advance theta (b, n) [and vel] in place by n_steps; ``buf`` is scratch.

    ``by_replica``: each thread integrates whole replicas (one parallel region in all); else threads
    split chunks of ``chunk`` blocks of every replica (one parallel region per stage). Integers reach
    ``_stage_chunk`` as int64 variables, never literals, so it is compiled once per dtype."""
    b, n = theta.shape
    n_blocks = np.int64((n + _BLOCK - 1) // _BLOCK)
    n_stages = par[7].shape[0]
    kind = op[0]
    prepare = np.int64(-1)
    zero = np.int64(0)
    if by_replica:
        for r in prange(b):
            _integrate_replica(np.int64(r), n_blocks, n_steps, theta, vel, par, op, inertial, noisy, dw, buf)
    else:
        n_chunks = (n_blocks + chunk - 1) // chunk
        for t in prange(b * n_chunks):
            r = np.int64(t // n_chunks)
            blk0 = np.int64((t - r * n_chunks) * chunk)
            blk1 = np.int64(min(blk0 + chunk, n_blocks))
            _stage_chunk(r, blk0, blk1, prepare, zero, zero, theta, vel, par, op, inertial, noisy, dw, buf)
        if kind == _MEAN_FIELD:
            for r in range(b):
                _reduce_mean_field(np.int64(r), buf)
        cur = np.int64(0)
        for step in range(n_steps):
            for stage in range(n_stages):
                for t in prange(b * n_chunks):
                    r = np.int64(t // n_chunks)
                    blk0 = np.int64((t - r * n_chunks) * chunk)
                    blk1 = np.int64(min(blk0 + chunk, n_blocks))
                    _stage_chunk(r, blk0, blk1, np.int64(stage), cur, np.int64(step), theta, vel, par, op,
                                 inertial, noisy, dw, buf)
                if kind == _MEAN_FIELD:
                    for r in range(b):
                        _reduce_mean_field(np.int64(r), buf)
                cur = 1 - cur


@njit(**_JIT)
def _integrate_serial(n_steps, theta, vel, par, op, inertial, noisy, dw, buf):
    """``_integrate`` by replica on the calling thread: no parallel region to wake (one replica, or one
    thread). Changing numba's thread count instead costs libgomp a new team each time, and made the
    following parallel regions up to 40x slower."""
    b, n = theta.shape
    n_blocks = np.int64((n + _BLOCK - 1) // _BLOCK)
    for r in range(b):
        _integrate_replica(np.int64(r), n_blocks, n_steps, theta, vel, par, op, inertial, noisy, dw, buf)


# ---------------------------------------------------------------------------------------------------
# The kernels' arguments: the Runge-Kutta tableaux and the coupling operator


def _tableau(method: Method, dt: float) -> tuple[list[float], list[float], float]:
    """(stage_c, stage_w, final): stage s+1 input is ``y + stage_c[s] k_s``, the step is
    ``y + final * sum_s stage_w[s] k_s``, each written in the torch reference's order of operations."""
    if method == "euler":
        return [dt], [1.0], dt
    if method == "heun":
        return [dt, 0.0], [1.0, 1.0], 0.5 * dt
    return [0.5 * dt, 0.5 * dt, dt, 0.0], [1.0, 2.0, 2.0, 1.0], dt / 6.0


def _lattice_runs(index: np.ndarray, weight: np.ndarray, n_blocks: int):
    """Split the nodes of a neighbour table into runs whose rows are translates of each other.

    Returns ``pieces`` (p, 3) int64 rows ``[lo, hi, run]`` covering 0..n in order (``run`` = -1: gather
    through the table), ``block_pieces`` (blocks, 2) the pieces overlapping each block, and the runs'
    ``offset`` (runs, k) (as uint64, two's complement) and ``weight`` (runs, k).
    """
    n, k = index.shape
    offset = index.astype(np.int64) - np.arange(n)[:, None]
    same = np.all(offset[1:] == offset[:-1], axis=1) & np.all(weight[1:] == weight[:-1], axis=1)
    starts = np.flatnonzero(np.concatenate([[True], ~same]))  # maximal runs of translated rows
    ends = np.append(starts[1:], n)
    long = ends - starts >= _MIN_RUN
    # a piece is one long run, or consecutive short runs merged (gathered through the table)
    first = long | np.concatenate([[True], long[:-1]])
    last = np.append(first[1:], True)
    run_of_piece = np.where(long[first], np.cumsum(long)[first] - 1, -1)
    pieces = np.stack([starts[first], ends[last], run_of_piece], axis=1)
    run_starts = starts[long]
    pieces = pieces.astype(np.int64).reshape(-1, 3)
    block_lo = np.arange(n_blocks, dtype=np.int64) * _BLOCK
    block_hi = np.minimum(block_lo + _BLOCK, n)
    block_pieces = np.stack([np.searchsorted(pieces[:, 1], block_lo, side="right"),
                             np.searchsorted(pieces[:, 0], block_hi, side="left")], axis=1).astype(np.int64)
    return (pieces, block_pieces, np.ascontiguousarray(offset[run_starts]).view(np.uint64).reshape(-1, k),
            np.ascontiguousarray(weight[run_starts]).reshape(-1, k))


def operator_arrays(op, dtype: np.dtype, runs: bool = True) -> tuple:
    """The coupling operator as the kernel's ``op`` tuple, in one dtype (see the kernel's legend)."""
    n = op.n
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    index = np.zeros((0, 0), np.uint32)
    weight = np.zeros((0, 0), dtype)
    pieces = np.zeros((0, 3), np.int64)
    block_pieces = np.zeros((n_blocks, 2), np.int64)
    run_offset = np.zeros((0, 0), np.uint64)
    run_weight = np.zeros((0, 0), dtype)
    indptr = np.zeros(1, np.int64)
    indices = np.zeros(0, np.uint32)
    data = np.zeros(0, dtype)
    scale = 0.0
    if isinstance(op, NeighbourOperator):
        kind = _NEIGHBOURS
        index = np.ascontiguousarray(op.index.numpy(), dtype=np.uint32)
        weight = np.ascontiguousarray(op.weight.detach().numpy(), dtype=dtype)
        if runs:
            pieces, block_pieces, run_offset, run_weight = _lattice_runs(index, weight, n_blocks)
        else:
            pieces = np.array([[0, n, -1]], np.int64)
            block_pieces[:, 1] = 1
    elif isinstance(op, SparseOperator):
        kind = _CSR
        indptr = op.weight.crow_indices().numpy().astype(np.int64)
        indices = op.weight.col_indices().numpy().astype(np.uint32)
        data = op.weight.values().detach().numpy().astype(dtype)
    else:
        kind = _MEAN_FIELD
        scale = float(op.scale)
    return (kind, index, weight, pieces, block_pieces, run_offset, run_weight, indptr, indices, data,
            dtype.type(scale))


def system_arrays(system: KuramotoSystem, dtype: np.dtype, shape: tuple[int, int]) -> tuple:
    """The head of the kernels' ``par`` tuple in one dtype: omega and K broadcast to the state's
    ``shape`` (b, n) (writeable C-ordered copies), then ``h_m``, ``cos a_m``, ``sin a_m`` and ``m`` of
    the harmonics with ``h_m != 0``."""
    active = [(h, a, m) for m, (h, a) in enumerate(zip(system.harmonics, system.frustration), start=1) if h != 0]
    omega = np.broadcast_to(system.omega.detach().numpy().astype(dtype), shape)
    coupling = np.broadcast_to(system.coupling.detach().numpy().astype(dtype), shape)
    return (np.array(omega, order="C"), np.array(coupling, order="C"),
            np.array([h for h, _, _ in active], dtype),
            np.array([math.cos(a) for _, a, _ in active], dtype),
            np.array([math.sin(a) for _, a, _ in active], dtype),
            np.array([m for _, _, m in active], dtype))
