"""What every datastore's backup code provides, and the verified extraction they share.

An engine says how to run its physical backup tool (argv, which writes the backup to
stdout, and whose identity it needs), what to read afterwards (MariaDB's LSN), and how to
turn a verified chain of objects into a data directory. The pipeline, the store, progress
and results are the runner's (runner.py); staging and publishing the data directory are
restore.py's.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from events.guest import BackupObject
from guest_agent.backup.stream import (
    Cancelled,
    HashingReader,
    decompressing_reader,
    read_to_end,
)
from guest_agent.datastores.base import Datastore
from guest_agent.settings import Settings
from objectstore import ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

# (store, key) for one object of the chain.
StoreOpener = Callable[[BackupObject], tuple[ObjectStore, str]]


class BackupError(RuntimeError):
    """A backup cannot be made or failed; the message is safe to report (no secrets)."""


class RestoreError(RuntimeError):
    """A restore failed; the message names the backup and is safe to report."""


class ChecksumMismatch(RestoreError):
    pass


@dataclass(frozen=True)
class ToolCommand:
    """A backup tool run as the agent itself: it logs in as the agent's admin account
    (peer / unix_socket authentication), exactly as the agent does."""

    argv: list[str]
    # The tool writes zstd itself (PostgreSQL's server-side compression): the agent stores
    # its output as is instead of compressing it a second time.
    zstd_output: bool = False

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name


class BackupEngine(ABC):
    # What the stored stream is, before compression (object metadata `format`).
    stream_format: ClassVar[str]

    def __init__(self, ds: Datastore, settings: Settings) -> None:
        self.ds = ds
        self.settings = settings

    @abstractmethod
    def backup_command(self, parent: BackupObject | None, workdir: Path) -> ToolCommand:
        """The tool that writes the backup to stdout; BackupError if it cannot be made
        (an incremental this engine cannot do, a missing binary...). `workdir` is private
        to this backup (root only) and removed afterwards."""

    def backup_lsn(self, workdir: Path) -> str | None:
        """Read after the tool succeeded: where the next incremental starts (None: no such thing)."""
        return None

    @abstractmethod
    def restore(self, chain: list[BackupObject], open_store: StoreOpener, target: Path,
                cancelled: Callable[[], bool]) -> None:
        """Build a complete, startable data directory in `target` (empty, owned by the db
        user) from the chain, verifying every object before anything of it is used."""


def extract_verified(
    obj: BackupObject,
    open_store: StoreOpener,
    extract: Callable[[BinaryIO], None],
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Stream one object through SHA-256 and zstd into `extract`, then check the hash.

    The hash covers the stored (compressed) bytes, read once. When extraction breaks off
    (damaged data makes zstd or the extractor fail), the rest is still read and hashed, so
    a damaged object is reported as what it is: a checksum mismatch. The caller discards
    whatever `extract` wrote when this raises."""
    label = f"backup {obj.backup_id}"
    try:
        store, key = open_store(obj)
        source = HashingReader(store.read(key), cancelled)
    except ObjectNotFound:
        raise RestoreError(f"{label}: object not found at {obj.location}") from None
    except ObjectStoreError as exc:
        raise RestoreError(f"{label}: {exc}") from None
    failure: Exception | None = None
    try:
        stream = decompressing_reader(source)
        extract(stream)
        read_to_end(stream)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - zstd, tar, the extracting tool: judged after the hash
        failure = exc
    try:
        source.drain()
    except ObjectStoreError as exc:
        raise RestoreError(f"{label}: reading the object failed: {exc}") from None
    if source.sha256 != obj.checksum.lower():
        log.error("%s: sha256 %s, expected %s (%d bytes read)", label, source.sha256, obj.checksum, source.size)
        raise ChecksumMismatch(f"{label}: checksum mismatch (the stored object is damaged or not this backup)")
    if failure is not None:
        raise RestoreError(f"{label}: cannot extract: {failure}") from failure
    log.info("%s verified and extracted (%d bytes stored)", label, source.size)
