"""Backup objects through the `objectstore` package: a directory tree or any S3 API."""

from __future__ import annotations

import os
import re

from events.guest import StoreOptions
from functions.core.ports import StorageError
from functions.settings import BackupSettings

# S3's bucket rules (lowercase, 3-63 characters); directories take a little more.
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DIRECTORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ObjectBackupStorage:
    def __init__(self, settings: BackupSettings) -> None:
        self.settings = settings

    def _s3(self):  # type: ignore[no-untyped-def]
        from objectstore import S3Settings

        s = self.settings
        return S3Settings(
            endpoint_url=s.s3_endpoint_url,
            region=s.s3_region,
            path_style=s.s3_path_style,
            access_key_id=os.environ.get("TROVELESS_S3_ACCESS_KEY_ID") or None,
            secret_access_key=os.environ.get("TROVELESS_S3_SECRET_ACCESS_KEY") or None,
        )

    def check_container(self, container: str) -> None:
        if self.settings.store == "s3":
            if not S3_BUCKET.match(container) or ".." in container:
                raise ValueError(
                    f"Container name '{container}' is not a valid S3 bucket name "
                    "(3-63 lowercase letters, digits, '.' or '-')."
                )
        elif not DIRECTORY.match(container):
            raise ValueError(
                f"Container name '{container}' is not valid (letters, digits, '.', '_' or '-', at most 128)."
            )

    def location(self, container: str, key: str) -> str:
        from objectstore import join_location

        self.check_container(container)
        if self.settings.store == "s3":
            return join_location("s3", container, key)
        return join_location("file", str(self.settings.directory / container), key)

    def store_options(self) -> StoreOptions:
        s = self.settings
        return StoreOptions(endpoint_url=s.s3_endpoint_url, region=s.s3_region, path_style=s.s3_path_style)

    def _open(self, location: str):  # type: ignore[no-untyped-def]
        from objectstore import ObjectStoreError, open_location

        try:
            return open_location(location, self._s3())
        except ObjectStoreError as exc:
            raise StorageError(str(exc)) from exc

    def delete(self, location: str) -> None:
        from objectstore import ObjectStoreError

        store, key = self._open(location)
        try:
            store.delete(key)
        except ObjectStoreError as exc:
            raise StorageError(str(exc)) from exc

    def exists(self, location: str) -> bool:
        from objectstore import ObjectStoreError

        store, key = self._open(location)
        try:
            return store.exists(key)
        except ObjectStoreError as exc:
            raise StorageError(str(exc)) from exc

    def head(self, location: str) -> tuple[int, dict[str, str]] | None:
        from objectstore import ObjectNotFound, ObjectStoreError

        store, key = self._open(location)
        try:
            info = store.head(key)
        except ObjectNotFound:
            return None
        except ObjectStoreError as exc:
            raise StorageError(str(exc)) from exc
        return info.size, dict(info.metadata)
