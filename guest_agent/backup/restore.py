"""A data directory from a backup chain, for a prepare with `restore`.

The chain is restored into a staging directory beside the data directory and published by
one rename once every object is verified (and, for MariaDB, prepared). So the data
directory either does not exist or is complete: an agent that dies halfway leaves only the
staging directory, which the next attempt removes, and never a half-restored directory
that `is_initialized()` would take for a cluster. On any failure nothing of the restore is
left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from events.guest import BackupObject, RestoreSpec
from guest_agent.backup.engine import BackupEngine
from guest_agent.backup.storage import open_store
from guest_agent.process import ensure_dir

log = logging.getLogger(__name__)


def staging_dir(data_dir: Path) -> Path:
    return data_dir.parent / f".{data_dir.name}-restore"


def restore_data_dir(engine: BackupEngine, spec: RestoreSpec, cancelled: Callable[[], bool]) -> None:
    """Build engine.ds.data_dir (which must not exist) from spec.chain; raises RestoreError."""
    ds, settings = engine.ds, engine.settings
    data_dir = ds.data_dir
    staging = staging_dir(data_dir)
    shutil.rmtree(staging, ignore_errors=True)  # an earlier, interrupted attempt
    ensure_dir(staging, 0o700, ds.user)

    def open_object(obj: BackupObject):  # type: ignore[no-untyped-def]
        return open_store(obj.location, spec.store, settings)

    started = time.monotonic()
    ids = ", ".join(obj.backup_id for obj in spec.chain)
    log.info("restoring the data directory from %s", ids)
    try:
        engine.restore(list(spec.chain), open_object, staging, cancelled)
        os.rename(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("data directory restored from %s in %.1fs", ids, time.monotonic() - started)
