"""Objects as files under a root directory: the embedded default.

An object `key` is the file `<root>/<key>`, its metadata the JSON sidecar
`<root>/<key>.meta.json`. Writes go to `<key>.partial` and are published by rename after
fsync, so a reader never sees half an object and a crash leaves only a `.partial` file,
which `delete` removes too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from objectstore.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectWriter,
)

META_SUFFIX = ".meta.json"
PARTIAL_SUFFIX = ".partial"


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ObjectStoreError(f"invalid object key {key!r}")
    if key.endswith((META_SUFFIX, PARTIAL_SUFFIX)):
        raise ObjectStoreError(f"object key {key!r} uses a reserved suffix")


class _FileWriter(ObjectWriter):
    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        super().__init__()
        self.path = path
        self.metadata = dict(metadata)
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")  # noqa: SIM115 - closed in commit/abort
        self._done = False

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)

    def commit(self, metadata: dict[str, str] | None = None) -> ObjectInfo:
        self.metadata.update(metadata or {})
        self.metadata["sha256"] = self.sha256
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        meta = self.path.with_name(self.path.name + META_SUFFIX)
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps(self.metadata, sort_keys=True))
        # Metadata first: an object file never exists without its metadata.
        tmp.rename(meta)
        self.partial.rename(self.path)
        _fsync_dir(self.path.parent)
        self._done = True
        return ObjectInfo(self.path.name, self.bytes_written, dict(self.metadata))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self.partial.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(ObjectStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def writer(self, key: str, metadata: dict[str, str] | None = None) -> ObjectWriter:
        return _FileWriter(self._path(key), metadata or {})

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key!r} not found") from None
        return self._chunks(f, chunk_size)

    @staticmethod
    def _chunks(f: object, chunk_size: int) -> Iterator[bytes]:
        with f:  # type: ignore[attr-defined]
            while chunk := f.read(chunk_size):  # type: ignore[attr-defined]
                yield chunk

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key!r} not found") from None
        meta = path.with_name(path.name + META_SUFFIX)
        metadata = json.loads(meta.read_text()) if meta.exists() else {}
        return ObjectInfo(key, size, metadata)

    def delete(self, key: str) -> None:
        path = self._path(key)
        for suffix in ("", PARTIAL_SUFFIX, META_SUFFIX):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        found = []
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.name.endswith((META_SUFFIX, PARTIAL_SUFFIX, ".tmp")):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                found.append(ObjectInfo(key, path.stat().st_size))
        return found
