"""How a sweep learns it was stopped: SIGINT (and SIGHUP, a closed terminal) raises
KeyboardInterrupt and SIGTERM raises :class:`Terminated` (a KeyboardInterrupt too) where the sweep
is, so trials, child runs and the parent run are closed KILLED before the process exits. Handlers
an entry point installed first are chained, not replaced."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from fxml.interrupts import STOP_SIGNALS


class Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def how_stopped(stop: BaseException) -> str:
    """``terminated`` (SIGTERM) or ``interrupted`` (SIGINT), from the signal number an entry
    point's handler may have put on the interruption."""
    return "terminated" if getattr(stop, "signum", signal.SIGINT) == signal.SIGTERM else "interrupted"


def watch_stop_signals(seen: list[int]) -> Callable[[], None]:
    """Record stop signals in ``seen``, then raise as the handler before would (or as above);
    returns a function that puts the previous handlers back. A second signal is ignored."""
    previous: dict[int, Any] = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def on_signal(signum: int, frame: Any) -> None:
        before = previous[signum]
        if before is signal.SIG_IGN:  # e.g. SIGINT for a job a shell started in the background
            return
        if seen:  # a second signal while the runs are being closed: let the closing finish
            return
        seen.append(signum)
        if callable(before):
            before(signum, frame)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
