"""SIGINT, SIGTERM and SIGHUP (a closed terminal) stop a command the same way: :class:`Interrupted`
is raised where the program is, the MLflow run ends KILLED, and the process exits 128 + the
signal's number (130, 143, 129). A signal ignored when the command starts (``nohup`` ignores
SIGHUP) stays ignored."""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt, so code that cleans up after Ctrl+C does the same after SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupting_signal() -> int | None:
    """The stop signal this process received, if any. Libraries may turn the interruption into
    another exception (Lightning answers Ctrl+C with ``SystemExit(1)``); this still tells."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    return 128 + signum


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _received:  # a second signal while the run is being closed: let the cleanup finish
        return
    _received.append(signum)
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """Install the handlers (main thread only; idempotent)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) not in (_on_stop_signal, signal.SIG_IGN):
            signal.signal(signum, _on_stop_signal)
