"""Greedy in-process micro-batching: concurrent requests share model calls without a hop, and without a
wait window (README, "How it works"). A failed batch is retried request by request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Literal

import numpy as np

from ..errors import Overloaded

logger = logging.getLogger(__name__)

Kind = Literal["image", "text"]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One caller's feature rows, and the size and model time of the batch they ran in."""

    rows: np.ndarray
    size: int
    infer_ms: float


@dataclasses.dataclass
class _Request:
    """One caller's rows, waiting for the model."""

    items: np.ndarray  # (n, H, W, 3) uint8 pixels or (n, context_length) token ids
    rows: int
    future: asyncio.Future[Batch]
    loop: asyncio.AbstractEventLoop
    since: float = dataclasses.field(default_factory=time.monotonic)


class MicroBatcher:
    """Batches concurrent image and text requests onto the blocking model calls, one batch at a time on
    the worker thread; beyond ``max_queued`` rows waiting, a submit raises :class:`Overloaded`."""

    def __init__(self, image_features: Callable[[np.ndarray], np.ndarray],
                 text_features: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 max_queued: int = 4096, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode: dict[Kind, Callable[[np.ndarray], np.ndarray]] = {
            "image": image_features, "text": text_features}
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._queues: dict[Kind, deque[_Request]] = {"image": deque(), "text": deque()}
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- callers (event loop) ---------------------------------------------------------------

    async def image_features(self, pixels: np.ndarray) -> Batch:
        """(n, H, W, 3) uint8 → (n, D) feature rows, batched with other callers."""
        return await self._submit("image", pixels)

    async def text_features(self, tokens: np.ndarray) -> Batch:
        """(n, context_length) token ids → (n, D) feature rows, batched with other callers."""
        return await self._submit("text", tokens)

    async def _submit(self, kind: Kind, items: np.ndarray) -> Batch:
        rows = len(items)
        if rows == 0:
            raise ValueError("nothing to encode")
        loop = asyncio.get_running_loop()
        request = _Request(items, rows, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise Overloaded("the model is shutting down; retry on another replica")
            if self._queued + rows > self.max_queued:
                raise Overloaded(f"the model queue is full ({self._queued} rows waiting); retry shortly")
            self._queues[kind].append(request)
            self._queued += rows
            self._cond.notify()
        # If the caller goes away (client disconnect), the worker skips the cancelled request.
        return await request.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    @property
    def queued(self) -> int:
        """Rows waiting for the model."""
        with self._cond:
            return self._queued

    # ---- worker thread ----------------------------------------------------------------------

    def _take(self) -> tuple[Kind, list[_Request]] | None:
        """Wait for work; take the longest-waiting kind's requests, up to max_batch rows."""
        with self._cond:
            while not any(self._queues.values()):
                if self._closed:
                    return None
                self._cond.wait()
            kind: Kind = min((k for k in self._queues if self._queues[k]),
                             key=lambda k: self._queues[k][0].since)
            queue, taken, rows = self._queues[kind], [], 0
            # A request larger than max_batch (callers chunk, but others may not) runs alone.
            while queue and (not taken or rows + queue[0].rows <= self.max_batch):
                request = queue.popleft()
                self._queued -= request.rows
                if request.future.cancelled():
                    continue
                taken.append(request)
                rows += request.rows
            return kind, taken

    @property
    def alive(self) -> bool:
        """Whether the model thread is running (it stops only after :meth:`close`)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while (work := self._take()) is not None:
            kind, requests = work
            try:
                self._serve(kind, requests)
            except Exception as exc:  # a bug here must fail these callers, not stop the thread
                logger.exception("serving a %s batch failed", kind)
                for request in requests:
                    _settle(request, error=exc)

    def _serve(self, kind: Kind, requests: list[_Request]) -> None:
        if not requests:
            return
        try:
            start = time.perf_counter()
            parts = [r.items for r in requests]
            rows = self._encode[kind](parts[0] if len(parts) == 1 else np.concatenate(parts))
            infer_ms = (time.perf_counter() - start) * 1000
            expected = sum(r.rows for r in requests)
            if len(rows) != expected:
                raise RuntimeError(f"the model returned {len(rows)} rows for {expected} inputs")
        except Exception as exc:
            if len(requests) == 1:
                _settle(requests[0], error=exc)
                return
            logger.warning("a batch of %d %s requests failed (%s); retrying each alone",
                           len(requests), kind, exc)
            for request in requests:
                self._serve(kind, [request])
            return
        offset = 0
        for request in requests:
            _settle(request, result=Batch(rows[offset : offset + request.rows], len(rows), infer_ms))
            offset += request.rows


def _settle(request: _Request, *, result: Batch | None = None,
            error: BaseException | None = None) -> None:
    """Resolve a caller's future from the worker thread (a cancelled one is left alone)."""

    def settle() -> None:
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting any more
        request.loop.call_soon_threadsafe(settle)


class DecodeWindow:
    """At most ``limit`` images (two batches: one encoding, one decoding) from decode to batch end.
    Unbounded, every upload in flight decodes at once and the decoders take the model's cores for
    images that would only wait in its queue. A request larger than the window runs alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._rooms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Room] = weakref.WeakKeyDictionary()

    @contextlib.asynccontextmanager
    async def hold(self, images: int) -> AsyncIterator[float]:
        """Wait for room for ``images``, hold it for the block; yields the milliseconds waited."""
        room = self._rooms.setdefault(asyncio.get_running_loop(), _Room())
        start = time.perf_counter()
        async with room.changed:
            await room.changed.wait_for(lambda: room.images == 0 or room.images + images <= self.limit)
            room.images += images
        try:
            yield (time.perf_counter() - start) * 1000
        finally:
            async with room.changed:
                room.images -= images
                room.changed.notify_all()


@dataclasses.dataclass
class _Room:
    """One event loop's images in the window, and the condition its waiters wait on."""
    images: int = 0
    changed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)
