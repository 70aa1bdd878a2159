"""Stores under test: the same contract runs on FileStore and on S3Store, the latter against
moto's S3 server over real HTTP on 127.0.0.1 (one server per session). If moto cannot start,
the tests fail: they are never skipped."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from objectstore import ObjectStore, S3Settings
from objectstore.filesystem import FileStore

MiB = 1 << 20
PART = 5 * MiB  # the smallest part S3 allows, so multi-part objects stay small


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(moto_endpoint: str) -> S3Settings:
    return S3Settings(
        endpoint_url=moto_endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id="AKIATESTTESTTEST",
        secret_access_key="fake-secret-never-shown",
    )


@pytest.fixture
def s3_store(s3_settings: S3Settings):  # type: ignore[no-untyped-def]
    from objectstore.s3 import S3Store

    # a fresh bucket per test (created by the first write): tests never see each other
    return S3Store(f"t-{uuid.uuid4().hex[:12]}", s3_settings, part_size=PART)


def pending_uploads(store, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Unfinished uploads of exactly `key`, whatever the store."""
    if isinstance(store, FileStore):
        partial = Path(store.root) / (key + ".partial")
        return [str(partial)] if partial.exists() else []
    try:
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    except store.client.exceptions.NoSuchBucket:
        return []
    return [u["UploadId"] for u in uploads if u["Key"] == key]


@dataclass
class Harness:
    store: ObjectStore
    pending: Callable[[str], list[str]]


@pytest.fixture(params=["file", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "file":
        store: ObjectStore = FileStore(tmp_path / "objects")
    else:
        store = request.getfixturevalue("s3_store")
    return Harness(store, lambda key: pending_uploads(store, key))
