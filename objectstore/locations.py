"""Locations (`file:///abs/dir/key`, `s3://bucket/key`) to stores and keys."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

from objectstore.base import ObjectStore, ObjectStoreError, S3Settings


def split_location(location: str) -> tuple[str, str, str]:
    """(scheme, container, key): for file:// the container is the object's directory."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or path.endswith("/"):
            raise ObjectStoreError(f"invalid file location {location!r}")
        directory, _, key = path.rpartition("/")
        return "file", directory or "/", key
    if parts.scheme == "s3":
        key = unquote(parts.path.lstrip("/"))
        if not parts.netloc or not key:
            raise ObjectStoreError(f"invalid s3 location {location!r}")
        return "s3", parts.netloc, key
    raise ObjectStoreError(f"unsupported location {location!r} (file:// or s3://)")


def join_location(scheme: str, container: str, key: str) -> str:
    if scheme == "file":
        return "file://" + quote(f"{container.rstrip('/')}/{key}")
    if scheme == "s3":
        return f"s3://{container}/{quote(key)}"
    raise ObjectStoreError(f"unsupported scheme {scheme!r}")


def open_location(location: str, s3: S3Settings | None = None) -> tuple[ObjectStore, str]:
    scheme, container, key = split_location(location)
    if scheme == "file":
        from objectstore.filesystem import FileStore

        return FileStore(container), key
    from objectstore.s3 import S3Store  # boto3 is heavy: only when S3 is used

    return S3Store(container, s3 or S3Settings()), key
