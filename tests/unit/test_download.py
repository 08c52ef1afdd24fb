"""Weight downloads against a local fake hub: file choice, retries, resume, errors.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HOME`` once, at import. Hub downloads therefore
run in a child Python process started with those variables pointing at the fake hub (exactly
what a user's shell does), which serves many calls over a JSON-lines pipe so that torch and
open_clip are imported once.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import pytest

from bench.tokenizer_files import write_siglip_tokenizer
from clip_runner.store import download
from clip_runner.store.download import is_transient, safetensors_alternatives, should_retry, split_hf_hub
from tests.fakehub import FakeHub, running_fake_hub

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/clip-model"
OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"  # open_clip's hf_hub for ViT-B-32/openai
SIGLIP_REPO = "timm/ViT-B-16-SigLIP"  # ViT-B-16-SigLIP's hf_tokenizer_name
SAFE, BIN = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
CONFIG = "open_clip_config.json"
FAST = {"backoff_s": 0.01}

_WORKER = r"""
import dataclasses, json, logging, sys
channel, sys.stdout = sys.stdout, sys.stderr  # keep the reply channel free of stray prints
from clip_runner.store import download

messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
log = logging.getLogger(download.__name__)
log.addHandler(handler)
log.setLevel(logging.INFO)

for line in sys.stdin:
    call = json.loads(line)
    messages.clear()
    try:
        result = getattr(download, call["fn"])(*call["args"], **call["kwargs"])
        reply = {"result": dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result}
    except Exception as exc:
        reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    reply["logs"] = list(messages)
    channel.write(json.dumps(reply, default=str) + "\n")
    channel.flush()
"""


class HubWorker:
    """A child process that runs ``clip_runner.store.download`` functions with the hub env it was given."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self._replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)

    def call(self, fn: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"fn": fn, "args": args, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._replies.get(timeout=120))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def _hub() -> Iterator[FakeHub]:
    with running_fake_hub() as hub:
        yield hub


@pytest.fixture
def hub(_hub: FakeHub) -> FakeHub:
    """The module's fake hub, emptied for each test."""
    _hub.reset()
    return _hub


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def worker(_hub: FakeHub, hf_home: Path) -> Iterator[HubWorker]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=_hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5",
        NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(ROOT),
    )
    hub_worker = HubWorker(env)
    yield hub_worker
    hub_worker.close()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ per seed (content is irrelevant, only identity)."""
    block = hashlib.sha256(f"{seed}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def weights_ok(reply: dict[str, Any]) -> Any:
    assert "error" not in reply, reply
    return reply["result"]


def resolve_requests(hub: FakeHub, filename: str, method: str | None = None) -> list[int]:
    return [r.status for r in hub.requests(method, f"/resolve/main/{filename}")]


def cdn_gets(hub: FakeHub) -> list[int]:
    return [r.status for r in hub.requests("GET", "/lfs/")]


# ---- hub repos ---------------------------------------------------------------------------------


def test_hub_repo_fetches_config_and_safetensors_into_hf_home(
    hub: FakeHub, worker: HubWorker, hf_home: Path
) -> None:
    config, weights = b'{"model_cfg": {}}', payload(200_000)
    hub.add(REPO, CONFIG, config)
    hub.add(REPO, SAFE, weights)
    hub.add(REPO, BIN, payload(1000, seed=1))

    files = weights_ok(worker.call("download_hub_repo", REPO, **FAST))

    assert Path(files["config_path"]).read_bytes() == config
    assert Path(files["weights_path"]).name == SAFE
    assert Path(files["weights_path"]).read_bytes() == weights
    for path in files.values():
        assert Path(path).is_relative_to(hf_home / "hub" / "models--org--clip-model")
    assert resolve_requests(hub, BIN) == []  # the pickle was never even looked up


def test_pretrained_uses_open_clip_repo_and_prefers_safetensors(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    safe, pickle = payload(5000, seed=2), payload(4000, seed=3)
    hub.add(OPENAI_REPO, SAFE, safe)
    hub.add(OPENAI_REPO, BIN, pickle)

    weights = Path(weights_ok(worker.call("download_pretrained", "ViT-B-32", "openai",
                                          cache_dir=str(tmp_path / "a"), **FAST)))
    assert weights.read_bytes() == safe
    assert resolve_requests(hub, SAFE, "HEAD") == [302]
    assert resolve_requests(hub, CONFIG) == []  # only the weights are fetched

    hub.remove(OPENAI_REPO, SAFE)
    weights = Path(weights_ok(worker.call("download_pretrained", "ViT-B-32", "openai",
                                          cache_dir=str(tmp_path / "b"), **FAST)))
    assert weights.name == BIN and weights.read_bytes() == pickle


def test_transient_503s_are_retried(hub: FakeHub, worker: HubWorker, tmp_path: Path) -> None:
    weights = payload(50_000)
    hub.add(REPO, SAFE, weights)
    hub.fail_next(2, 503, method="GET", server="cdn")

    reply = worker.call("download_hub_repo", REPO, cache_dir=str(tmp_path), retries=3, **FAST)

    assert Path(weights_ok(reply)["weights_path"]).read_bytes() == weights
    assert cdn_gets(hub) == [503, 503, 200]
    retries = [m for m in reply["logs"] if "retrying" in m]
    assert len(retries) == 2
    assert "attempt 1/3" in retries[0] and "attempt 2/3" in retries[1]
    assert "503" in retries[0]


def test_retries_give_up_after_the_last_attempt(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    hub.add(REPO, SAFE, payload(1000))
    hub.fail_next(10, 503, method="GET", server="cdn")

    reply = worker.call("download_hub_repo", REPO, cache_dir=str(tmp_path), retries=2, **FAST)

    assert reply["error"]["type"] == "DownloadError"
    assert "503" in reply["error"]["message"] and SAFE in reply["error"]["message"]
    assert cdn_gets(hub) == [503, 503]


def test_missing_repo_fails_at_once_with_troubleshooting(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    reply = worker.call("download_hub_repo", "org/no-such-repo", cache_dir=str(tmp_path),
                        retries=5, **FAST)

    error = reply["error"]
    assert error["type"] == "DownloadError"
    message = error["message"]
    assert "org/no-such-repo" in message and hub.url in message
    assert "RepositoryNotFoundError" in message
    assert message.endswith(download.TROUBLESHOOTING)  # the fixes are in the docs, named by path
    assert (ROOT / "docs" / "troubleshooting.md").is_file()
    assert len(hub.requests(path_contains="/resolve/")) == 1  # no retries
    assert not [m for m in reply["logs"] if "retrying" in m]


def test_repo_without_weights_names_the_files_it_tried(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    hub.add(REPO, CONFIG, b"{}")

    reply = worker.call("download_hub_repo", REPO, cache_dir=str(tmp_path), **FAST)

    assert reply["error"]["type"] == "DownloadError"
    assert SAFE in reply["error"]["message"] and BIN in reply["error"]["message"]
    assert resolve_requests(hub, SAFE) == [404] and resolve_requests(hub, BIN) == [404]


def test_connection_cut_mid_body_still_yields_the_right_bytes(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    weights = payload(300_000, seed=4)
    hub.add(REPO, SAFE, weights)
    hub.cut_next(100_000, method="GET", server="cdn")

    files = weights_ok(worker.call("download_hub_repo", REPO, cache_dir=str(tmp_path), **FAST))

    assert Path(files["weights_path"]).read_bytes() == weights
    # huggingface_hub recovers by itself. It buffers up to 10 MiB before writing, so for a
    # small file the second request asks for everything again rather than for a range.
    assert len(cdn_gets(hub)) == 2


def test_a_tokenizer_comes_with_its_special_token_files_into_one_folder(
    hub: FakeHub, worker: HubWorker, tmp_path: Path
) -> None:
    source = write_siglip_tokenizer(tmp_path / "made")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        hub.add(SIGLIP_REPO, name, (source / name).read_bytes())

    folder = Path(weights_ok(worker.call("download_tokenizer", SIGLIP_REPO, cache_dir=str(tmp_path / "c"), **FAST)))

    assert {p.name for p in folder.iterdir()} == {"tokenizer.json", "tokenizer_config.json"}
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in source.iterdir())
    assert resolve_requests(hub, "special_tokens_map.json") == [404]  # looked for, absent, not an error
    hub.remove(SIGLIP_REPO, "tokenizer.json")
    reply = worker.call("download_tokenizer", SIGLIP_REPO, cache_dir=str(tmp_path / "d"), **FAST)
    assert reply["error"]["type"] == "DownloadError" and "tokenizer.json" in reply["error"]["message"]


def test_unknown_pretrained_tag_lists_the_known_ones(hub: FakeHub, worker: HubWorker) -> None:
    reply = worker.call("download_pretrained", "ViT-B-32", "no-such-tag", **FAST)

    assert reply["error"]["type"] == "ModelNotAvailable"
    message = reply["error"]["message"]
    assert "no-such-tag" in message and "openai" in message and "laion2b_s34b_b79k" in message
    assert hub.log == []  # decided from open_clip's table alone

    reply = worker.call("download_pretrained", "No-Such-Arch", "openai", **FAST)
    assert "no pretrained weights for architecture 'No-Such-Arch'" in reply["error"]["message"]


# ---- helpers ------------------------------------------------------------------------------------


def _hub_error(status: int, error_type: type[Exception] | None = None) -> Exception:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(status, request=httpx2.Request("HEAD", "http://hub/x"))
    return (error_type or HfHubHTTPError)(f"{status} error", response=response)


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


def _retry_cases() -> list[tuple[str, Exception, bool, bool]]:
    """(name, error, is_transient, should_retry)."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    connect = httpx2.ConnectError("refused")
    return [
        ("hub connect error", connect, True, True),
        ("hub read timeout", httpx2.ReadTimeout("slow"), True, True),
        ("hub cut body", httpx2.RemoteProtocolError("peer closed"), True, True),
        ("503", _hub_error(503), True, True),
        ("429", _hub_error(429), True, True),
        ("404 repo", _hub_error(404, RepositoryNotFoundError), False, False),
        ("404 file", _hub_error(404, RemoteEntryNotFoundError), False, False),
        ("gated", _hub_error(401, GatedRepoError), False, False),
        ("403", _hub_error(403), False, False),
        ("metadata gave up", _caused(LocalEntryNotFoundError("x"), connect), True, False),
        ("offline", _caused(LocalEntryNotFoundError("x"), OfflineModeIsEnabled()), False, False),
        ("other", ValueError("bad"), False, False),
    ]


def test_retry_classification() -> None:
    for name, error, transient, retry in _retry_cases():
        assert (is_transient(error), should_retry(error)) == (transient, retry), name


def test_every_open_clip_pretrained_entry_names_a_hub_repo() -> None:
    """Why downloads only speak the hub protocol: no entry is reachable by URL alone."""
    entries = open_clip.list_pretrained()
    assert entries
    assert [e for e in entries if not open_clip.get_pretrained_cfg(*e).get("hf_hub")] == []


def test_hub_file_names() -> None:
    assert split_hf_hub("timm/vit_base_patch32_clip_224.openai/") == (OPENAI_REPO, BIN)
    assert split_hf_hub("org/repo/sub/w.bin") == ("org/repo", "sub/w.bin")
    assert safetensors_alternatives(BIN) == [SAFE]
    assert safetensors_alternatives("pytorch_model.bin") == ["pytorch_model.safetensors"]
    assert safetensors_alternatives("model.pth") == ["model.safetensors"]
    assert safetensors_alternatives("model.pt") == []
