"""The object store contract: streaming writes with a running SHA-256, streaming reads."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field


class ObjectStoreError(RuntimeError):
    """A store operation failed; the message is safe to show (no credentials)."""


class ObjectNotFound(ObjectStoreError):
    pass


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 API. Credentials None = boto3's own chain (env, config files)."""

    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # User metadata as stored (S3: x-amz-meta-*; filesystem: a JSON sidecar).
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectWriter(ABC):
    """A streaming upload. Bytes are written in order and never held whole in memory
    (at most one part buffer, plus one in flight for S3). The object appears under its key
    only at `commit`; `abort` (or an exception inside `with`) leaves nothing behind."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._sha256.update(data)
        self.bytes_written += len(data)
        self._write(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @abstractmethod
    def _write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def commit(self, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Publish the object with its metadata (merged over the writer's initial metadata);
        `sha256` is always added to the metadata."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written so far; idempotent."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()


class ObjectStore(ABC):
    @abstractmethod
    def writer(self, key: str, metadata: dict[str, str] | None = None) -> ObjectWriter: ...

    @abstractmethod
    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in chunks (streamed). ObjectNotFound if absent."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and metadata. ObjectNotFound if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object and any partial upload of it; absent is fine."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Complete objects whose key starts with prefix (metadata may be empty here)."""

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except ObjectNotFound:
            return False
