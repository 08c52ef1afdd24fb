"""The image–caption pairs of a CSV, as fine-tuning and calibration read them.

The CSV has a header with at least ``image_path`` and ``text`` columns (calibration also reads
an optional ``label``); paths are relative to an image root (by default the CSV's folder).
Images go through the service's own decode and the model's own preprocessing
(:class:`~clip_runner.preprocessing.images.UploadPreparer`), so a model is trained and calibrated on
exactly the pixels it will be served. Rows that cannot be used (a missing file, an unreadable
image, an empty text) are counted, reported and skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PairDataError
from ..preprocessing.images import PixelPipeline, UploadPreparer
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
    decoder: RowDecoder
    pixels: list[np.ndarray] | None
    total_rows: int
    reasons: list[str]

    @property
    def pipeline(self) -> PixelPipeline:
        return self.decoder.pipeline

    @property
    def skipped(self) -> int:
        return self.total_rows - len(self.rows)

    @property
    def texts(self) -> list[str]:
        return [row.text for row in self.rows]

    def batch_pixels(self, indices: Sequence[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 pixels of the given rows."""
        if self.pixels is not None:
            return np.stack([self.pixels[i] for i in indices])
        return np.stack([self.decoder(self.rows[i]) for i in indices])

    def report(self) -> dict[str, Any]:
        """Counts and the first few reasons, for logs and store metadata."""
        return {"rows": self.total_rows, "used": len(self.rows), "skipped": self.skipped,
                "skip_reasons": self.reasons[:MAX_REPORTED_REASONS]}


def read_pair_rows(
    csv_path: str | Path, image_root: str | Path | None = None, *, with_label: bool = False
) -> tuple[list[PairRow], int, list[tuple[int, str]]]:
    """Parse the CSV: (rows whose file exists and text is non-empty, data row count, problems).

    Each problem is (CSV line, reason).
    ``with_label`` also reads an optional ``label`` column (1 = the text matches the image,
    0 = it does not); a row with another value is skipped.
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    try:
        handle = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PairDataError(f"cannot read {csv_path}: {exc}") from exc
    rows: list[PairRow] = []
    problems: list[tuple[int, str]] = []
    total = 0
    with handle:
        reader = csv.DictReader(handle)
        missing = {"image_path", "text"} - set(reader.fieldnames or ())
        if missing:
            raise PairDataError(
                f"{csv_path} needs a header with image_path and text columns; missing: {', '.join(sorted(missing))}")
        labelled = with_label and "label" in (reader.fieldnames or ())
        for record in reader:
            total += 1
            row, reason = _parse_record(record, reader.line_num, root, labelled)
            if row is None:
                problems.append((reader.line_num, reason))
            else:
                rows.append(row)
    return rows, total, problems


def _parse_record(record: dict[str, Any], line: int, root: Path, labelled: bool) -> tuple[PairRow | None, str]:
    path_text = (record.get("image_path") or "").strip()
    text = (record.get("text") or "").strip()
    if not path_text:
        return None, "empty image_path"
    if not text:
        return None, f"empty text for {path_text}"
    path = root / path_text
    if not path.is_file():
        return None, f"image not found: {path}"
    label = None
    if labelled:
        raw = (record.get("label") or "").strip()
        if raw not in ("0", "1"):
            return None, f"label must be 1 (match) or 0 (mismatch), got {raw!r}"
        label = int(raw)
    return PairRow(line, path, text, label), ""


@dataclasses.dataclass(frozen=True)
class RowDecoder:
    """A CSV row's image file → model-input pixels, decoded as the service decodes uploads."""

    prepare: UploadPreparer

    @classmethod
    def for_model(cls, preprocess_cfg: dict[str, Any]) -> RowDecoder:
        """A decoder with the server's upload limits and the model's preprocessing."""
        return cls(UploadPreparer.from_settings(preprocess_cfg, ClipSettings()))

    @property
    def pipeline(self) -> PixelPipeline:
        return self.prepare.pipeline

    def __call__(self, row: PairRow) -> np.ndarray:
        return self.prepare(row.image_path.read_bytes(), field=str(row.image_path))

    def attempt(self, row: PairRow) -> np.ndarray | str:
        """The pixels, or the reason the row cannot be used."""
        try:
            return self(row)
        except InputError as exc:
            return exc.message
        except OSError as exc:
            return f"cannot read {row.image_path}: {exc}"


def load_pairs(
    csv_path: str | Path,
    preprocess_cfg: dict[str, Any],
    image_root: str | Path | None = None,
    *,
    with_label: bool = False,
    threads: int = 2,
    min_rows: int = 1,
) -> PairSet:
    """Read the CSV and decode every image once, skipping (and reporting) rows that fail.

    Preprocessed pixels stay in memory when they fit in ``PIXEL_CACHE_MB``; otherwise images
    are decoded again whenever a batch needs them. Raises :class:`PairDataError` when fewer
    than ``min_rows`` rows are usable.
    """
    rows, total, problems = read_pair_rows(csv_path, image_root, with_label=with_label)
    decoder = RowDecoder.for_model(preprocess_cfg)
    pipeline = decoder.pipeline
    with ThreadPoolExecutor(max(1, threads)) as pool:
        decoded = list(pool.map(decoder.attempt, rows))
    good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    problems += [(rows[i].line, item) for i, item in enumerate(decoded) if isinstance(item, str)]
    reasons = [f"line {line}: {reason}" for line, reason in sorted(problems)]
    per_image = pipeline.size[0] * pipeline.size[1] * 3
    cache = len(good) * per_image <= PIXEL_CACHE_MB * 1024 * 1024
    pairs = PairSet([rows[i] for i in good], decoder, [decoded[i] for i in good] if cache else None,  # type: ignore[misc]
                    total, reasons)
    _log_report(csv_path, pairs)
    if len(pairs.rows) < min_rows:
        first = "; ".join(reasons[:MAX_REPORTED_REASONS]) or "the CSV has no data rows"
        raise PairDataError(
            f"{csv_path}: {len(pairs.rows)} usable image–text rows of {total}; at least {min_rows} needed. "
            f"First problems: {first}")
    return pairs


def _log_report(csv_path: str | Path, pairs: PairSet) -> None:
    if pairs.skipped:
        logger.warning("%s: skipped %d of %d rows; first reasons:\n  %s", csv_path, pairs.skipped,
                       pairs.total_rows, "\n  ".join(pairs.reasons[:MAX_REPORTED_REASONS]))
    logger.info("%s: %d usable image–text pairs", csv_path, len(pairs.rows))
