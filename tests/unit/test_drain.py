"""DrainGuard: SIGTERM waits for quiet callers, then runs the original handler."""

from __future__ import annotations

import signal
import threading
import time

from clip_runner.drain import DrainGuard


def test_quiet_tracks_activity() -> None:
    guard = DrainGuard(idle_s=0.05)
    time.sleep(0.06)
    assert guard.quiet()
    with guard.active():
        time.sleep(0.06)
        assert not guard.quiet()  # a request in progress is never quiet
    assert not guard.quiet()
    time.sleep(0.06)
    assert guard.quiet()
    guard.touch()
    assert not guard.quiet()


def test_sigterm_is_deferred_until_quiet() -> None:
    calls: list[float] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: calls.append(time.monotonic()))
    try:
        guard = DrainGuard(idle_s=0.2, max_s=5, poll_s=0.01)
        assert guard.install()
        release = threading.Event()

        def busy() -> None:
            with guard.active():
                release.wait(5)

        worker = threading.Thread(target=busy)
        worker.start()
        sent = time.monotonic()
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert guard.draining.is_set() and calls == []  # held back while a request runs
        release.set()
        worker.join()
        deadline = time.monotonic() + 3
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls and calls[0] - sent >= 0.5  # 0.3 busy + 0.2 idle
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_max_wait_caps_the_drain() -> None:
    guard = DrainGuard(idle_s=10, max_s=0.2, poll_s=0.01)
    guard.touch()
    start = time.monotonic()
    assert guard.wait_quiet() < 1 and time.monotonic() - start >= 0.2
