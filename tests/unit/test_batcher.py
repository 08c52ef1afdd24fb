"""The in-process micro-batcher over the tiny real model: grouping, isolation, limits, order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from clip_runner.batcher import Batch, MicroBatcher
from clip_runner.encoder import BatchEncoder
from clip_runner.errors import Overloaded
from clip_runner.loading import load_entry


@pytest.fixture(scope="module")
def encoder(tiny_tag: str) -> BatchEncoder:
    return BatchEncoder(load_entry(tiny_tag, torch.device("cpu")), "fp32")


def _pixels(encoder: BatchEncoder, seed: int, n: int = 1) -> np.ndarray:
    size = encoder.loaded.entry.preprocess_cfg.get("size", 224)
    side = size if isinstance(size, int) else size[0]
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


class Gate:
    """Wraps a model call: records each batch and holds the first one until released.

    Holding the first batch lets a test queue requests behind it deterministically.
    """

    def __init__(self, call: Callable[[Any], np.ndarray]) -> None:
        self.call = call
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, items: Any) -> np.ndarray:
        self.entered.set()
        self.release.wait(30)
        self.batches.append(len(items))
        return self.call(items)


async def _until_queued(batcher: MicroBatcher, rows: Callable[[], int]) -> None:
    """Wait until ``rows()`` rows wait in the batcher's queue (the signal that submits arrived)."""
    async with asyncio.timeout(30):
        while batcher.queued != rows():
            await asyncio.sleep(0.001)


async def _queue_behind_first(batcher: MicroBatcher, gate: Gate, first: Any, *rest: Any) -> list[Any]:
    """Submit ``first``; once the model holds it, submit ``rest``; release; gather all results."""
    submit = batcher.encode_pixels if isinstance(first, np.ndarray) else batcher.encode_texts
    head = asyncio.ensure_future(submit(first))
    await asyncio.to_thread(gate.entered.wait, 30)
    tail = [asyncio.ensure_future(
        (batcher.encode_pixels if isinstance(item, np.ndarray) else batcher.encode_texts)(item))
        for item in rest]
    # Every submit has either joined the queue or been refused (a refused one is done).
    await _until_queued(batcher, lambda: sum(len(item) for item, t in zip(rest, tail, strict=True) if not t.done()))
    gate.release.set()
    return await asyncio.gather(head, *tail, return_exceptions=True)


def test_waiting_requests_share_a_batch_and_each_gets_its_own_rows(encoder: BatchEncoder) -> None:
    gate = Gate(encoder.encode_pixels)
    batcher = MicroBatcher(gate, encoder.encode_texts, max_batch=8)
    images = [_pixels(encoder, seed) for seed in range(6)]
    results = asyncio.run(_queue_behind_first(batcher, gate, *images))
    assert gate.batches == [1, 5]
    for image, batch in zip(images, results, strict=True):
        alone = encoder.encode_pixels(image)
        assert batch.rows.shape == alone.shape and float(batch.rows[0] @ alone[0]) >= 0.9999
        assert batch.infer_ms > 0
    assert [batch.size for batch in results] == [1, 5, 5, 5, 5, 5]
    batcher.close()


def test_batches_never_exceed_max_batch_rows(encoder: BatchEncoder) -> None:
    gate = Gate(encoder.encode_texts)
    batcher = MicroBatcher(encoder.encode_pixels, gate, max_batch=4)
    texts = [[f"text {i}"] for i in range(12)] + [["two", "rows"]]
    results = asyncio.run(_queue_behind_first(batcher, gate, *texts))
    assert gate.batches == [1, 4, 4, 3, 2]  # the 2-row request does not fit beside the last three
    assert all(len(r.rows) == len(t) for r, t in zip(results, texts, strict=True))
    batcher.close()


def test_a_request_larger_than_max_batch_runs_alone(encoder: BatchEncoder) -> None:
    batcher = MicroBatcher(encoder.encode_pixels, encoder.encode_texts, max_batch=2)
    batch = asyncio.run(batcher.encode_pixels(_pixels(encoder, 0, n=3)))
    assert batch.rows.shape[0] == 3 and batch.size == 3
    batcher.close()


def test_a_request_that_breaks_the_model_fails_alone(encoder: BatchEncoder) -> None:
    def fragile(texts: list[str]) -> np.ndarray:
        if "boom" in texts:
            raise RuntimeError("model failed on this input")
        return encoder.encode_texts(texts)

    gate = Gate(fragile)
    batcher = MicroBatcher(encoder.encode_pixels, gate, max_batch=8)
    results = asyncio.run(_queue_behind_first(batcher, gate, ["first"], ["a cat"], ["boom"], ["a dog"]))
    assert isinstance(results[2], RuntimeError) and "this input" in str(results[2])
    for i in (0, 1, 3):
        assert isinstance(results[i], Batch) and results[i].rows.shape[0] == 1
    # The failed batch of three was retried request by request.
    assert gate.batches == [1, 3, 1, 1, 1]
    batcher.close()


def test_oldest_kind_goes_first(encoder: BatchEncoder) -> None:
    order: list[str] = []
    gate = Gate(lambda texts: (order.append("text"), encoder.encode_texts(texts))[1])

    def images(pixels: np.ndarray) -> np.ndarray:
        order.append("image")
        return encoder.encode_pixels(pixels)

    batcher = MicroBatcher(images, gate, max_batch=8)
    asyncio.run(_queue_behind_first(batcher, gate, ["first"], _pixels(encoder, 1), ["later text"],
                                    _pixels(encoder, 2)))
    assert order == ["text", "image", "text"]  # both images waited longest: one batch of two
    batcher.close()


def test_a_full_queue_refuses_at_once(encoder: BatchEncoder) -> None:
    gate = Gate(encoder.encode_texts)
    batcher = MicroBatcher(encoder.encode_pixels, gate, max_batch=8, max_queued=3)

    async def scenario() -> list[Any]:
        return await _queue_behind_first(batcher, gate, ["first"], ["a", "b"], ["c"], ["d"])

    results = asyncio.run(scenario())
    assert isinstance(results[3], Overloaded) and "queue is full" in str(results[3])
    assert all(isinstance(r, Batch) for r in results[:3])
    batcher.close()


def test_a_cancelled_request_is_not_encoded(encoder: BatchEncoder) -> None:
    gate = Gate(encoder.encode_texts)
    batcher = MicroBatcher(encoder.encode_pixels, gate, max_batch=8)

    async def scenario() -> None:
        head = asyncio.ensure_future(batcher.encode_texts(["first"]))
        await asyncio.to_thread(gate.entered.wait, 30)
        gone = asyncio.ensure_future(batcher.encode_texts(["caller went away"]))
        kept = asyncio.ensure_future(batcher.encode_texts(["still here"]))
        await _until_queued(batcher, lambda: 2)
        gone.cancel()
        await asyncio.sleep(0)  # the cancellation is delivered; the worker skips it when it takes
        gate.release.set()
        await head
        assert (await kept).rows.shape[0] == 1

    asyncio.run(scenario())
    assert gate.batches == [1, 1]
    assert batcher.queued == 0
    batcher.close()


def test_close_finishes_queued_work_then_refuses(encoder: BatchEncoder) -> None:
    batcher = MicroBatcher(encoder.encode_pixels, encoder.encode_texts, max_batch=8)
    assert asyncio.run(batcher.encode_texts(["before"])).rows.shape[0] == 1
    batcher.close()
    with pytest.raises(Overloaded, match="shutting down"):
        asyncio.run(batcher.encode_texts(["after"]))


def test_max_batch_must_be_positive(encoder: BatchEncoder) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(encoder.encode_pixels, encoder.encode_texts, max_batch=0)


def test_a_model_that_returns_the_wrong_number_of_rows_fails_its_callers_not_the_thread(
        encoder: BatchEncoder) -> None:
    def short(texts: list[str]) -> np.ndarray:
        return encoder.encode_texts(texts)[:-1]  # one row missing

    batcher = MicroBatcher(encoder.encode_pixels, short, max_batch=8)
    with pytest.raises(RuntimeError, match="returned 1 rows for 2 inputs"):
        asyncio.run(batcher.encode_texts(["a", "b"]))
    assert batcher.alive
    assert asyncio.run(batcher.encode_pixels(_pixels(encoder, 0))).rows.shape[0] == 1  # still serving
    batcher.close()
    assert not batcher.alive
