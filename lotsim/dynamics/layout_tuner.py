"""The thread layout of the numba backend, chosen per segment of steps by measured speed."""

from __future__ import annotations

import time

SEGMENT_SECONDS = 0.2  # with two candidate thread layouts, steps run in segments of about this long,
PROBE_SECONDS = 0.02  # the slower layout is re-measured on a segment this long,
PROBE_AFTER, PROBE_MAX = 2.0, 64.0  # after this many seconds, doubling while it stays slower


class LayoutTuner:
    """Chooses the thread layout per segment of steps by measured speed.

    Both layouts give bitwise-equal results. Splitting nodes synchronises the threads once per stage:
    on idle cores that nearly doubles the speed of one large replica on two threads, but when other
    processes hold the cores every barrier may wait for a descheduled thread, and a step can take 10
    to 100 times longer than on one thread. So with two candidates each is first measured twice,
    alternately, on a few steps (its faster sample counts: a first call or a preemption does not
    decide); then the run goes in segments of about ``SEGMENT_SECONDS`` on the faster layout (each
    segment updating its cost) and the other one is re-measured on a segment of about
    ``PROBE_SECONDS`` after ``PROBE_AFTER`` seconds, doubling up to ``PROBE_MAX`` while it stays
    slower. A layout's segment is at most twice its previous one, so a wrong estimate costs little.
    """

    def __init__(self):
        self.cost: dict[str, float] = {}  # layout -> seconds per step
        self.count: dict[str, int] = {}  # layout -> number of measurements
        self.steps: dict[str, int] = {}  # layout -> steps of its last segment
        self.when: dict[str, float] = {}  # layout -> time of its last measurement
        self.wait: dict[str, float] = {}  # layout -> seconds before it is measured again

    def plan(self, layouts: tuple[str, ...], remaining: int) -> tuple[str, int]:
        if len(layouts) == 1:
            return layouts[0], remaining
        learning = min(layouts, key=lambda x: self.count.get(x, 0))
        if self.count.get(learning, 0) < 2:
            layout, budget = learning, PROBE_SECONDS
        else:
            layout, budget = min(layouts, key=self.cost.__getitem__), SEGMENT_SECONDS
            now = time.perf_counter()
            for x in layouts:
                if x != layout and now - self.when[x] > self.wait.get(x, PROBE_AFTER):
                    layout, budget = x, PROBE_SECONDS
        if layout not in self.cost:
            return layout, min(2, remaining)
        steps = min(int(budget / self.cost[layout]), 2 * self.steps[layout])
        return layout, max(1, min(steps, remaining))

    def record(self, layouts: tuple[str, ...], layout: str, steps: int, seconds: float) -> None:
        if len(layouts) == 1:
            return
        cost = seconds / steps
        count = self.count.get(layout, 0)
        self.cost[layout] = min(cost, self.cost[layout]) if count == 1 else cost
        self.count[layout] = count + 1
        self.steps[layout] = steps
        self.when[layout] = time.perf_counter()
        if all(self.count.get(x, 0) >= 2 for x in layouts):
            best = min(layouts, key=self.cost.__getitem__)
            if layout == best:
                self.wait.pop(layout, None)
            elif count >= 2:  # a re-measurement that lost
                self.wait[layout] = min(2 * self.wait.get(layout, PROBE_AFTER), PROBE_MAX)
