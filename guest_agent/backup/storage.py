"""Opening the object store a backup location names, with the agent's own S3 credentials.

Locations and StoreOptions (endpoint, region, path style) travel in events; credentials
never do (events are logged and dead-lettered): they come from the agent's environment,
TROVELESS_S3_ACCESS_KEY_ID / TROVELESS_S3_SECRET_ACCESS_KEY, read into Settings at start.
Unset, boto3's default chain (its own environment variables, instance profile...) applies.
"""

from __future__ import annotations

from events.guest import StoreOptions
from guest_agent.settings import Settings
from objectstore import ObjectStore, S3Settings, open_location, split_location

# S3 multipart part size for backups. An S3 writer holds about three parts (one filling, one
# queued, one uploading), so this bounds the upload's share of the agent's memory at ~24 MiB
# (S3Store's default, 16 MiB, took a 1 GB backup's peak RSS to ~150 MB). S3Store doubles the
# part size every 2,000 parts to stay within S3's 10,000: memory grows past 16 GiB stored.
BACKUP_PART_SIZE = 8 << 20


def s3_settings(options: StoreOptions, settings: Settings) -> S3Settings:
    return S3Settings(
        endpoint_url=options.endpoint_url,
        region=options.region,
        path_style=options.path_style,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )


def open_store(location: str, options: StoreOptions, settings: Settings) -> tuple[ObjectStore, str]:
    """(store, key); ObjectStoreError for a malformed or unsupported location."""
    scheme, bucket, key = split_location(location)
    if scheme == "s3":
        from objectstore.s3 import S3Store  # boto3 is heavy: only when S3 is used

        return S3Store(bucket, s3_settings(options, settings), part_size=BACKUP_PART_SIZE), key
    return open_location(location, s3_settings(options, settings))
