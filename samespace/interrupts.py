"""Steps an interrupt must not cut in two: Ctrl-C, ``kill`` and a closed terminal wait until the step is done.

``samespace act --apply`` moves a file, then records the move in its undo manifest. An interrupt between the two
would leave a moved file the manifest does not name; inside :func:`deferred_interrupts` the interrupt is held
and acts, as it would have, once the step is recorded.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# SIGINT: Ctrl-C; SIGTERM: kill, a service manager; SIGHUP: the terminal closed.
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


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
