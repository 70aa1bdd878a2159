"""What only S3Store has: background part uploads, server-side metadata copies, buckets,
error mapping, bounded memory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from objectstore import ObjectStoreError, S3Settings
from objectstore.s3 import S3Store
from tests.objectstore.conftest import PART, pending_uploads

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_upload_thread_left() -> Iterator[None]:
    yield
    assert not [t.name for t in threading.enumerate() if t.name.startswith("s3-upload")]


def test_upload_thread_error_surfaces_and_aborts(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = s3_store.client.upload_part
    calls = []

    def flaky_upload_part(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": f"boom {s3_store.settings.secret_access_key}"}},
                "UploadPart",
            )
        return real(**kwargs)

    monkeypatch.setattr(s3_store.client, "upload_part", flaky_upload_part)
    chunk = random.Random(2).randbytes(MiB)
    w = s3_store.writer("failing")
    with pytest.raises(ObjectStoreError, match="InternalError") as raised:
        for _ in range(40):  # far more than needed: the error shows within a few parts
            w.write(chunk)
        w.commit()
    assert "fake-secret-never-shown" not in str(raised.value)
    assert max(calls) <= 4  # the writer stopped soon after the failure
    assert pending_uploads(s3_store, "failing") == []
    assert not s3_store.exists("failing")
    with pytest.raises(ObjectStoreError):
        w.write(b"more")
    w.abort()  # still fine


def test_commit_error_aborts(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**kwargs):  # type: ignore[no-untyped-def]
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "no"}}, "CompleteMultipartUpload")

    monkeypatch.setattr(s3_store.client, "complete_multipart_upload", fail)
    w = s3_store.writer("k")
    w.write(bytes(PART + 1))
    with pytest.raises(ObjectStoreError, match="SlowDown"):
        w.commit()
    assert pending_uploads(s3_store, "k") == [] and not s3_store.exists("k")


def test_failed_metadata_copy_removes_the_object(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**kwargs):  # type: ignore[no-untyped-def]
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "CopyObject")

    monkeypatch.setattr(s3_store.client, "copy_object", fail)
    w = s3_store.writer("k")
    w.write(bytes(PART + 1))
    with pytest.raises(ObjectStoreError, match="AccessDenied"):
        w.commit()
    assert not s3_store.exists("k") and pending_uploads(s3_store, "k") == []


def test_writes_after_commit_or_abort_are_errors(s3_store: S3Store) -> None:
    w = s3_store.writer("once")
    w.write(b"x")
    w.commit()
    for action in (lambda: w.write(b"y"), w.commit):
        with pytest.raises(ObjectStoreError):
            action()
    w.abort()  # a no-op after commit
    assert b"".join(s3_store.read("once")) == b"x"


def test_metadata_of_objects_beyond_copy_object_limit(s3_store: S3Store) -> None:
    """Past CopyObject's 5 GB the metadata goes on by a multipart UploadPartCopy; the limits
    are lowered here so a few MiB take that path."""
    s3_store.max_copy_object = PART
    s3_store.copy_part_size = PART
    payload = random.Random(3).randbytes(PART * 3 + 123)
    with s3_store.writer("huge", {"engine": "postgresql"}) as w:
        w.write(payload)
        info = w.commit({"wal": "0/3000060"})
    expected = {"engine": "postgresql", "wal": "0/3000060", "sha256": hashlib.sha256(payload).hexdigest()}
    assert info.metadata == expected == s3_store.head("huge").metadata
    assert b"".join(s3_store.read("huge")) == payload
    assert pending_uploads(s3_store, "huge") == []


def test_bucket_is_created_once_and_shared(s3_settings: S3Settings) -> None:
    first, second = S3Store("shared-bucket", s3_settings), S3Store("shared-bucket", s3_settings)
    assert first.list() == []  # no bucket yet: an empty listing, not an error
    for store, key in ((first, "a"), (second, "b")):
        with store.writer(key) as w:
            w.write(key.encode())
            w.commit()
    assert [o.key for o in first.list()] == ["a", "b"]
    assert "shared-bucket" in [b["Name"] for b in first.client.list_buckets()["Buckets"]]


def test_bucket_in_another_region(s3_settings: S3Settings) -> None:
    store = S3Store("eu-bucket", dataclasses.replace(s3_settings, region="eu-west-1"))
    with store.writer("k") as w:
        w.write(b"v")
        w.commit()
    assert store.client.get_bucket_location(Bucket="eu-bucket")["LocationConstraint"] == "eu-west-1"


def test_errors_never_show_credentials(s3_settings: S3Settings) -> None:
    # port 9 (discard) on loopback: nothing listens, connection refused at once
    settings = dataclasses.replace(s3_settings, endpoint_url="http://127.0.0.1:9")
    store = S3Store("b", settings)
    with pytest.raises(ObjectStoreError) as raised:
        store.head("k")
    assert "127.0.0.1:9" in str(raised.value)
    for secret in (settings.secret_access_key, settings.access_key_id):
        assert secret not in str(raised.value)


def test_arguments_are_checked_before_uploading(s3_store: S3Store, s3_settings: S3Settings) -> None:
    with pytest.raises(ValueError):
        S3Store("b", s3_settings, part_size=4 * MiB)
    with pytest.raises(ObjectStoreError, match="lowercase"):
        s3_store.writer("k", {"Engine": "x"})
    with pytest.raises(ObjectStoreError, match="ASCII"):
        s3_store.writer("k", {"note": "café"})
    w = s3_store.writer("k")
    w.write(bytes(PART + 1))
    with pytest.raises(ObjectStoreError, match="2048"):
        w.commit({"big": "x" * 3000})
    assert pending_uploads(s3_store, "k") == [] and not s3_store.exists("k")


def test_part_size_grows_for_very_long_streams(s3_store: S3Store) -> None:
    from objectstore import s3

    w = s3_store.writer("k")
    assert w._part_limit() == PART  # type: ignore[attr-defined]
    w._part_number = s3.PART_GROWTH_EVERY  # type: ignore[attr-defined]
    assert w._part_limit() == 2 * PART  # type: ignore[attr-defined]
    w._part_number = s3.MAX_PARTS - 1  # type: ignore[attr-defined]
    assert w._part_limit() == 16 * PART  # type: ignore[attr-defined]
    w.abort()
    big = S3Store(s3_store.bucket, s3_store.settings, part_size=1 << 30).writer("k")
    big._part_number = s3.MAX_PARTS - 1  # type: ignore[attr-defined]
    assert big._part_limit() == s3.MAX_PART_SIZE  # capped at S3's maximum part  # type: ignore[attr-defined]
    big.abort()


# The writer runs in a child process: moto keeps whole objects in memory in *this* process,
# which tracemalloc would count.
MEMORY_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys, tracemalloc
    from objectstore import S3Settings
    from objectstore.s3 import S3Store

    settings = S3Settings(**json.loads(sys.argv[1]))
    store = S3Store(sys.argv[2], settings, part_size=8 << 20)
    chunk = os.urandom(1 << 20)
    expected = hashlib.sha256()

    def high_water_rss():  # VmHWM: unlike ru_maxrss, not inherited from the parent process
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    rss_before = high_water_rss()
    tracemalloc.start()
    with store.writer("big") as w:
        for i in range(200):
            piece = i.to_bytes(4, "big") + chunk[4:]
            expected.update(piece)
            w.write(piece)
        info = w.commit()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = high_water_rss() - rss_before
    print(json.dumps({"peak": peak, "rss_growth": rss_growth, "size": info.size,
                      "sha256": info.metadata["sha256"], "expected": expected.hexdigest()}))
    """
)


def test_memory_stays_bounded_for_a_200_mib_object(s3_store: S3Store) -> None:
    settings = json.dumps(dataclasses.asdict(s3_store.settings))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, settings, s3_store.bucket],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size"] == 200 * MiB
    assert result["sha256"] == result["expected"] == s3_store.head("big").metadata["sha256"]
    # about 3 parts of 8 MiB plus overhead (tracemalloc: Python allocations; RSS: everything,
    # also the interpreter's and OpenSSL's own); the object is 200 MiB
    assert result["peak"] < 64 * MiB, result
    assert result["rss_growth"] < 96 * MiB, result
    s3_store.delete("big")
