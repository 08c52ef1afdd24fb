"""Fetch pretrained OpenCLIP weight files from the Hugging Face Hub for the model store.

Files come through ``hf_hub_download`` (so ``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and
its cache behave as usual); only failures a retry can fix are retried, and the last one is a
:class:`DownloadError`. Nothing is deserialised here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import httpx2  # huggingface_hub's HTTP client (a separate package from httpx)
import open_clip
import tenacity
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError

from ..errors import ModelNotAvailable
from ..preprocessing.hf_tokenizer import HF_TOKENIZER_FILES, TOKENIZER_JSON
from .entries import CONFIG_FILE, WEIGHTS_FILE

logger = logging.getLogger(__name__)

HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # a hub repo's pickled weights, when it has no safetensors

_RETRY_STATUSES = frozenset({408, 429})  # besides every 5xx
_MAX_WAIT_S = 60.0


TROUBLESHOOTING = "see docs/troubleshooting.md (a mirror, a proxy, a pre-filled HF_HOME, a local checkpoint)"


class DownloadError(ModelNotAvailable):
    """Weights could not be fetched: what was asked, what went wrong, and where the fixes are."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; {TROUBLESHOOTING}")


@dataclass(frozen=True)
class HubFiles:
    """Local paths of a hub repo's downloaded files (inside the hub cache)."""

    config_path: Path | None  # open_clip_config.json if the repo has one
    weights_path: Path


def download_pretrained(arch: str, pretrained: str, *, cache_dir: str | None = None, retries: int = 3,
                        backoff_s: float = 2.0) -> Path:
    """The weights file open_clip knows as ``arch``/``pretrained``, a ``.safetensors`` alternative first."""
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        which = (f"{pretrained!r} for {arch}; register one of its tags: {', '.join(tags)}" if tags else
                 f"for architecture {arch!r}; open_clip.list_pretrained() lists the ones it knows")
        raise ModelNotAvailable(f"open_clip has no pretrained weights {which}")
    label = f"{arch}/{pretrained}"
    if not cfg.get("hf_hub"):  # every entry of open_clip 3.3 has one
        raise DownloadError(f"open_clip lists no hub repo for {label}")
    repo_id, filename = split_hf_hub(cfg["hf_hub"])
    hub = _HubRepo(repo_id, label=label, cache_dir=cache_dir, retries=retries, backoff_s=backoff_s)
    return hub.fetch_first([*safetensors_alternatives(filename), filename])


def download_hub_repo(repo_id: str, *, cache_dir: str | None = None, retries: int = 3,
                      backoff_s: float = 2.0) -> HubFiles:
    """An open_clip-format hub repo's config (None when it has none) and weights (safetensors first)."""
    hub = _HubRepo(repo_id, label=f"hf-hub:{repo_id}", cache_dir=cache_dir, retries=retries, backoff_s=backoff_s)
    return HubFiles(config_path=hub.fetch_first([CONFIG_FILE], required=False),
                    weights_path=hub.fetch_first([WEIGHTS_FILE, HF_WEIGHTS_NAME]))


def download_tokenizer(repo_id: str, *, cache_dir: str | None = None, retries: int = 3,
                       backoff_s: float = 2.0) -> Path:
    """The folder of a Hugging Face tokenizer's files (``tokenizer.json`` and those naming its special tokens)."""
    hub = _HubRepo(repo_id, f"the tokenizer {repo_id}", cache_dir, retries, backoff_s)
    folder = hub.fetch_first([TOKENIZER_JSON]).parent
    for filename in HF_TOKENIZER_FILES[1:]:
        hub.fetch_first([filename], required=False)  # beside tokenizer.json: the same revision's folder
    return folder


def split_hf_hub(hf_hub: str) -> tuple[str, str]:
    """Split open_clip's ``"org/repo/filename"`` into (repo id, filename); ``"org/repo/"`` means the
    repo's default weights file."""
    org, repo, filename = (hf_hub.strip("/").split("/", 2) + ["", ""])[:3]
    if not org or not repo:
        raise DownloadError(f"malformed hf_hub entry {hf_hub!r} in open_clip's table")
    return f"{org}/{repo}", filename or HF_WEIGHTS_NAME


def safetensors_alternatives(filename: str) -> list[str]:
    """The safetensors files that open_clip prefers over ``filename``, best first."""
    if filename == HF_WEIGHTS_NAME:
        return [WEIGHTS_FILE]
    if filename.endswith((".bin", ".pth")):
        return [filename[: -len(Path(filename).suffix)] + ".safetensors"]
    return []


@dataclass(frozen=True)
class _HubRepo:
    """One hub repo being fetched from, with what error messages need to know about it."""

    repo_id: str
    label: str  # what the user asked for, e.g. "ViT-B-32/openai" or "hf-hub:org/repo"
    cache_dir: str | None
    retries: int
    backoff_s: float

    @overload
    def fetch_first(self, filenames: list[str]) -> Path: ...

    @overload
    def fetch_first(self, filenames: list[str], *, required: bool) -> Path | None: ...

    def fetch_first(self, filenames: list[str], *, required: bool = True) -> Path | None:
        """The first of ``filenames`` the repo has; ``None`` when it has none and they are not ``required``.
        Only a missing file moves on to the next name: settling for a pickle after a network failure would hide it."""
        offline = False
        for filename in filenames:
            try:
                return self.fetch(filename)
            except Exception as exc:
                if not is_missing_file(exc):
                    raise DownloadError(f"could not download {self.label}: {filename} from hub repo {self.repo_id} "
                                        f"(endpoint {hf_constants.ENDPOINT}) failed: {describe_error(exc)}") from exc
                offline = offline or isinstance(exc.__cause__, OfflineModeIsEnabled)
                logger.info("%s has no %s", self.repo_id, filename)
        if not required:
            return None
        where = "the local cache (offline mode)" if offline else f"hub repo {self.repo_id}"
        raise DownloadError(f"could not download {self.label}: none of {', '.join(filenames)} is in {where} "
                            f"(endpoint {hf_constants.ENDPOINT})")

    def fetch(self, filename: str) -> Path:
        """Download one file (or find it in the cache), retrying :func:`should_retry` errors with backoff."""
        attempts = max(1, self.retries)

        def log(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            logger.warning("download of %s/%s failed (attempt %d/%d: %s); retrying in %.2fs", self.repo_id,
                           filename, state.attempt_number, attempts, describe_error(exc, lines=1), wait)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts), retry=tenacity.retry_if_exception(should_retry),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=_MAX_WAIT_S), before_sleep=log, reraise=True)
        return Path(retrying(hf_hub_download, repo_id=self.repo_id, filename=filename, cache_dir=self.cache_dir))


def is_missing_file(exc: BaseException) -> bool:
    """Whether ``exc`` means "this repo has no such file" (offline: not in the cache), so another name may be tried."""
    return isinstance(exc, RemoteEntryNotFoundError) or (
        isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, OfflineModeIsEnabled))


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: network and timeout errors, HTTP 5xx, 408 and 429 (never offline mode)."""
    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download reports a failed metadata request this way; the cause says why.
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, httpx2.TransportError):
        return True
    status = _http_status(exc)
    return status is not None and (status >= 500 or status in _RETRY_STATUSES)


def should_retry(exc: BaseException) -> bool:
    """Whether our retry loop should try again after ``exc``: a transient failure that
    huggingface_hub has not already retried itself."""
    # A failed metadata request reaches us as LocalEntryNotFoundError, but only after
    # hf_hub_download retried it with its own backoff (6 tries over ~23 s, later ones allowed 60 s
    # each). Retrying that again would make an unreachable hub take minutes to report.
    return is_transient(exc) and not isinstance(exc, LocalEntryNotFoundError)


def _http_status(exc: BaseException) -> int | None:
    status = getattr(getattr(exc, "response", None), "status_code", None)  # HfHubHTTPError, httpx2.HTTPStatusError
    return status if isinstance(status, int) else None


def describe_error(exc: BaseException | None, *, lines: int = 4) -> str:
    """``Type: message`` (first ``lines`` lines), plus the cause when the message hides it
    (HTTP errors already name their status and URL; LocalEntryNotFoundError names nothing)."""
    if exc is None:
        return "unknown error"
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:lines] if line.strip())
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and _http_status(exc) is None and str(cause).strip() not in text:
        described += f" (caused by {describe_error(cause, lines=lines)})"
    return described
