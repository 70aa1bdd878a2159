"""The object store contract, run on every store (FileStore and S3Store over moto)."""

from __future__ import annotations

import hashlib
import random

import pytest

from objectstore import ObjectNotFound
from tests.objectstore.conftest import PART, Harness

MiB = 1 << 20


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write_in_chunks(writer, payload: bytes, chunk: int = 1 * MiB + 7) -> None:  # type: ignore[no-untyped-def]
    # odd-sized chunks: part boundaries fall in the middle of writes
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        writer.write(view[start : start + chunk])


def read_all(harness: Harness, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join(harness.store.read(key, chunk_size))


def test_multi_part_roundtrip_with_sha256(harness: Harness) -> None:
    payload = data(PART * 7 // 2)  # 3.5 parts
    with harness.store.writer("backups/full.xbstream") as w:
        write_in_chunks(w, payload)
        info = w.commit()
    expected = hashlib.sha256(payload).hexdigest()
    assert info.size == len(payload) and info.metadata["sha256"] == expected
    head = harness.store.head("backups/full.xbstream")
    assert head.size == len(payload) and head.metadata["sha256"] == expected
    chunks = list(harness.store.read("backups/full.xbstream", chunk_size=MiB))
    assert max(len(c) for c in chunks) <= MiB  # streamed in chunks, not one blob
    assert b"".join(chunks) == payload


@pytest.mark.parametrize("size", [0, 10, PART, 2 * PART])
def test_edge_sizes_roundtrip(harness: Harness, size: int) -> None:
    payload = data(size, seed=size)
    with harness.store.writer("k") as w:
        write_in_chunks(w, payload)
        info = w.commit()
    assert info.size == size and info.metadata["sha256"] == hashlib.sha256(payload).hexdigest()
    assert read_all(harness, "k") == payload
    assert harness.store.head("k").size == size


@pytest.mark.parametrize("size", [100, PART + 100])
def test_metadata_from_writer_and_commit(harness: Harness, size: int) -> None:
    with harness.store.writer("m", {"engine": "mariadb", "format": "xbstream"}) as w:
        w.write(data(size))
        info = w.commit({"format": "xbstream+zstd", "lsn": "123456"})
    expected = {"engine": "mariadb", "format": "xbstream+zstd", "lsn": "123456", "sha256": w.sha256}
    assert info.metadata == expected
    assert harness.store.head("m").metadata == expected


def test_abort_leaves_nothing(harness: Harness) -> None:
    w = harness.store.writer("gone")
    w.write(data(2 * PART + 3))
    w.abort()
    w.abort()  # idempotent
    assert not harness.store.exists("gone")
    assert harness.pending("gone") == []
    assert harness.store.list() == []


def test_exception_inside_with_aborts(harness: Harness) -> None:
    with pytest.raises(RuntimeError, match="dump failed"), harness.store.writer("broken") as w:
        w.write(data(PART + 1))
        raise RuntimeError("dump failed")
    assert not harness.store.exists("broken")
    assert harness.pending("broken") == []


def test_delete_removes_object_and_pending_uploads_of_that_key_only(harness: Harness) -> None:
    store = harness.store
    with store.writer("db/b1") as w:
        w.write(b"old")
        w.commit()
    pending = store.writer("db/b1")
    pending.write(data(PART + 1))  # a crashed writer's leftovers
    neighbour = store.writer("db/b10")  # its key starts with "db/b1"
    neighbour.write(data(PART + 1))
    assert harness.pending("db/b1") and harness.pending("db/b10")

    store.delete("db/b1")

    assert not store.exists("db/b1")
    assert harness.pending("db/b1") == []
    assert harness.pending("db/b10") != []
    store.delete("db/b1")  # absent is fine
    store.delete("never-written")
    pending.abort()  # its upload is gone already: still fine
    neighbour.write(b"tail")
    neighbour.commit()
    assert [o.key for o in store.list("db/")] == ["db/b10"]


def test_missing_key(harness: Harness) -> None:
    with pytest.raises(ObjectNotFound):
        harness.store.read("nope")
    with pytest.raises(ObjectNotFound):
        harness.store.head("nope")
    assert not harness.store.exists("nope")
    assert harness.store.list() == []


def test_list_by_prefix(harness: Harness) -> None:
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        with harness.store.writer(key) as w:
            w.write(key.encode())
            w.commit()
    listed = harness.store.list("a/")
    assert [(o.key, o.size) for o in listed] == [("a/1", 3), ("a/2", 3)]
    assert [o.key for o in harness.store.list("a")] == ["a/1", "a/2", "ab/3"]
    assert len(harness.store.list()) == 4


def test_reader_may_stop_early(harness: Harness) -> None:
    payload = data(3 * MiB)
    with harness.store.writer("big") as w:
        w.write(payload)
        w.commit()
    chunks = harness.store.read("big", chunk_size=MiB)
    assert next(chunks) == payload[:MiB]
    chunks.close()  # type: ignore[attr-defined]
    assert read_all(harness, "big") == payload

