"""The image–caption pairs of a CSV, as fine-tuning and calibration read them (the CSV's format:
docs/demo-and-finetuning.md). Images go through the service's own decode and the model's own
preprocessing (:class:`~clip_runner.preprocessing.images.UploadPreparer`), so a model is trained and
calibrated on exactly the pixels it will be served.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PairDataError
from ..preprocessing.images import UploadPreparer
from ..settings import ClipSettings

logger = logging.getLogger(__name__)

MAX_REPORTED_REASONS = 5
PIXEL_CACHE_MB = 4096  # decoded pixels kept in memory up to this size; beyond it, decoded per batch


@dataclasses.dataclass(frozen=True)
class PairRow:
    """One usable-looking CSV row. ``line`` is the CSV line number (the header is line 1)."""

    line: int
    image_path: Path
    text: str
    label: int | None = None


@dataclasses.dataclass
class PairSet:
    """The usable pairs of a CSV, their preprocessed pixels when cached, and what was skipped."""

    rows: list[PairRow]
    prepare: UploadPreparer  # the server's upload limits and decode, the model's preprocessing
    pixels: list[np.ndarray] | None
    total_rows: int
    reasons: list[str]

    def batch_pixels(self, indices: Sequence[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 pixels of the given rows."""
        return np.stack([self.pixels[i] if self.pixels is not None else _decode(self.prepare, self.rows[i])
                         for i in indices])

    def report(self) -> dict[str, Any]:
        """Counts and the first few reasons, for logs and store metadata."""
        return {"rows": self.total_rows, "used": len(self.rows), "skipped": self.total_rows - len(self.rows),
                "skip_reasons": self.reasons[:MAX_REPORTED_REASONS]}


def read_pair_rows(csv_path: str | Path, image_root: str | Path | None = None, *,
                   with_label: bool = False) -> tuple[list[PairRow], int, list[tuple[int, str]]]:
    """Parse the CSV: (rows whose file exists and text is non-empty, data row count, problems), each problem a
    (CSV line, reason). ``with_label`` also reads an optional ``label`` column (1 = the text matches the image,
    0 = it does not); a row with another value is skipped."""
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    try:
        handle = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PairDataError(f"cannot read {csv_path}: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        if missing := {"image_path", "text"} - set(reader.fieldnames or ()):
            raise PairDataError(
                f"{csv_path} needs a header with image_path and text columns; missing: {', '.join(sorted(missing))}")
        labelled = with_label and "label" in (reader.fieldnames or ())
        parsed = [_parse_record(record, reader.line_num, root, labelled) for record in reader]
    problems = [item for item in parsed if isinstance(item, tuple)]
    return [item for item in parsed if isinstance(item, PairRow)], len(parsed), problems


def _parse_record(record: dict[str, Any], line: int, root: Path, labelled: bool) -> PairRow | tuple[int, str]:
    """The row, or (line, the reason it cannot be used)."""
    path_text = (record.get("image_path") or "").strip()
    text = (record.get("text") or "").strip()
    if not path_text:
        return line, "empty image_path"
    if not text:
        return line, f"empty text for {path_text}"
    path = root / path_text
    if not path.is_file():
        return line, f"image not found: {path}"
    raw = (record.get("label") or "").strip()
    if labelled and raw not in ("0", "1"):
        return line, f"label must be 1 (match) or 0 (mismatch), got {raw!r}"
    return PairRow(line, path, text, int(raw) if labelled else None)


def _decode(prepare: UploadPreparer, row: PairRow) -> np.ndarray:
    return prepare(row.image_path.read_bytes(), field=str(row.image_path))


def _attempt(prepare: UploadPreparer, row: PairRow) -> np.ndarray | str:
    """The row's pixels, or the reason it cannot be used."""
    try:
        return _decode(prepare, row)
    except InputError as exc:
        return exc.message
    except OSError as exc:
        return f"cannot read {row.image_path}: {exc}"


def load_pairs(csv_path: str | Path, preprocess_cfg: dict[str, Any], image_root: str | Path | None = None, *,
               with_label: bool = False, threads: int = 2, min_rows: int = 1) -> PairSet:
    """Read the CSV and decode every image once, skipping (and reporting) rows that fail; a
    :class:`PairDataError` when fewer than ``min_rows`` rows are usable."""
    rows, total, problems = read_pair_rows(csv_path, image_root, with_label=with_label)
    prepare = UploadPreparer.from_settings(preprocess_cfg, ClipSettings())
    with ThreadPoolExecutor(max(1, threads)) as pool:
        decoded = list(pool.map(functools.partial(_attempt, prepare), rows))
    good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    problems += [(rows[i].line, item) for i, item in enumerate(decoded) if isinstance(item, str)]
    reasons = [f"line {line}: {reason}" for line, reason in sorted(problems)]
    cache = len(good) * prepare.pipeline.size[0] * prepare.pipeline.size[1] * 3 <= PIXEL_CACHE_MB * 1024 * 1024
    pixels = [decoded[i] for i in good] if cache else None
    pairs = PairSet([rows[i] for i in good], prepare, pixels, total, reasons)  # type: ignore[arg-type]
    if len(good) < total:
        logger.warning("%s: skipped %d of %d rows; first reasons:\n  %s", csv_path, total - len(good), total,
                       "\n  ".join(reasons[:MAX_REPORTED_REASONS]))
    logger.info("%s: %d usable image–text pairs", csv_path, len(good))
    if len(good) < min_rows:
        first = "; ".join(reasons[:MAX_REPORTED_REASONS]) or "the CSV has no data rows"
        raise PairDataError(
            f"{csv_path}: {len(good)} usable image–text rows of {total}; at least {min_rows} needed. "
            f"First problems: {first}")
    return pairs
