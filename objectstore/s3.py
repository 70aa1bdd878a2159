"""Objects in an S3 bucket (AWS or any S3 API: MinIO, Ceph RGW, moto).

Writes stream as multipart uploads: the caller fills one part buffer while a single background
thread uploads the previous one, with at most one more part waiting between them. So a writer
holds at most ~3 part buffers whatever the object's size, and the upload overlaps the producer
(a database dump) instead of stalling it.

This module is imported lazily (see locations.py): boto3 costs a noticeable import time.
"""

from __future__ import annotations

import functools
import io
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from objectstore.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectWriter,
    S3Settings,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
# Part sizes double every this many parts (capped at MAX_PART_SIZE): a stream of unknown length
# is not stopped by the 10,000-part limit, yet memory stays at 3 x part_size for every object
# below PART_GROWTH_EVERY x part_size (31 GiB with the default 16 MiB).
PART_GROWTH_EVERY = 2_000
MAX_METADATA_BYTES = 2048  # S3 limit for all x-amz-meta-* keys and values together
CONTENT_TYPE = "application/octet-stream"
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


@functools.lru_cache(maxsize=8)
def _client(settings: S3Settings):  # type: ignore[no-untyped-def]
    """One client per settings: building one loads botocore's models (~100 ms), and clients
    are thread-safe, so stores opened one after another share it."""
    options: dict[str, object] = {
        "region_name": settings.region or "us-east-1",
        # standard mode retries throttling and transient 5xx/connection errors with backoff
        "retries": {"mode": "standard", "max_attempts": 5},
        "connect_timeout": 10,
        "read_timeout": 120,
    }
    if settings.path_style:
        options["s3"] = {"addressing_style": "path"}
    if settings.endpoint_url:
        # boto3 >= 1.36 sends CRC checksums (as aws-chunked trailers) on every upload by
        # default, which many S3-compatible servers reject. Only do what the API requires there.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
    )  # both None: boto3's default chain (environment, config files, instance role)
    return session.client("s3", endpoint_url=settings.endpoint_url, config=Config(**options))


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _check_metadata(metadata: dict[str, str]) -> None:
    """Fail before uploading gigabytes rather than at the end: S3 sends metadata as HTTP
    headers (ASCII only, keys stored lowercase) and caps it at 2 KB."""
    size = 0
    for key, value in metadata.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise ObjectStoreError(f"metadata {key!r} must map str to str")
        if not key.isascii() or not key.isprintable() or key != key.lower() or not key:
            raise ObjectStoreError(f"metadata key {key!r} must be lowercase printable ASCII")
        if not value.isascii() or not value.isprintable():
            raise ObjectStoreError(f"metadata value for {key!r} must be printable ASCII")
        size += len(key) + len(value)
    if size > MAX_METADATA_BYTES:
        raise ObjectStoreError(f"metadata is {size} bytes, S3 allows {MAX_METADATA_BYTES}")


class S3Store(ObjectStore):
    """Objects under keys of one bucket. `part_size` is the multipart part size for writes
    (5 MiB..5 GiB; memory per writer is about 3 x part_size)."""

    # CopyObject's limit; bigger objects get their metadata through a multipart copy.
    # Class attributes, overridable per instance: tests take the multipart path with small objects.
    max_copy_object = 5 * GiB
    copy_part_size = 512 * MiB

    def __init__(self, bucket: str, settings: S3Settings, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        if not bucket:
            raise ValueError("bucket must not be empty")
        self.bucket = bucket
        self.settings = settings
        self.part_size = part_size
        self.client = _client(settings)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- errors -----------------------------------------------------------------------------

    def _describe(self, error: Exception) -> str:
        """A message safe to show: S3's error code and message, never the request or its
        signature; any credential that still shows up is blanked out."""
        if isinstance(error, ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            message = error.response.get("Error", {}).get("Message", "")
            text = f"{_code(error) or 'error'} (HTTP {status}) {message}".strip()
        else:
            text = f"{type(error).__name__}: {error}"
        for secret in (self.settings.secret_access_key, self.settings.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, action: str, key: str | None = None, *, not_found: bool = False) -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as e:
            if not_found and _code(e) in _NOT_FOUND:
                raise ObjectNotFound(f"object {where} not found") from e
            raise ObjectStoreError(f"{action} {where} failed: {self._describe(e)}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"{action} {where} failed: {self._describe(e)}") from e

    # -- the contract -----------------------------------------------------------------------

    def writer(self, key: str, metadata: dict[str, str] | None = None) -> ObjectWriter:
        _check_key(key)
        metadata = dict(metadata or {})
        _check_metadata(metadata)
        self._ensure_bucket()  # at writer(), so a bad bucket or endpoint fails before any dump starts
        return _S3Writer(self, key, metadata)

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._errors("read", key, not_found=True):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return self._chunks(body, key, chunk_size)

    def _chunks(self, body, key: str, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        # closing(): a reader that stops early still releases the HTTP connection
        with closing(body), self._errors("read", key):
            yield from body.iter_chunks(chunk_size)

    def head(self, key: str) -> ObjectInfo:
        with self._errors("head", key, not_found=True):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(key, response["ContentLength"], dict(response.get("Metadata", {})))

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            try:
                # Uploads first: a writer completing meanwhile then fails, or its object is
                # deleted just below; either way nothing of this key survives.
                pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=key)
                for page in pages:
                    for upload in page.get("Uploads", []):
                        if upload["Key"] == key:  # Prefix=key also matches key + "anything"
                            self._abort_upload(key, upload["UploadId"])
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if _code(e) != "NoSuchBucket":  # no bucket, no object: absent is fine
                    raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found = []
        with self._errors("list", prefix):
            try:
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                    found += [ObjectInfo(o["Key"], o["Size"]) for o in page.get("Contents", [])]
            except ClientError as e:
                if _code(e) != "NoSuchBucket":
                    raise
        return found

    # -- helpers for the writer ---------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        with self._bucket_lock:
            if self._bucket_ready:
                return
            with self._errors("create bucket"):
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except ClientError as e:
                    if _code(e) not in _NOT_FOUND:
                        # 403 and the like: credentials may allow writing objects but not
                        # HeadBucket (s3:ListBucket); let the writes themselves tell.
                        log.debug("HeadBucket %s: %s; assuming it exists", self.bucket, self._describe(e))
                    else:
                        self._create_bucket()
            self._bucket_ready = True

    def _create_bucket(self) -> None:
        args: dict[str, object] = {"Bucket": self.bucket}
        region = self.settings.region or "us-east-1"
        if region != "us-east-1":  # us-east-1 rejects its own name as a LocationConstraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
        except ClientError as e:
            if _code(e) != "BucketAlreadyOwnedByYou":  # a concurrent first writer won the race
                raise

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as e:
            if _code(e) != "NoSuchUpload":  # already aborted or completed
                raise

    def _replace_metadata(self, key: str, size: int, etag: str, metadata: dict[str, str]) -> None:
        """Give a completed object its final metadata.

        S3 takes user metadata only when an upload starts, but the sha256 (and whatever else the
        caller learns while streaming) is known only at the end. So the object is copied onto
        itself server-side with MetadataDirective=REPLACE: no bytes pass through us, and for
        a moment the object exists without its final metadata (callers record a backup only
        after commit returns). CopySourceIfMatch makes sure it is still our object.
        """
        source = {"Bucket": self.bucket, "Key": key}
        if size <= self.max_copy_object:
            self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource=source, CopySourceIfMatch=etag,
                MetadataDirective="REPLACE", Metadata=metadata, ContentType=CONTENT_TYPE,
            )
            return
        # CopyObject stops at 5 GB: copy byte ranges with UploadPartCopy into a new upload of
        # the same key, which replaces the object only when it completes.
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=metadata, ContentType=CONTENT_TYPE
        )["UploadId"]
        part_size = max(self.copy_part_size, -(-size // MAX_PARTS))

        def copy_part(number: int) -> dict[str, object]:
            start = (number - 1) * part_size
            response = self.client.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                CopySource=source, CopySourceIfMatch=etag,
                CopySourceRange=f"bytes={start}-{min(start + part_size, size) - 1}",
            )
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:  # server-side copies: no memory cost
                parts = list(pool.map(copy_part, range(1, -(-size // part_size) + 1)))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort_upload_quietly(key, upload_id)
            raise

    def _abort_upload_quietly(self, key: str, upload_id: str) -> None:
        """Clean-up while another error is already on its way up: that one matters more."""
        try:
            self._abort_upload(key, upload_id)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not abort upload of s3://%s/%s: %s", self.bucket, key, self._describe(e))


def _check_key(key: str) -> None:
    if not key or len(key.encode()) > 1024:
        raise ObjectStoreError(f"invalid object key {key!r} (1 to 1024 bytes)")


class _S3Writer(ObjectWriter):
    def __init__(self, store: S3Store, key: str, metadata: dict[str, str]) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.metadata = metadata
        self._buffer = io.BytesIO()  # a file-like Body: botocore rewinds it itself on retries
        self._upload_id: str | None = None
        self._parts: list[dict[str, object]] = []
        self._part_number = 0
        # maxsize=1: one part waits while one uploads, so the producer blocks instead of
        # piling up parts when the network is slower than the dump.
        self._queue: queue.Queue[tuple[int, io.BytesIO] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self._discard = False  # set by abort: the worker drops queued parts
        self._done = False

    def _part_limit(self) -> int:
        growth = 2 ** (self._part_number // PART_GROWTH_EVERY)
        return min(self.store.part_size * growth, MAX_PART_SIZE)

    def _write(self, data: bytes | memoryview) -> None:
        self._check_usable()
        try:
            view = memoryview(data).cast("B")
            while view:
                room = self._part_limit() - self._buffer.tell()
                self._buffer.write(view[:room])
                view = view[room:]
                if self._buffer.tell() >= self._part_limit():
                    self._submit_part()
        except BaseException:
            self._abort_quietly()  # bytes are lost: this upload can only be aborted
            raise

    def _check_usable(self) -> None:
        if self._error is not None:
            error = self._error
            self._abort_quietly()
            raise ObjectStoreError(
                f"upload of s3://{self.store.bucket}/{self.key} failed: {self.store._describe(error)}"
            ) from error
        if self._done:
            raise ObjectStoreError(f"writer for {self.key!r} is already committed or aborted")

    def _submit_part(self) -> None:
        if self._upload_id is None:
            self._start_upload()
        if self._part_number >= MAX_PARTS:
            raise ObjectStoreError(f"s3://{self.store.bucket}/{self.key}: more than {MAX_PARTS} parts")
        self._part_number += 1
        part, self._buffer = self._buffer, io.BytesIO()
        part.seek(0)
        self._queue.put((self._part_number, part))  # blocks while one part waits already

    def _start_upload(self) -> None:
        # Synchronous, so the upload exists (and can be found by delete) once write() returns.
        with self.store._errors("start upload", self.key):
            self._upload_id = self.store.client.create_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, Metadata=self.metadata, ContentType=CONTENT_TYPE
            )["UploadId"]
        self._thread = threading.Thread(target=self._upload_parts, name=f"s3-upload {self.key}", daemon=True)
        self._thread.start()

    def _upload_parts(self) -> None:
        """The background thread. After an error it keeps taking (and dropping) parts, so a
        producer blocked on the queue always wakes up and sees the error."""
        while (item := self._queue.get()) is not None:
            number, body = item
            if self._error is not None or self._discard:
                continue
            try:
                response = self.store.client.upload_part(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
                )
                self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
            except Exception as e:  # noqa: BLE001 - any failure surfaces on the next write()/commit()
                self._error = e

    def _stop_thread(self, discard: bool) -> None:
        if self._thread is None:
            return
        self._discard = discard
        self._queue.put(None)  # after the queued part, if any: the worker drains the queue
        self._thread.join()
        self._thread = None

    def commit(self, metadata: dict[str, str] | None = None) -> ObjectInfo:
        self._check_usable()
        final = {**self.metadata, **(metadata or {}), "sha256": self.sha256}
        store, key = self.store, self.key
        try:
            _check_metadata(final)
            if self._upload_id is None:  # smaller than one part: a single PUT with everything
                self._buffer.seek(0)
                with store._errors("put", key):
                    store.client.put_object(
                        Bucket=store.bucket, Key=key, Body=self._buffer, Metadata=final, ContentType=CONTENT_TYPE
                    )
            else:
                if self._buffer.tell():
                    self._submit_part()  # the last part may be smaller than 5 MiB
                self._stop_thread(discard=False)
                self._check_usable()
                with store._errors("complete upload", key):
                    etag = store.client.complete_multipart_upload(
                        Bucket=store.bucket, Key=key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
                    )["ETag"]
                self._upload_id = None  # completed: nothing left to abort
                try:
                    with store._errors("set metadata of", key):
                        store._replace_metadata(key, self.bytes_written, etag, final)
                except ObjectStoreError:
                    # Without its sha256 the object is not what commit promises: remove it.
                    try:
                        store.delete(key)
                    except ObjectStoreError as e:
                        log.warning("could not delete half-committed %s: %s", key, e)
                    raise
        except BaseException:
            self._abort_quietly()
            raise
        self._done = True
        self._buffer = io.BytesIO()
        self.metadata = final
        return ObjectInfo(key, self.bytes_written, dict(final))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = io.BytesIO()
        # Wait for the part in flight first: a part that lands after AbortMultipartUpload
        # could leave storage behind.
        self._stop_thread(discard=True)
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with self.store._errors("abort upload", self.key):
                self.store._abort_upload(self.key, upload_id)

    def _abort_quietly(self) -> None:
        try:
            self.abort()
        except ObjectStoreError as e:
            log.warning("%s", e)
