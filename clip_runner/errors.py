"""Typed errors: each :class:`InputError` carries its HTTP status and a message naming the field and the rule."""

from __future__ import annotations


class InputError(ValueError):
    """A request input that cannot be served. ``status`` is the HTTP status to answer."""

    status: int = 400
    code: str | None = None  # a machine-readable slug, for error shapes that carry one (OpenAI's)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(InputError):
    """Malformed request: a missing field, a wrong type, an empty or over-long text."""


class PayloadTooLarge(InputError):
    """An upload larger than the configured byte or pixel limit."""

    status = 413


class UnsupportedMediaType(InputError):
    """Bytes that are not an image in a supported format."""

    status = 415


class InvalidImage(InputError):
    """An image in a supported format that cannot be decoded (truncated, corrupt)."""


class UrlForbidden(InputError):
    """An image URL the server will not fetch: a host off the allow-list, or a non-public address."""

    status = 403


class ModelNotFound(InputError):
    """A request named a model this server does not serve (``/v1/embeddings``)."""

    status = 404
    code = "model_not_found"


class ModelNotAvailable(RuntimeError):
    """The configured model cannot be found, downloaded or loaded; the message says how to fix it."""


class RuntimeMissing(ModelNotAvailable):
    """The compiled runtime (OpenVINO) or its quantization tool (NNCF) is not installed."""


class CompileRefused(ModelNotAvailable):
    """A compile whose result would not be served: parity under the bar, or no calibration data."""


class Overloaded(RuntimeError):
    """The model's queue is full or it is shutting down: answer 503 with ``Retry-After``."""

    status = 503


class PairDataError(RuntimeError):
    """The CSV cannot be read or holds too few usable pairs; the message says why."""


class FinetuneError(RuntimeError):
    """Fine-tuning cannot start or go on; the message says why and what to do."""
