"""What a worker serves: the selected store entry, warm in its runtime, and why each was chosen."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from ..runtimes.encoder import Encoder

if TYPE_CHECKING:  # for type checkers only: the supervisor imports this module and must not load model selection
    from ..runtimes.choice import RuntimeChoice
    from ..store.selection import Selection


@dataclasses.dataclass
class ServedModel:
    """The model a worker serves: selected, loaded in its runtime and precision, warm."""

    selection: Selection
    encoder: Encoder
    threads: int
    choice: RuntimeChoice

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The served model's id (its store name), then every alias a request may name it by: the
        full tag, a compiled entry's parent, the open_clip name (and with its pretrained tag), ``clip``."""
        entry = self.encoder.entry
        arch, pretrained, parent = (entry.labels.get(k) for k in ("arch", "pretrained", "parent"))
        names = [entry.tag.split(":")[0], entry.tag, parent, parent and parent.split(":")[0], arch,
                 arch and pretrained and f"{arch}/{pretrained}", "clip"]
        return tuple(dict.fromkeys(name for name in names if name))

    def info(self) -> dict[str, Any]:
        """What is served, where, why and how: the body of ``/health`` (less the live fields)."""
        entry, selection = self.encoder.entry, self.selection
        return {
            "model": entry.tag,
            "arch": entry.labels.get("arch"),
            "pretrained": entry.labels.get("pretrained"),
            "source": entry.labels.get("source"),
            **self.encoder.describe(),
            "embedding_size": entry.embedding_size,
            "reason": selection.reason,
            "fallback": selection.fallback,
            "hardware": selection.hardware,
            "runtime_choice": dataclasses.asdict(self.choice),
            "threads": self.threads,
            "image_size": entry.metadata.get("image_size"),
        }
