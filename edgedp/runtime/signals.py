"""Keeping Ctrl-C and SIGTERM away from the runtime's helper processes.

A terminal's Ctrl-C goes to the whole foreground process group, and systemd stops a service with SIGTERM to
its whole group (`kill -TERM -<pgid>`). The servo process and the emulator process must not die from those
signals: they would be gone before the safe stop that needs them (the servo process to decelerate and
switch torque off, the emulated servos to receive it). The runtime handles the signal and stops them in
order through their own channels.

A spawned child is a fresh interpreter that imports for a while before it can install handlers, so setting
handlers in the child is too late: a signal in that window kills it (and prints a traceback). Signals
blocked in the thread that starts the child stay blocked across fork and exec, so `shielded_from_signals`
blocks SIGINT and SIGTERM just around `Process.start()`; the child then ignores them for good with
`ignore_stop_signals()`. Signals that arrive at the parent meanwhile stay pending and are delivered when
the block is lifted, so none is lost.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def shielded_from_signals() -> Iterator[None]:
    """Block SIGINT/SIGTERM in this thread while the body starts child processes (they inherit the block)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_stop_signals() -> None:
    """In a helper process: ignore SIGINT/SIGTERM for good (pending ones are discarded), then unblock them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def watch_parent(on_orphaned: Callable[[], None], period: float = 0.1) -> threading.Event:
    """Call `on_orphaned` once if this process's parent exits (e.g. killed with SIGKILL); returns a stop event.

    A helper that ignores SIGTERM must not outlive a runtime that died without asking it to stop."""
    parent = os.getppid()
    done = threading.Event()

    def _watch() -> None:
        while not done.wait(period):
            if os.getppid() != parent:
                on_orphaned()
                return

    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()
    return done
