"""Tolerance-driven integration: embedded Runge-Kutta pairs with PI step-size control.

``dopri5`` is Dormand and Prince's 5(4) pair (the 5th-order solution is propagated, the embedded
4th-order one only estimates the error; first same as last, so an accepted step costs 6 right-hand
sides); ``dop853`` their 8(5,3) pair of Hairer's DOP853 (12 right-hand sides per step, for tight
tolerances). Both use the PI step-size controller of Hairer, Norsett and Wanner (Solving ODEs I, II.4 and the
DOPRI5 code): ``h_new = h / clip(err^(0.2 - 0.75 beta) * err_prev^(-beta) / safety, 1/10, 5)``, with
``beta = 0.04``, ``safety = 0.9``, and no growth right after a rejected step.

Error norm, one per replica: ``err = sqrt(mean_i (e_i / (atol + rtol max(|y_i|, |y_new_i|)))^2)`` over
the replica's nodes (and velocities, with inertia), the RMS norm of the DOPRI5 code and of diffrax. A
step is accepted when ``err <= 1``. Each replica takes its own steps, so a batched run equals the same
runs done one by one (one stiff replica does not slow the others down) and the step counts are stored
per replica. Phases are unwrapped, so ``rtol`` scales with ``|theta|``, which grows like ``omega t``;
``atol`` bounds the absolute phase error per step.

Time grid: ``OscillatorState.step`` still counts steps of ``dt``, but ``dt`` is only the unit of the
time grid: ``step_fn(state, n)`` advances exactly ``n * dt``, taking as many internal steps as the
tolerance asks for and clipping the last one to land on ``t + n dt`` (the simulator calls it once per
stored frame, so frames are exactly on the requested grid). The controller's state (the proposed step
size per replica, the previous error, the counts of accepted and rejected steps and the accumulated
error estimate) travels in ``OscillatorState.control`` and in the resume checkpoint, so a resumed run
repeats the steps of an uninterrupted one.

``control.error`` accumulates the max-norm of the accepted steps' local error estimates (radians; for
``dop853`` the 5th-order estimate scaled to the combined norm): the global error if local errors
neither grow nor cancel. It is an estimate, not a bound; the benchmark
``benchmarks/bench_adaptive.py`` measures the true error against a tight reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ADAPTIVE_METHODS = ("dopri5", "dop853")
DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-6

SAFETY = 0.9
BETA = 0.04  # PI controller: weight of the previous error
FAC_MIN, FAC_MAX = 0.2, 10.0  # h_new / h stays within [FAC_MIN, FAC_MAX]
ERR_FLOOR = 1e-4  # the previous error never counts as smaller than this


@dataclass(frozen=True)
class Tableau:
    """An embedded explicit Runge-Kutta pair: ``c`` (s,), ``a`` (s, s) lower triangular, ``b`` (s,) the
    propagated solution, ``e`` (s,) the error estimate ``h sum_j e_j k_j``; ``fsal``: the last stage is
    evaluated at the new solution (and is the next step's first stage; otherwise the slope at the new
    solution is evaluated once per accepted step). ``e3``: DOP853's second, 3rd-order estimate; the
    error norm is then ``|E5|^2 / sqrt(|E5|^2 + 0.01 |E3|^2)`` (Hairer's DOP853) instead of ``|E5|``."""

    name: str
    order: int
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    e: np.ndarray
    fsal: bool
    e3: np.ndarray | None = None


def _dopri5() -> Tableau:
    a = np.zeros((7, 7))
    a[1, :1] = [1 / 5]
    a[2, :2] = [3 / 40, 9 / 40]
    a[3, :3] = [44 / 45, -56 / 15, 32 / 9]
    a[4, :4] = [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]
    a[5, :5] = [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]
    a[6, :6] = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
    b = a[6].copy()
    e = np.array([71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])
    c = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
    return Tableau("dopri5", 5, c, a, b, e, fsal=True)


def _dop853() -> Tableau:
    """Dormand and Prince's 8(5,3) pair as in Hairer's DOP853 (12 stages; coefficients as in scipy)."""
    a = np.zeros((12, 12))
    a[1, :1] = [0.05260015195876773]
    a[2, :2] = [0.0197250569845379, 0.0591751709536137]
    a[3, :3] = [0.02958758547680685, 0.0, 0.08876275643042054]
    a[4, :4] = [0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792]
    a[5, :5] = [0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242]
    a[6, :6] = [0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125]
    a[7, :7] = [0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328, -0.015319437748624402,
                0.008273789163814023]
    a[8, :8] = [0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671,
                20.154067550477894, -43.48988418106996]
    a[9, :9] = [0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193,
                15.279233632882423, -33.28821096898486, -0.020331201708508627]
    a[10, :10] = [-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927,
                  -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196]
    a[11, :11] = [2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188,
                  27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303,
                  0.6433927460157636]
    b = np.array([0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
                  -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034,
                  0.04471061572777259])
    e5 = np.array([0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502,
                   1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571,
                   -0.022355307863886294])
    e3 = np.array([-0.18980075407240762, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
                   -5.801203960010585, -0.4226823213237919, -0.1521609496625161, 0.20136540080403034,
                   0.02265179219836082])
    return Tableau("dop853", 8, a.sum(axis=1), a, b, e5, fsal=False, e3=e3)


TABLEAUX = {"dopri5": _dopri5(), "dop853": _dop853()}


def combined_error(s5: float, s3: float, size: int) -> float:
    """DOP853's error norm from the sums of squares of the scaled 5th- (s5) and 3rd-order (s3)
    estimates over ``size`` values."""
    return 0.0 if s5 == 0.0 and s3 == 0.0 else s5 / math.sqrt((s5 + 0.01 * s3) * size)


def step_factor(err: float, err_prev: float, order: int, rejected: bool) -> float:
    """``h_new / h`` after a step with error ``err`` (PI control, see the module docstring)."""
    if not math.isfinite(err):
        return FAC_MIN
    expo = 1.0 / order - 0.75 * BETA
    if err > 1.0:  # rejected: the I part only
        return max(FAC_MIN, SAFETY * err ** -expo)
    fac = FAC_MAX if err == 0 else min(FAC_MAX, max(FAC_MIN, SAFETY * err ** -expo * err_prev ** BETA))
    return min(fac, 1.0) if rejected else fac


@dataclass(frozen=True)
class AdaptiveControl:
    """Per-replica controller state (numpy, (b,) each): the proposed step ``h`` (0: not chosen yet),
    the previous accepted error ``err_prev``, whether the last attempt was rejected, the counts of
    accepted and rejected steps, and the accumulated local error estimate ``error`` (radians)."""

    h: np.ndarray
    err_prev: np.ndarray
    rejected_last: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray
    error: np.ndarray

    @staticmethod
    def fresh(b: int) -> AdaptiveControl:
        return AdaptiveControl(np.zeros(b), np.full(b, ERR_FLOOR), np.zeros(b, np.int64),
                               np.zeros(b, np.int64), np.zeros(b, np.int64), np.zeros(b))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The checkpoint form (``/lotsim/state/extra``), read back by :meth:`from_arrays`."""
        return {f"adaptive_{name}": np.asarray(getattr(self, name)) for name in _FIELDS}

    @staticmethod
    def from_arrays(extra: dict) -> AdaptiveControl | None:
        if not all(f"adaptive_{name}" in extra for name in _FIELDS):
            return None
        return AdaptiveControl(*(np.array(extra[f"adaptive_{name}"]) for name in _FIELDS))

    def copy(self) -> AdaptiveControl:
        return AdaptiveControl(*(np.array(getattr(self, name)) for name in _FIELDS))


_FIELDS = ("h", "err_prev", "rejected_last", "accepted", "rejected", "error")


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")


def trial_step(d0: float, d1: float) -> float:
    """The trial step of :func:`initial_step` from the scaled norms of ``y0`` (d0) and ``f(y0)`` (d1)."""
    return 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1


def initial_step(h0: float, d1: float, d2: float, order: int) -> float:
    """Hairer's starting step from the trial step ``h0``, the scaled norm of ``f(y0)`` (d1) and the
    scaled norm of the change of ``f`` over the trial step, divided by ``h0`` (d2)."""
    top = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if top <= 1e-15 else (0.01 / top) ** (1.0 / order)
    return min(100.0 * h0, h1)


def adaptive_integrator(system, *, method: str = "dopri5", dt: float = 0.01, rtol: float = DEFAULT_RTOL,
                        atol: float = DEFAULT_ATOL):
    """Error-controlled integrator for a deterministic :class:`KuramotoSystem` (torch reference);
    ``method`` is ``dopri5`` or ``dop853``.

    ``dt`` is the unit of the time grid (``step_fn(state, n)`` lands exactly on ``t + n dt``); the
    internal steps are chosen by the tolerances ``rtol`` and ``atol``.
    """
    from lotsim.dynamics.core import Integrator, OscillatorState, drift

    tab = TABLEAUX[method]
    inertial = system.inertia > 0
    mu = system.inertia
    a, b_w, e_w, order = tab.a, tab.b, tab.e, tab.order
    n_stages = len(tab.c)

    if inertial:
        def f(y):
            return torch.stack((y[:, 1], (drift(system, y[:, 0]) - y[:, 1]) / mu), dim=1)
    else:
        def f(y):
            return drift(system, y[:, 0]).unsqueeze(1)

    def norm(x: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
        """(b, s, n) -> (b,) RMS; on the CPU one 1-D numpy sum per replica, whose order does not
        depend on b (numpy's and torch's axis reductions do), so a batched run equals the runs one by
        one, bit for bit."""
        ratio = (x / scale).reshape(x.shape[0], -1)
        if ratio.device.type == "cpu":
            return np.sqrt(np.array([np.square(row).sum() for row in ratio.numpy()]) / ratio.shape[1])
        return torch.sqrt(torch.mean(ratio**2, dim=1)).cpu().numpy()

    def init_fn(theta, velocity=None, step: int = 0, control: AdaptiveControl | None = None):
        if inertial and velocity is None:
            velocity = torch.zeros_like(theta)
        return OscillatorState(theta=theta, velocity=velocity if inertial else None, step=int(step),
                               control=control)

    def combine(y, h, ks, weights):
        acc = None
        for w, k in zip(weights, ks):
            if w != 0.0:
                acc = w * k if acc is None else acc + w * k
        return y if acc is None else y + h * acc

    def step_fn(state, n_steps: int = 1):
        n_steps = int(n_steps)
        if n_steps <= 0:
            return state
        y = torch.stack((state.theta, state.velocity), dim=1) if inertial else state.theta.unsqueeze(1)
        bsz = y.shape[0]
        ctl = AdaptiveControl.fresh(bsz) if state.control is None else state.control.copy()
        like = dict(dtype=y.dtype, device=y.device)
        left = np.full(bsz, n_steps * dt)
        k0 = f(y)
        if (ctl.h <= 0).any():  # Hairer's starting step
            scale = atol + rtol * y.abs()
            d0, d1 = norm(y, scale), norm(k0, scale)
            h0 = np.array([trial_step(x0, x1) for x0, x1 in zip(d0, d1)])
            y1 = y + torch.as_tensor(h0, **like).view(-1, 1, 1) * k0
            d2 = norm(f(y1) - k0, scale) / h0
            start = np.array([initial_step(*args, order) for args in zip(h0, d1, d2)])
            ctl.h[:] = np.where(ctl.h > 0, ctl.h, start)
        while (left > 0).any():
            active = left > 0
            hh = np.where(active, np.minimum(ctl.h, left), 0.0)
            h_t = torch.as_tensor(hh, **like).view(-1, 1, 1)
            ks = [k0]
            for s in range(1, n_stages):
                ks.append(f(combine(y, h_t, ks, a[s, :s])))
            y_new = combine(y, h_t, ks, b_w)
            err_vec = combine(torch.zeros_like(y), h_t, ks, e_w)
            scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
            err = norm(err_vec, scale)
            local = err_vec.abs().amax(dim=(1, 2)).cpu().numpy()
            if tab.e3 is not None:  # DOP853: s5 / sqrt((s5 + 0.01 s3) size), with s = size * rms^2
                size = err_vec[0].numel()
                err3 = norm(combine(torch.zeros_like(y), h_t, ks, tab.e3), scale)
                err5, err = err, np.array([combined_error(size * e5 * e5, size * e3 * e3, size)
                                           for e5, e3 in zip(err, err3)])
                # the recorded local error: the 5th-order estimate's max-norm scaled to the combined norm
                local = local * np.where(err5 > 0, err / np.maximum(err5, 1e-300), 1.0)
            ok = active & (err <= 1.0)
            bad = active & ~(err <= 1.0)
            for r in np.flatnonzero(active):
                fac = step_factor(float(err[r]), float(ctl.err_prev[r]), order, bool(ctl.rejected_last[r]))
                h_next = hh[r] * fac
                if ok[r]:
                    clipped = hh[r] < ctl.h[r]
                    ctl.h[r] = max(h_next, ctl.h[r]) if clipped else h_next
                    ctl.err_prev[r] = max(float(err[r]), ERR_FLOOR)
                    ctl.accepted[r] += 1
                    ctl.error[r] += local[r]
                    left[r] = 0.0 if hh[r] >= left[r] else left[r] - hh[r]
                else:
                    ctl.h[r] = h_next
                    ctl.rejected[r] += 1
                if not math.isfinite(float(err[r])) or ctl.h[r] < 1e-12 * dt:  # blow-up: poison it
                    left[r] = 0.0
                    ok[r] = True
                    y_new[r] = float("nan")
            ctl.rejected_last[:] = np.where(active, bad, ctl.rejected_last)
            mask = torch.as_tensor(ok, device=y.device).view(-1, 1, 1)
            y = torch.where(mask, y_new, y)
            k_last = ks[-1] if tab.fsal else f(y_new)
            k0 = torch.where(mask, k_last, k0)
        theta = y[:, 0]
        return OscillatorState(theta=theta, velocity=y[:, 1] if inertial else None, step=state.step + n_steps,
                               control=ctl)

    return Integrator(init_fn, step_fn, "torch")
