"""Graceful shutdown across the two services.

On SIGTERM every worker of a BentoML server receives the signal at once. The public service
stops accepting and waits for its in-flight requests, but those still need the encoder, which
would otherwise stop listening at the same moment. :class:`DrainGuard` holds the encoder's
SIGTERM back until its callers have gone quiet: no request in progress and none for
``idle_s`` seconds (the public service pings while it has requests in flight), or ``max_s``
at the latest. Then the original handler (the server's own graceful shutdown) runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


class DrainGuard:
    """Counts activity and defers SIGTERM until it stops."""

    def __init__(self, idle_s: float = 2.0, max_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.idle_s, self.max_s, self.poll_s = idle_s, max_s, poll_s
        self._active = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._previous: Handler | int | None = None
        self.draining = threading.Event()

    def install(self) -> bool:
        """Wrap the current SIGTERM handler (main thread only); returns whether it was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def touch(self) -> None:
        """Record activity without a request (a caller's heartbeat)."""
        with self._lock:
            self._last = time.monotonic()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Mark a request in progress."""
        with self._lock:
            self._active += 1
            self._last = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._last = time.monotonic()

    def quiet(self) -> bool:
        """No request in progress and none for ``idle_s`` seconds."""
        with self._lock:
            return self._active == 0 and time.monotonic() - self._last >= self.idle_s

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.draining.is_set():
            return
        self.draining.set()
        logger.info("SIGTERM: draining until callers are quiet (at most %.0fs)", self.max_s)
        threading.Thread(target=self._wait_then_exit, args=(sig,), daemon=True, name="drain").start()

    def wait_quiet(self) -> float:
        """Block until quiet or ``max_s`` passed; returns the seconds waited."""
        start = time.monotonic()
        while not self.quiet() and time.monotonic() - start < self.max_s:
            time.sleep(self.poll_s)
        return time.monotonic() - start

    def _wait_then_exit(self, sig: int) -> None:
        waited = self.wait_quiet()
        logger.info("drained after %.1fs; shutting down", waited)
        previous = self._previous
        if callable(previous):
            previous(sig, None)  # the server's own handler: stop listening, finish, exit
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(sig)
