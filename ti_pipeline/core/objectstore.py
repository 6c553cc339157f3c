"""One object-store abstraction over ``gs://`` buckets and ``file://`` folders.

Both list a prefix, stream a read and write atomically: a folder writes a temporary file and renames
it, GCS makes an object visible only when its upload completes (optionally under a generation
precondition). Names are relative to the store's root and are checked never to leave it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from ti_pipeline.core import settings


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the store root
    size: int
    # Changes whenever the object is rewritten: GCS generation, or mtime in ns for a folder.
    generation: int
    updated: float  # seconds since the epoch


class ObjectStore:
    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def stat(self, name: str) -> ObjectInfo | None:
        raise NotImplementedError

    def open_read(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def write_file(self, name: str, local_path: Path) -> ObjectInfo:
        """Publish a finished local file as ``name`` in one atomic step."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def write_bytes(self, name: str, data: bytes) -> ObjectInfo:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            return self.write_file(name, Path(tmp.name))
        finally:
            Path(tmp.name).unlink(missing_ok=True)

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as f:
            return f.read()

    def url_of(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"unsafe object name: {name!r}")
    return name


class LocalStore(ObjectStore):
    """A folder used as a bucket (the embedded default and the demo)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.uri = self.root.as_uri()

    def _path(self, name: str) -> Path:
        path = (self.root / _check_name(name)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object name leaves the store: {name!r}")
        return path

    def _info(self, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / filename
                name = path.relative_to(self.root).as_posix()
                if name.startswith(prefix):
                    yield self._info(path)

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        return self._info(path) if path.is_file() else None

    def open_read(self, name: str) -> BinaryIO:
        return open(self._path(name), "rb")

    def write_file(self, name: str, local_path: Path) -> ObjectInfo:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(local_path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return self._info(path)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


class GcsStore(ObjectStore):
    """A ``gs://bucket/prefix`` root; honours ``STORAGE_EMULATOR_HOST`` (anonymous, for tests)."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        from google.cloud import storage

        if client is None:
            if settings.is_set("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project="ti-pipeline", credentials=AnonymousCredentials())
            else:
                client = storage.Client()
        self.client = client
        self.bucket = client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _info(self, blob) -> ObjectInfo:
        name = blob.name[len(self.prefix) + 1 :] if self.prefix else blob.name
        updated = blob.updated.timestamp() if blob.updated else 0.0
        return ObjectInfo(name, blob.size or 0, int(blob.generation or 0), updated)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        for blob in self.client.list_blobs(self.bucket, prefix=full):
            yield self._info(blob)

    def stat(self, name: str) -> ObjectInfo | None:
        blob = self.bucket.get_blob(self._key(name))
        return self._info(blob) if blob is not None else None

    def open_read(self, name: str) -> BinaryIO:
        return self.bucket.blob(self._key(name)).open("rb", chunk_size=8 << 20)

    def write_file(self, name: str, local_path: Path) -> ObjectInfo:
        blob = self.bucket.blob(self._key(name))
        blob.upload_from_filename(str(local_path))
        blob.reload()
        return self._info(blob)

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.bucket.blob(self._key(name)).delete()
        except NotFound:
            pass


def open_store(uri: str) -> ObjectStore:
    """The store behind a ``gs://bucket/prefix`` or ``file:///path`` (or plain path) URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "gs":
        return GcsStore(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "":
        return LocalStore(Path(uri))
    raise ValueError(f"unsupported object-store URI: {uri!r} (use gs:// or file://)")
