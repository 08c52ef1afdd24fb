"""Resident memory of a `bentoml serve` process tree: the supervisor and its workers apart.

``bentoml serve`` is the supervisor; BentoML starts each worker (the processes that import
the service and hold the model) as its child. The sampler reads both every ``every_s`` seconds
so that short peaks (loading weights, a burst of decoding) are not missed, and marks the
phases the benchmark cares about: idle after start-up, and under load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time
from typing import Any

import psutil

SAMPLE_EVERY_S = 0.1


@dataclasses.dataclass(frozen=True)
class TreeRss:
    """One reading of a process tree, in MB."""

    at: float  # time.perf_counter()
    supervisor_mb: float
    workers_mb: float  # every descendant of the supervisor together
    processes: int  # the supervisor included

    @property
    def tree_mb(self) -> float:
        """The whole tree."""
        return self.supervisor_mb + self.workers_mb


def read_tree(pid: int) -> TreeRss | None:
    """RSS of process ``pid`` and of all its descendants; None once it is gone."""
    try:
        root = psutil.Process(pid)
        supervisor = root.memory_info().rss
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    workers, count = 0, 1
    for child in children:
        try:
            workers += child.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            continue  # exited between listing and reading
    return TreeRss(time.perf_counter(), supervisor / 1e6, workers / 1e6, count)


def tree_pss_mb(pid: int) -> float:
    """Proportional memory of a process and all its children, in MB (NaN once it is gone).

    Pages two processes share count half in each, so a child just forked from a large parent
    adds what it really uses, not a second copy: the sum is what the kernel charges the tree's
    cgroup (a container's memory limit). Slower to read than RSS (a walk of each process's maps).
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_full_info().pss
    return total / 1e6


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children, in MB (NaN once it is gone)."""
    reading = read_tree(pid)
    return float("nan") if reading is None else reading.tree_mb


class RssSampler(threading.Thread):
    """Reads a process tree every ``every_s`` seconds until stopped, keeping every reading."""

    def __init__(self, pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.readings: list[TreeRss] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            reading = read_tree(self.pid)
            if reading is not None:
                self.readings.append(reading)
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(5)

    def between(self, start: float, stop: float) -> list[TreeRss]:
        """The readings taken in [start, stop] (``time.perf_counter()`` times)."""
        return [r for r in list(self.readings) if start <= r.at <= stop]


def summarise_rss(readings: list[TreeRss], idle: list[TreeRss], load: list[TreeRss],
                  every_s: float = SAMPLE_EVERY_S) -> dict[str, Any]:
    """Idle (median of the idle readings), peak under load (each part's own maximum) and the
    peak of the whole tree over its life, in MB."""
    def parts(pick: Any, rows: list[TreeRss]) -> dict[str, float | None]:
        if not rows:
            return {"supervisor": None, "workers": None, "tree": None}
        return {name: round(pick(getattr(r, attr) for r in rows), 1)
                for name, attr in (("supervisor", "supervisor_mb"), ("workers", "workers_mb"), ("tree", "tree_mb"))}

    return {
        "sample_every_s": every_s,
        "samples": len(readings),
        "processes": max((r.processes for r in readings), default=0),
        "idle_mb": parts(lambda values: statistics.median(list(values)), idle),
        "load_peak_mb": parts(max, load),
        "peak_tree_mb": round(max(r.tree_mb for r in readings), 1) if readings else None,
    }
