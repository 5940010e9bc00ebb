"""Error-controlled integration on the numba backend: the whole adaptive run in one compiled call.

Same method, controller and contract as :mod:`lotsim.dynamics.adaptive` (the torch reference): one
call of ``step_fn(state, n)`` advances every replica by ``n * dt`` with its own steps, each replica on
one thread (threads split the replicas). The right-hand side uses the fixed-step kernel's tricks: the
angle-addition identity (2N transcendentals per harmonic), the vectorisable ``sincos``, and lattice
runs (rows of the neighbour table that are translates of each other read at fixed offsets instead of
gathered). Memory per replica: the stages' slopes, ``(stages + 3) * n`` values (twice with inertia).

Legend: ``b`` replicas, ``n`` nodes, ``s`` state components (1, or 2 with inertia), ``q`` stages.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from lotsim.dynamics import adaptive
from lotsim.dynamics.adaptive import DEFAULT_ATOL, DEFAULT_RTOL, TABLEAUX, AdaptiveControl
from lotsim.dynamics.core import Integrator, KuramotoSystem, OscillatorState
from lotsim.dynamics.numba_backend import kernel_step_fn
from lotsim.dynamics.numba_kernels import (
    _CSR,
    _JIT,
    _NEIGHBOURS,
    _SINCOS_LIMIT,
    _sincos,
    operator_arrays,
    system_arrays,
)

_step_factor = njit(**_JIT)(adaptive.step_factor)
_trial_step = njit(**_JIT)(adaptive.trial_step)
_initial_step = njit(**_JIT)(adaptive.initial_step)
_combined_error = njit(**_JIT)(adaptive.combined_error)


@njit(**_JIT)
def _rhs(r, y, out, par, op, scr):
    """out = f(y) for replica r: y, out (s, n); ``scr`` = (S, C (m, n), AS, AC, D (n,)) scratch."""
    omega, coupling, harm, cos_a, sin_a, mult, mu = par
    kind, index, weight, pieces, block_pieces, run_offset, run_weight, indptr, indices, data, scale = op
    S, C, AS, AC, D = scr
    n = y.shape[1]
    n_harm = harm.shape[0]
    k = index.shape[1]
    th, om, kk = y[0], omega[r], coupling[r]
    for i in range(n):
        D[i] = 0.0
    for m in range(n_harm):
        s_m, c_m, mm = S[m], C[m], mult[m]
        big = 0
        for i in range(n):
            s_m[i], c_m[i] = _sincos(mm * th[i])
            big += abs(mm * th[i]) > _SINCOS_LIMIT
        if big > 0:  # rare: phases beyond 1e6 rad (or NaN/inf), where libm is exact
            for i in range(n):
                s_m[i] = np.sin(mm * th[i])
                c_m[i] = np.cos(mm * th[i])
        if kind == _NEIGHBOURS:
            for p in range(pieces.shape[0]):
                lo, hi, run = np.uint64(pieces[p, 0]), np.uint64(pieces[p, 1]), pieces[p, 2]
                if run >= 0:
                    o, w = run_offset[run, 0], run_weight[run, 0]
                    for i in range(lo, hi):
                        AS[i] = w * s_m[i + o]  # uint64: i + o wraps to i - |o|
                        AC[i] = w * c_m[i + o]
                    for slot in range(1, k):
                        o, w = run_offset[run, slot], run_weight[run, slot]
                        for i in range(lo, hi):
                            AS[i] += w * s_m[i + o]
                            AC[i] += w * c_m[i + o]
                else:
                    for i in range(lo, hi):
                        acc_s = 0.0
                        acc_c = 0.0
                        for slot in range(k):
                            j = index[i, slot]
                            acc_s += weight[i, slot] * s_m[j]
                            acc_c += weight[i, slot] * c_m[j]
                        AS[i] = acc_s
                        AC[i] = acc_c
        elif kind == _CSR:
            for i in range(n):
                acc_s = 0.0
                acc_c = 0.0
                for e in range(indptr[i], indptr[i + 1]):
                    acc_s += data[e] * s_m[indices[e]]
                    acc_c += data[e] * c_m[indices[e]]
                AS[i] = acc_s
                AC[i] = acc_c
        else:
            xs = 0.0
            xc = 0.0
            for i in range(n):
                xs += s_m[i]
                xc += c_m[i]
            for i in range(n):
                AS[i] = scale * (xs - s_m[i])
                AC[i] = scale * (xc - c_m[i])
        h, ca, sa = harm[m], cos_a[m], sin_a[m]
        for i in range(n):
            D[i] += h * (AS[i] * (c_m[i] * ca - s_m[i] * sa) - AC[i] * (s_m[i] * ca + c_m[i] * sa))
    if y.shape[0] == 1:
        for i in range(n):
            out[0, i] = om[i] + kk[i] * D[i]
    else:
        for i in range(n):
            out[0, i] = y[1, i]
            out[1, i] = (om[i] + kk[i] * D[i] - y[1, i]) / mu


@njit(**_JIT)
def _combine(dst, y, h, K, w, q):
    """dst = y + h * sum_{t < q} w_t K_t (terms with w_t = 0 skipped), in the torch reference's order."""
    started = False
    for t in range(q):
        if w[t] != 0.0:
            if not started:
                for j in range(y.shape[0]):
                    for i in range(y.shape[1]):
                        dst[j, i] = w[t] * K[t, j, i]
                started = True
            else:
                for j in range(y.shape[0]):
                    for i in range(y.shape[1]):
                        dst[j, i] += w[t] * K[t, j, i]
    if started:
        for j in range(y.shape[0]):
            for i in range(y.shape[1]):
                dst[j, i] = y[j, i] + h * dst[j, i]
    else:
        dst[:] = y


@njit(**_JIT)
def _scaled_rms(x, y0, y1, rtol, atol):
    """RMS over (s, n) of x / (atol + rtol max(|y0|, |y1|))."""
    acc = 0.0
    for j in range(x.shape[0]):
        for i in range(x.shape[1]):
            v = x[j, i] / (atol + rtol * max(abs(y0[j, i]), abs(y1[j, i])))
            acc += v * v
    return math.sqrt(acc / x.size)


@njit(**_JIT)
def _replica(r, span, dt, y, par, op, tab, tol, ctl, K, W, scr):
    """Advance y (s, n) of replica r by ``span`` with controlled steps (see :mod:`lotsim.dynamics.adaptive`)."""
    a, bw, ew, e3w, order, fsal, two_estimates = tab
    rtol, atol = tol
    h_arr, err_prev, rej_last, accepted, rejected, error = ctl
    q = bw.shape[0]
    ynew, ytmp, evec, zero, evec3 = W[0], W[1], W[2], W[3], W[4]
    _rhs(r, y, K[0], par, op, scr)
    if h_arr[r] <= 0.0:  # Hairer's starting step
        d0 = _scaled_rms(y, y, y, rtol, atol)
        d1 = _scaled_rms(K[0], y, y, rtol, atol)
        h0 = _trial_step(d0, d1)
        for j in range(y.shape[0]):
            for i in range(y.shape[1]):
                ytmp[j, i] = y[j, i] + h0 * K[0, j, i]
        _rhs(r, ytmp, K[1], par, op, scr)
        for j in range(y.shape[0]):
            for i in range(y.shape[1]):
                evec[j, i] = K[1, j, i] - K[0, j, i]
        d2 = _scaled_rms(evec, y, y, rtol, atol) / h0
        h_arr[r] = _initial_step(h0, d1, d2, order)
    left = span
    while left > 0.0:
        hh = min(h_arr[r], left)
        for s in range(1, q):
            _combine(ytmp, y, hh, K, a[s], s)
            _rhs(r, ytmp, K[s], par, op, scr)
        _combine(ynew, y, hh, K, bw, q)
        _combine(evec, zero, hh, K, ew, q)
        err = _scaled_rms(evec, y, ynew, rtol, atol)
        err5 = err
        if two_estimates:  # DOP853's norm, from the same sums of squares as the torch reference
            _combine(evec3, zero, hh, K, e3w, q)
            err3 = _scaled_rms(evec3, y, ynew, rtol, atol)
            err = _combined_error(evec.size * err * err, evec.size * err3 * err3, evec.size)
        fac = _step_factor(err, err_prev[r], order, rej_last[r] != 0)
        h_next = hh * fac
        if err <= 1.0:
            h_arr[r] = max(h_next, h_arr[r]) if hh < h_arr[r] else h_next
            err_prev[r] = max(err, adaptive.ERR_FLOOR)
            accepted[r] += 1
            local = 0.0
            for j in range(y.shape[0]):
                for i in range(y.shape[1]):
                    local = max(local, abs(evec[j, i]))
            if two_estimates and err5 > 0:  # the 5th-order estimate scaled to the combined norm
                local *= err / err5
            error[r] += local
            left = 0.0 if hh >= left else left - hh
            y[:] = ynew
            if fsal:
                K[0][:] = K[q - 1]
            else:
                _rhs(r, y, K[0], par, op, scr)
            rej_last[r] = 0
        else:
            h_arr[r] = h_next
            rejected[r] += 1
            rej_last[r] = 1
        if not math.isfinite(err) or h_arr[r] < 1e-12 * dt:  # blow-up: poison the replica
            y[:] = np.nan
            return


@njit(parallel=True, **_JIT)
def _integrate(span, dt, Y, par, op, tab, tol, ctl, K, W, scr):
    for r in prange(Y.shape[0]):
        _replica(r, span, dt, Y[r], par, op, tab, tol, ctl, K[r], W[r],
                 (scr[0][r], scr[1][r], scr[2][r], scr[3][r], scr[4][r]))


def kuramoto_integrator(system: KuramotoSystem, *, method: str = "dopri5", dt: float = 0.01,
                        rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> Integrator:
    """The numba twin of :func:`lotsim.dynamics.adaptive.adaptive_integrator` (same arguments and state)."""
    reference = adaptive.adaptive_integrator(system, method=method, dt=dt, rtol=rtol, atol=atol)
    t = TABLEAUX[method]
    inertial = system.inertia > 0
    n = system.operator.n
    n_comp = 2 if inertial else 1
    cache: dict = {}

    def _arrays(np_dtype: np.dtype, b: int) -> tuple:
        key = (np_dtype, b)
        if key not in cache:
            shape = (b, n)
            op = operator_arrays(system.operator, np_dtype)
            par = system_arrays(system, np_dtype, shape) + (np_dtype.type(system.inertia or 1.0),)
            e3 = t.e if t.e3 is None else t.e3
            tab = (t.a.astype(np_dtype), t.b.astype(np_dtype), t.e.astype(np_dtype), e3.astype(np_dtype), t.order,
                   t.fsal, t.e3 is not None)
            q, m = len(t.c), len(par[2])
            scratch = (np.empty((b, q, n_comp, n), np_dtype), np.zeros((b, 5, n_comp, n), np_dtype),
                       (np.empty((b, m, n), np_dtype), np.empty((b, m, n), np_dtype), np.empty((b, n), np_dtype),
                        np.empty((b, n), np_dtype), np.empty((b, n), np_dtype)))
            cache[key] = (op, par, tab, scratch)
        return cache[key]

    def _kernel_step(state: OscillatorState, n_steps: int, dtype: torch.dtype) -> OscillatorState:
        np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        b = state.theta.shape[0]
        op, par, tab, (K, W, scr) = _arrays(np_dtype, b)
        parts = [state.theta] + ([state.velocity] if inertial else [])
        Y = np.ascontiguousarray(np.stack([p.detach().numpy() for p in parts], axis=1), dtype=np_dtype)
        ctl = AdaptiveControl.fresh(b) if state.control is None else state.control.copy()
        arrays = (ctl.h, ctl.err_prev, ctl.rejected_last, ctl.accepted, ctl.rejected, ctl.error)
        _integrate(n_steps * dt, dt, Y, par, op, tab, (rtol, atol), arrays, K, W, scr)
        return OscillatorState(theta=torch.from_numpy(Y[:, 0].copy()),
                               velocity=torch.from_numpy(Y[:, 1].copy()) if inertial else None,
                               step=state.step + n_steps, control=ctl)

    return Integrator(reference.init_fn, kernel_step_fn(system, reference, _kernel_step), "numba")
