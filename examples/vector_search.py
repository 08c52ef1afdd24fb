"""Image search with CLIP and Qdrant: index a folder, then search it by text or by image.

    python -m examples.vector_search index photos/ [--collection NAME] [--qdrant-url URL]
    python -m examples.vector_search search "a red leather handbag" [--limit N]
    python -m examples.vector_search search --image query.jpg [--limit N]

Embeddings come from :class:`clip_client.CLIPEmbedder`, so ``USE_LOCAL_CLIP=true``
sends images to the running CLIP service and anything else loads the model in-process.
Qdrant runs embedded (files under ``--qdrant-path``) unless ``--qdrant-url`` names a server.

Re-indexing is incremental: each point's payload keeps the file's path, size, mtime, sha256
and the model that embedded it. A file whose size and mtime are unchanged is skipped without
being read; one whose stat changed but whose sha256 did not is only re-stamped; files gone from
the folder are removed from the collection. Point ids are uuid5 of the file's absolute path.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_client import CLIPEmbedder, ClipServiceError
from qdrant_client import QdrantClient, models

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DEFAULT_COLLECTION = "images"
DEFAULT_QDRANT_PATH = "qdrant_data"
_UPSERT_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: an indexed file and its cosine similarity to the query."""

    path: str
    score: float


@dataclasses.dataclass
class IndexReport:
    """What one indexing run did, as lists of absolute paths."""

    indexed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line for humans."""
        return (f"indexed {len(self.indexed)}, skipped {len(self.skipped)} unchanged, "
                f"failed {len(self.failed)}, removed {len(self.removed)}")


@dataclasses.dataclass(frozen=True)
class FileState:
    """What the index remembers about a file, to tell whether it changed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None

    @classmethod
    def of(cls, path: Path) -> FileState:
        stat = path.stat()
        return cls(str(path), stat.st_size, stat.st_mtime_ns)

    def hashed(self) -> FileState:
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return dataclasses.replace(self, sha256=digest.hexdigest())

    def same_stat(self, payload: dict[str, Any]) -> bool:
        return payload.get("size") == self.size and payload.get("mtime_ns") == self.mtime_ns


def point_id(path: Path) -> str:
    """Deterministic Qdrant point id of a file: uuid5 of its absolute path."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, path.resolve().as_uri()))


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), absolute and sorted."""
    return sorted(p.resolve() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageIndex:
    """A Qdrant collection of image embeddings, kept in step with folders on disk."""

    def __init__(self, embedder: CLIPEmbedder, qdrant: QdrantClient, collection: str = DEFAULT_COLLECTION) -> None:
        self.embedder = embedder
        self.qdrant = qdrant
        self.collection = collection

    async def index_folder(self, folder: str | os.PathLike[str], *, batch_size: int = 32,
                           show_progress: bool = True) -> IndexReport:
        """Embed new and changed images under ``folder``; drop entries for files that are gone."""
        root = Path(folder).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        files = list_images(root)
        self._ensure_collection()
        model = self.embedder.backend.health()["model"]
        report = IndexReport()
        todo = self._changed(files, model, report)
        rows = await self.embedder.generate_embeddings_batch([Path(s.path) for s in todo], batch_size=batch_size,
                                                             show_progress=show_progress)
        points = []
        for state, row in zip(todo, rows, strict=True):
            if row is None:
                report.failed.append(state.path)
                continue
            payload = {**dataclasses.asdict(state), "model": model}
            points.append(models.PointStruct(id=point_id(Path(state.path)), vector=row.tolist(), payload=payload))
            report.indexed.append(state.path)
        for start in range(0, len(points), _UPSERT_CHUNK):
            self.qdrant.upsert(self.collection, points[start : start + _UPSERT_CHUNK])
        # A file that no longer decodes must not keep answering queries with its old vector.
        self._delete([point_id(Path(p)) for p in report.failed])
        report.removed = self._prune(root, {str(p) for p in files})
        return report

    def _changed(self, files: list[Path], model: str, report: IndexReport) -> list[FileState]:
        """Files that need embedding; unchanged ones are recorded as skipped."""
        stored = self._payloads([point_id(p) for p in files])
        todo = []
        for path in files:
            state = FileState.of(path)
            old = stored.get(point_id(path))
            if old is not None and old.get("model") == model and state.same_stat(old):
                report.skipped.append(state.path)
                continue
            state = state.hashed()
            if old is not None and old.get("model") == model and old.get("sha256") == state.sha256:
                # Touched or copied over with the same bytes: keep the vector, refresh the stat.
                self.qdrant.set_payload(self.collection, dataclasses.asdict(state), points=[point_id(path)])
                report.skipped.append(state.path)
                continue
            todo.append(state)
        return todo

    def _payloads(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _UPSERT_CHUNK):
            for record in self.qdrant.retrieve(self.collection, ids[start : start + _UPSERT_CHUNK], with_payload=True):
                found[str(record.id)] = record.payload or {}
        return found

    def _prune(self, root: Path, present: set[str]) -> list[str]:
        """Delete points for files under ``root`` that no longer exist; their paths."""
        gone: dict[str, str] = {}
        offset = None
        while True:
            records, offset = self.qdrant.scroll(self.collection, limit=1024, offset=offset, with_payload=["path"])
            for record in records:
                path = (record.payload or {}).get("path", "")
                if Path(path).is_relative_to(root) and path not in present:
                    gone[str(record.id)] = path
            if offset is None:
                break
        self._delete(list(gone))
        return sorted(gone.values())

    def _delete(self, ids: list[str]) -> None:
        if ids:
            self.qdrant.delete(self.collection, models.PointIdsList(points=ids))  # type: ignore[arg-type]

    def _ensure_collection(self) -> None:
        size = self.embedder.get_embedding_dimension()
        if not self.qdrant.collection_exists(self.collection):
            self.qdrant.create_collection(
                self.collection, vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE))
            return
        vectors = self.qdrant.get_collection(self.collection).config.params.vectors
        if isinstance(vectors, models.VectorParams) and vectors.size != size:
            raise ValueError(f"collection '{self.collection}' holds {vectors.size}-dim vectors but the model "
                             f"gives {size}: index into another --collection")

    async def search_text(self, query: str, limit: int = 10) -> list[Hit]:
        """Indexed images ranked by similarity to a text, best first."""
        vector = await asyncio.to_thread(self.embedder.encode_text, query)
        return self._nearest(vector.tolist(), limit)

    async def search_image(self, image: str | os.PathLike[str], limit: int = 10) -> list[Hit]:
        """Indexed images ranked by similarity to an image file, best first."""
        vector = await self.embedder.generate_embedding(image)
        if vector is None:
            raise ValueError(f"{image} is not an image the model can read")
        return self._nearest(vector.tolist(), limit)

    def _nearest(self, vector: list[float], limit: int) -> list[Hit]:
        if not self.qdrant.collection_exists(self.collection):
            raise LookupError(f"collection '{self.collection}' does not exist: run 'index FOLDER' first")
        found = self.qdrant.query_points(self.collection, query=vector, limit=limit, with_payload=["path"])
        return [Hit(str((p.payload or {}).get("path")), float(p.score)) for p in found.points]


def open_qdrant(url: str | None = None, path: str | os.PathLike[str] = DEFAULT_QDRANT_PATH) -> QdrantClient:
    """A Qdrant server client when ``url`` is given, else embedded Qdrant storing under ``path``."""
    return QdrantClient(url=url) if url else QdrantClient(path=str(path))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--collection", default=DEFAULT_COLLECTION, help="Qdrant collection (default: %(default)s)")
    common.add_argument("--qdrant-url", help="Qdrant server URL (default: embedded Qdrant)")
    common.add_argument("--qdrant-path", default=DEFAULT_QDRANT_PATH,
                        help="embedded Qdrant's storage folder (default: %(default)s)")
    parser = argparse.ArgumentParser(prog="python -m examples.vector_search", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", parents=[common], help="index the images in a folder")
    index.add_argument("folder", type=Path)
    index.add_argument("--batch-size", type=int, default=32, help="images per request (default: %(default)s)")
    search = commands.add_parser("search", parents=[common], help="search by text or by image")
    search.add_argument("text", nargs="?", help="text query")
    search.add_argument("--image", type=Path, help="image query (instead of a text)")
    search.add_argument("--limit", type=int, default=10, help="results to show (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "search" and (args.text is None) == (args.image is None):
        search.error("give either a text query or --image PATH")
    return args


async def _run(args: argparse.Namespace, index: ImageIndex) -> None:
    if args.command == "index":
        report = await index.index_folder(args.folder, batch_size=args.batch_size)
        print(report.summary())
        for path in report.failed:
            print(f"  failed: {path}")
        return
    if args.image is not None:
        hits = await index.search_image(args.image, args.limit)
    else:
        hits = await index.search_text(args.text, args.limit)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>3}. {hit.score:.4f}  {hit.path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = parse_args(argv)
    qdrant = open_qdrant(args.qdrant_url, args.qdrant_path)
    try:
        with CLIPEmbedder() as embedder:
            asyncio.run(_run(args, ImageIndex(embedder, qdrant, args.collection)))
    except (ClipServiceError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        qdrant.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
