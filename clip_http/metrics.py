"""Prometheus metrics for what ``Server-Timing`` reports per request, on BentoML's ``/metrics``.

BentoML already exports request counts and durations per endpoint (and, in the two-service
layout, its own adaptive batch sizes); these add the parts of a request it cannot see from outside: time decoding
uploads, time waiting for a batch slot, model time, and the batch each request's items ran in.
Defined once at import through ``bentoml.metrics`` so they land in BentoML's registry (its
multiprocess collector merges every worker).
"""

from __future__ import annotations

import bentoml

from clip_runner.pipeline import Timings

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

DECODE_MS = bentoml.metrics.Histogram(
    name="clip_decode_ms", documentation="Milliseconds decoding and preprocessing a request's images.",
    buckets=_MS_BUCKETS)
QUEUE_MS = bentoml.metrics.Histogram(
    name="clip_queue_wait_ms",
    documentation="Milliseconds a request waited for a batch slot and transport to the encoder.",
    buckets=_MS_BUCKETS)
INFER_MS = bentoml.metrics.Histogram(
    name="clip_inference_ms", documentation="Model milliseconds of the batches a request ran in.",
    buckets=_MS_BUCKETS)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="clip_request_batch_size", documentation="Size of the adaptive batch a request's items ran in.",
    labelnames=["kind"], buckets=_BATCH_BUCKETS)
REFUSED = bentoml.metrics.Counter(
    name="clip_refused_total", documentation="Requests refused before any work, by reason.",
    labelnames=["reason"])


def observe(timings: Timings) -> None:
    """Record one successful request's timings."""
    if timings.decode_ms:
        DECODE_MS.observe(timings.decode_ms)
    if timings.image_batch or timings.text_batch:
        QUEUE_MS.observe(timings.queue_ms)
        INFER_MS.observe(timings.infer_ms)
    if timings.image_batch:
        BATCH_SIZE.labels(kind="image").observe(timings.image_batch)
    if timings.text_batch:
        BATCH_SIZE.labels(kind="text").observe(timings.text_batch)


def refused(reason: str) -> None:
    """Count a refused request (``overload``, ``body_too_large``, ``unauthorized``, ``model_queue_full``)."""
    REFUSED.labels(reason=reason).inc()
