"""Interrupts that leave work whole: steps they must not cut in two, and ``kill`` handled as Ctrl-C is.

``samespace act --apply`` moves a file, then records the move in its undo manifest. An interrupt between the two
would leave a moved file the manifest does not name; inside :func:`deferred_interrupts` the interrupt is held
and acts, as it would have, once the step is recorded. Inside :func:`terminate_as_interrupt`, SIGTERM (``kill``,
``timeout``, a container or cluster stopping the task) raises :class:`Terminated`, a KeyboardInterrupt, so the
cleanup Ctrl-C gets (the store saved, the undo line printed) runs for it too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# SIGINT: Ctrl-C; SIGTERM: kill, a service manager; SIGHUP: the terminal closed.
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """Raised for SIGTERM inside :func:`terminate_as_interrupt`."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread; elsewhere, or
    where SIGTERM is ignored (a launcher set SIG_IGN on purpose), nothing changes.

    >>> with terminate_as_interrupt():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the block; each one that came is raised again, once, when it ends.

    Python runs signal handlers in the main thread only, so elsewhere the block runs unprotected.

    >>> with deferred_interrupts():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the nearest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(received):  # in the order they came, each once
            signal.raise_signal(signum)
