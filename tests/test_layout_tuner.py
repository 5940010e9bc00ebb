"""The numba backend's thread-layout tuner, on a fake clock."""

from __future__ import annotations

from lotsim.dynamics import layout_tuner
from lotsim.dynamics.layout_tuner import LayoutTuner


def test_layout_tuner_prefers_the_faster_layout_and_re_measures_the_slower(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(layout_tuner.time, "perf_counter", lambda: clock[0])
    tuner, both = LayoutTuner(), ("replicas", "nodes")
    assert tuner.plan(("replicas",), 1000) == ("replicas", 1000)  # one candidate: one call

    def step(layout, steps, per_step):
        assert tuner.plan(both, 10**6) == (layout, steps)
        tuner.record(both, layout, steps, steps * per_step)

    # learning: each layout twice, alternately, on few steps; a slow first sample does not count
    step("replicas", 2, 50e-3)  # e.g. a first call
    step("nodes", 2, 10e-3)
    step("replicas", 1, 1e-3)  # sized by its (first, slow) cost
    step("nodes", 2, 10e-3)  # 10x slower (a busy machine)
    for steps in (2, 4, 8, 16, 32, 64, 128):  # segments on the faster layout, doubling up to SEGMENT_SECONDS
        step("replicas", steps, 1e-3)
    assert tuner.plan(both, 10**6) == ("replicas", int(layout_tuner.SEGMENT_SECONDS / 1e-3))
    clock[0] += 2.5  # past the first wait (2 s): re-measured on a short segment, loses, the wait doubles
    step("nodes", int(layout_tuner.PROBE_SECONDS / 10e-3), 10e-3)
    clock[0] += 2.5
    assert tuner.plan(both, 10**6)[0] == "replicas"
    clock[0] += 2.0
    step("nodes", int(layout_tuner.PROBE_SECONDS / 10e-3), 0.5e-3)  # the cores are free again: nodes wins
    assert tuner.plan(both, 10**6)[0] == "replicas"  # ...and the now stale replicas cost is re-measured
    tuner.record(both, "replicas", 20, 20 * 1e-3)
    assert tuner.plan(both, 10**6) == ("nodes", 2 * int(layout_tuner.PROBE_SECONDS / 10e-3))  # grows from its probe
