"""Object storage for backups, shared by the guest agent (writes and reads backup streams)
and the control plane (deletes, checks, cleans up). Depends on nobody but the standard
library and, lazily, boto3.

A *location* names one object completely except for S3's endpoint and credentials:
`file:///abs/dir/key` or `s3://bucket/key`. `open_location` turns one into a store and a key.
"""

from objectstore.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectWriter,
    S3Settings,
)
from objectstore.locations import join_location, open_location, split_location

__all__ = [
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectWriter",
    "S3Settings",
    "join_location",
    "open_location",
    "split_location",
]
