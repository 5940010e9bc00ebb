"""Stopping long runs cleanly: SIGTERM (a scheduler's preemption, ``kill``) and Ctrl-C lead to a
checkpoint, never to a half-written file.

One helper, :func:`handle_signals`, installs a handler for some signals and restores the previous
ones afterwards (outside the main thread, where Python cannot install handlers, it does nothing).
``lotsim simulate`` uses it to turn SIGTERM into the KeyboardInterrupt its Ctrl-C path already
checkpoints on (:func:`sigterm_as_interrupt`); ``lotsim train`` uses it to set a flag the loop
checks between steps (:class:`StopFlag`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def handle_signals(handler: Callable, signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Call ``handler(signum, frame)`` on ``signals`` inside the block; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:  # None: a handler installed outside Python, which cannot be put back; use the default
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_interrupt():
    """SIGTERM stops the block like Ctrl-C (KeyboardInterrupt), so one code path checkpoints both."""
    return handle_signals(_raise_interrupt, (signal.SIGTERM,))


class StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM set :attr:`requested`, which a loop checks between steps; a second
    signal raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._context = handle_signals(self._handle, STOP_SIGNALS)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
