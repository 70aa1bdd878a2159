"""Locations name an object completely: file:///dir/key and s3://bucket/key."""

from __future__ import annotations

from pathlib import Path

import pytest

from objectstore import (
    ObjectStoreError,
    S3Settings,
    join_location,
    open_location,
    split_location,
)
from objectstore.filesystem import FileStore
from objectstore.s3 import S3Store


@pytest.mark.parametrize(
    "location, parts",
    [
        ("file:///var/backups/b1.xbstream", ("file", "/var/backups", "b1.xbstream")),
        ("file:///top", ("file", "/", "top")),
        ("file:///var/back%20ups/b%201", ("file", "/var/back ups", "b 1")),
        ("s3://bucket/b1.xbstream", ("s3", "bucket", "b1.xbstream")),
        ("s3://bucket/tenant/inst/b%201.zst", ("s3", "bucket", "tenant/inst/b 1.zst")),
    ],
)
def test_split_and_join_roundtrip(location: str, parts: tuple[str, str, str]) -> None:
    assert split_location(location) == parts
    assert join_location(*parts) == location
    assert split_location(join_location(*parts)) == parts


@pytest.mark.parametrize(
    "location",
    [
        "http://host/key",
        "/var/backups/key",
        "file://otherhost/dir/key",
        "file:///dir/",
        "file:relative/key",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key",
    ],
)
def test_bad_locations_are_rejected(location: str) -> None:
    with pytest.raises(ObjectStoreError):
        split_location(location)
    with pytest.raises(ObjectStoreError):
        open_location(location)


def test_join_rejects_unknown_scheme() -> None:
    with pytest.raises(ObjectStoreError):
        join_location("ftp", "host", "key")


def test_open_file_location_roundtrip(tmp_path: Path) -> None:
    location = join_location("file", str(tmp_path / "backups"), "b1")
    store, key = open_location(location)
    assert isinstance(store, FileStore) and key == "b1"
    with store.writer(key) as w:
        w.write(b"data")
        w.commit()
    again, key = open_location(location)
    assert b"".join(again.read(key)) == b"data"
    assert (tmp_path / "backups" / "b1").read_bytes() == b"data"


def test_open_s3_location_roundtrip(s3_settings: S3Settings) -> None:
    location = join_location("s3", "located", "tenant/b 1")
    store, key = open_location(location, s3_settings)
    assert isinstance(store, S3Store) and (store.bucket, key) == ("located", "tenant/b 1")
    with store.writer(key) as w:
        w.write(b"data")
        w.commit()
    again, key = open_location(location, s3_settings)
    assert b"".join(again.read(key)) == b"data"
    assert again.head(key).metadata["sha256"] == w.sha256
