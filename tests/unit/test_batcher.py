"""The in-process micro-batcher over the tiny real model: grouping, isolation, limits, order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from clip_runner.errors import Overloaded
from clip_runner.runtimes.encoder import unit_rows
from clip_runner.runtimes.torch_encoder import TorchEncoder
from clip_runner.serving.batcher import Batch, MicroBatcher
from clip_runner.store.weights import load_entry


@pytest.fixture(scope="module")
def encoder(tiny_tag: str) -> TorchEncoder:
    return TorchEncoder(load_entry(tiny_tag, torch.device("cpu")), "fp32")


def _pixels(encoder: TorchEncoder, seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *encoder.entry.input_size, 3), dtype=np.uint8)


def _submit(batcher: MicroBatcher, items: np.ndarray) -> Any:
    """Pixels (N, H, W, 3) or token ids (N, L), to the batcher's queue of that kind."""
    return (batcher.image_features if items.ndim == 4 else batcher.text_features)(items)


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
    head = asyncio.ensure_future(_submit(batcher, first))
    await asyncio.to_thread(gate.entered.wait, 30)
    tail = [asyncio.ensure_future(_submit(batcher, item)) for item in rest]
    # Every submit has either joined the queue or been refused (a refused one is done).
    await _until_queued(batcher, lambda: sum(len(item) for item, t in zip(rest, tail, strict=True) if not t.done()))
    gate.release.set()
    return await asyncio.gather(head, *tail, return_exceptions=True)


def test_waiting_requests_share_a_batch_and_each_gets_its_own_rows(encoder: TorchEncoder) -> None:
    gate = Gate(encoder.image_features)
    batcher = MicroBatcher(gate, encoder.text_features, max_batch=8)
    images = [_pixels(encoder, seed) for seed in range(6)]
    results = asyncio.run(_queue_behind_first(batcher, gate, *images))
    assert gate.batches == [1, 5]
    for image, batch in zip(images, results, strict=True):
        alone = encoder.encode_pixels(image)
        assert batch.rows.shape == alone.shape and float(unit_rows(batch.rows)[0] @ alone[0]) >= 0.9999
        assert batch.infer_ms > 0
    assert [batch.size for batch in results] == [1, 5, 5, 5, 5, 5]
    batcher.close()


def test_batches_never_exceed_max_batch_rows(encoder: TorchEncoder) -> None:
    gate = Gate(encoder.text_features)
    batcher = MicroBatcher(encoder.image_features, gate, max_batch=4)
    texts = [encoder.tokenize([f"text {i}"]) for i in range(12)] + [encoder.tokenize(["two", "rows"])]
    results = asyncio.run(_queue_behind_first(batcher, gate, *texts))
    assert gate.batches == [1, 4, 4, 3, 2]  # the 2-row request does not fit beside the last three
    assert all(len(r.rows) == len(t) for r, t in zip(results, texts, strict=True))
    batcher.close()


def test_a_request_larger_than_max_batch_runs_alone(encoder: TorchEncoder) -> None:
    batcher = MicroBatcher(encoder.image_features, encoder.text_features, max_batch=2)
    batch = asyncio.run(batcher.image_features(_pixels(encoder, 0, n=3)))
    assert batch.rows.shape[0] == 3 and batch.size == 3
    batcher.close()


def test_a_request_that_breaks_the_model_fails_alone(encoder: TorchEncoder) -> None:
    boom = encoder.tokenize(["boom"])[0]

    def fragile(tokens: np.ndarray) -> np.ndarray:
        if any((row == boom).all() for row in tokens):
            raise RuntimeError("model failed on this input")
        return encoder.text_features(tokens)

    gate = Gate(fragile)
    batcher = MicroBatcher(encoder.image_features, gate, max_batch=8)
    texts = [encoder.tokenize([text]) for text in ("first", "a cat", "boom", "a dog")]
    results = asyncio.run(_queue_behind_first(batcher, gate, *texts))
    assert isinstance(results[2], RuntimeError) and "this input" in str(results[2])
    for i in (0, 1, 3):
        assert isinstance(results[i], Batch) and results[i].rows.shape[0] == 1
    # The failed batch of three was retried request by request.
    assert gate.batches == [1, 3, 1, 1, 1]
    batcher.close()


def test_oldest_kind_goes_first(encoder: TorchEncoder) -> None:
    order: list[str] = []
    gate = Gate(lambda tokens: (order.append("text"), encoder.text_features(tokens))[1])

    def images(pixels: np.ndarray) -> np.ndarray:
        order.append("image")
        return encoder.image_features(pixels)

    batcher = MicroBatcher(images, gate, max_batch=8)
    asyncio.run(_queue_behind_first(batcher, gate, encoder.tokenize(["first"]), _pixels(encoder, 1),
                                    encoder.tokenize(["later text"]), _pixels(encoder, 2)))
    assert order == ["text", "image", "text"]  # both images waited longest: one batch of two
    batcher.close()


def test_a_full_queue_refuses_at_once(encoder: TorchEncoder) -> None:
    gate = Gate(encoder.text_features)
    batcher = MicroBatcher(encoder.image_features, gate, max_batch=8, max_queued=3)
    texts = [encoder.tokenize(batch) for batch in (["first"], ["a", "b"], ["c"], ["d"])]

    async def scenario() -> list[Any]:
        return await _queue_behind_first(batcher, gate, *texts)

    results = asyncio.run(scenario())
    assert isinstance(results[3], Overloaded) and "queue is full" in str(results[3])
    assert all(isinstance(r, Batch) for r in results[:3])
    batcher.close()


def test_a_cancelled_request_is_not_encoded(encoder: TorchEncoder) -> None:
    gate = Gate(encoder.text_features)
    batcher = MicroBatcher(encoder.image_features, gate, max_batch=8)

    async def scenario() -> None:
        head = asyncio.ensure_future(batcher.text_features(encoder.tokenize(["first"])))
        await asyncio.to_thread(gate.entered.wait, 30)
        gone = asyncio.ensure_future(batcher.text_features(encoder.tokenize(["caller went away"])))
        kept = asyncio.ensure_future(batcher.text_features(encoder.tokenize(["still here"])))
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


def test_close_finishes_queued_work_then_refuses(encoder: TorchEncoder) -> None:
    batcher = MicroBatcher(encoder.image_features, encoder.text_features, max_batch=8)
    assert asyncio.run(batcher.text_features(encoder.tokenize(["before"]))).rows.shape[0] == 1
    batcher.close()
    with pytest.raises(Overloaded, match="shutting down"):
        asyncio.run(batcher.text_features(encoder.tokenize(["after"])))


def test_max_batch_must_be_positive(encoder: TorchEncoder) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(encoder.image_features, encoder.text_features, max_batch=0)


def test_a_model_that_returns_the_wrong_number_of_rows_fails_its_callers_not_the_thread(
        encoder: TorchEncoder) -> None:
    def short(tokens: np.ndarray) -> np.ndarray:
        return encoder.text_features(tokens)[:-1]  # one row missing

    batcher = MicroBatcher(encoder.image_features, short, max_batch=8)
    with pytest.raises(RuntimeError, match="returned 1 rows for 2 inputs"):
        asyncio.run(batcher.text_features(encoder.tokenize(["a", "b"])))
    assert batcher.alive
    assert asyncio.run(batcher.image_features(_pixels(encoder, 0))).rows.shape[0] == 1  # still serving
    batcher.close()
    assert not batcher.alive


def test_the_decode_window_holds_decoding_to_one_batch_ahead() -> None:
    from clip_runner.serving.batcher import DecodeWindow

    window, entered = DecodeWindow(limit=3), asyncio.Queue()

    async def request(name: str, images: int, release: asyncio.Event) -> None:
        async with window.hold(images):
            entered.put_nowait(name)
            await release.wait()

    async def scenario() -> None:
        first, second, big = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.ensure_future(request("a", 2, first)), asyncio.ensure_future(request("b", 1, second)),
                 asyncio.ensure_future(request("c", 1, second)), asyncio.ensure_future(request("big", 5, big))]
        assert [await entered.get(), await entered.get()] == ["a", "b"]
        for _ in range(20):  # c and big get turns on the loop, and must still wait: the window is full
            await asyncio.sleep(0)
        assert entered.empty()
        first.set()
        assert await entered.get() == "c"  # room for one image: c, not big
        second.set()
        assert await entered.get() == "big"  # larger than the window: it runs once the window is empty
        big.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
