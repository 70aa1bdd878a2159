"""Backups and restores of the data directory, streamed to and from the object store.

- stream.py: the bounded-memory pipeline (tool stdout -> zstd -> ObjectWriter; object ->
  SHA-256 -> zstd -> extractor);
- engine.py: what a datastore's backup code provides, and verified extraction;
- postgresql.py, mariadb.py: the engines (pg_basebackup / mariadb-backup, tar / mbstream);
- runner.py: BackupRequested in the background, progress and result events;
- restore.py: a data directory from a chain, staged and published by rename (prepare).
"""

from __future__ import annotations

import importlib

from guest_agent.backup.engine import (
    BackupEngine,
    BackupError,
    ChecksumMismatch,
    RestoreError,
)
from guest_agent.datastores.base import Datastore
from guest_agent.settings import Settings

# Imported on first use, like the datastores themselves (each pulls in its database driver).
ENGINES = {
    "postgresql": ("guest_agent.backup.postgresql", "PostgreSQLBackup"),
    "mariadb": ("guest_agent.backup.mariadb", "MariaDBBackup"),
}


def engine_for(ds: Datastore, settings: Settings) -> BackupEngine:
    module, cls = ENGINES[ds.name]
    engine: type[BackupEngine] = getattr(importlib.import_module(module), cls)
    return engine(ds, settings)


__all__ = ["BackupEngine", "BackupError", "ChecksumMismatch", "RestoreError", "engine_for"]
