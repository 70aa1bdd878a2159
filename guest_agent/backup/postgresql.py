"""PostgreSQL: full backups with pg_basebackup as one tar stream; restore by extracting it.

`pg_basebackup -D - -Ft -X fetch -c fast` writes the whole cluster as a single tar on stdout,
with the WAL needed to make it consistent fetched into its pg_wal/ at the end (streaming WAL
alongside would need a second output, which stdout cannot carry). It runs as the agent and
logs in as os_admin through the unix socket with peer authentication: pg_hba has a
`local replication os_admin peer` line for exactly that. `-c fast` asks for an immediate
checkpoint instead of waiting for the next scheduled one. The server compresses the tar with
zstd itself (see backup_command), so the agent stores the tool's output as it is.

A restore extracts the tar into an empty directory, keeping backup_label (the server replays
the fetched WAL from the checkpoint it names on first start, as crash recovery) and dropping
what belongs to the old server's run (postmaster.pid/.opts) or would start a recovery this
instance has no archive for (standby.signal, recovery.signal).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from events.guest import BackupObject
from guest_agent.backup.engine import (
    BackupEngine,
    BackupError,
    RestoreError,
    StoreOpener,
    ToolCommand,
    extract_verified,
)
from guest_agent.backup.stream import CHUNK
from guest_agent.datastores.postgresql import ADMIN_USER, PostgreSQL
from guest_agent.process import chown_tree

log = logging.getLogger(__name__)

INCREMENTAL_UNSUPPORTED = "incremental backups are not supported for postgresql"
# Removed from a restored data directory (see the module doc).
RUN_LEFTOVERS = ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal")


def _files_and_directories_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's `data` filter (no absolute paths, no escaping the target, no setuid bits,
    no owners from the archive), and beyond it: pg_basebackup of a cluster without
    tablespaces writes only files and directories, so a link or device means a forged tar."""
    member = tarfile.data_filter(member, dest)
    if not (member.isfile() or member.isdir()):
        raise RestoreError(f"unexpected tar member {member.name!r}: only files and directories are restored")
    # The data filter leaves directories to the umask; the server's files are its own only.
    return member.replace(mode=0o700 if member.isdir() else (member.mode or 0o600) & 0o700, deep=False)


def extract_tar(stream: BinaryIO, target: Path) -> None:
    # "r|": a pure stream, members are extracted in order as they arrive, nothing is seeked.
    with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK, copybufsize=CHUNK) as tar:
        tar.extractall(target, filter=_files_and_directories_only)


class PostgreSQLBackup(BackupEngine):
    stream_format = "tar"
    ds: PostgreSQL

    def backup_command(self, parent: BackupObject | None, workdir: Path) -> ToolCommand:
        if parent is not None:
            raise BackupError(INCREMENTAL_UNSUPPORTED)
        tool = self.ds.bin_dir / "pg_basebackup"
        if not tool.exists():
            raise BackupError(f"{tool} not found")
        return ToolCommand([
            str(tool),
            "--host", str(self.settings.run_dir),
            "--port", str(self.settings.db_port),
            "--username", ADMIN_USER,
            "--no-password",  # peer authentication; never wait on a prompt
            "--pgdata", "-",
            "--format", "tar",
            "--wal-method", "fetch",
            "--checkpoint", "fast",
            # The server compresses (zstd, on up to two worker threads) before sending: the
            # tool and the agent then move an eighth of the bytes, which on 2 cores took a
            # 1 GB backup from ~0.45x to ~0.8x of the raw tool's speed to /dev/null. The
            # result is one zstd frame of the tar, what the agent would have written itself.
            # A compressed tar cannot carry the backup manifest; our SHA-256 covers the whole.
            "--compress", f"server-zstd:level=1,workers={min(2, os.cpu_count() or 1)}",
            "--no-manifest",
        ], zstd_output=True)

    def restore(self, chain: list[BackupObject], open_store: StoreOpener, target: Path,
                cancelled: Callable[[], bool]) -> None:
        if len(chain) != 1 or chain[0].backup_type != "full":
            raise RestoreError(f"cannot restore backup {chain[-1].backup_id}: {INCREMENTAL_UNSUPPORTED}")
        full = chain[0]
        extract_verified(full, open_store, lambda stream: extract_tar(stream, target), cancelled)
        self._check_version(full, target)
        for name in RUN_LEFTOVERS:
            (target / name).unlink(missing_ok=True)
        # Extracted as the agent: the server's user must own it all, and PostgreSQL refuses a
        # data directory that others can read.
        chown_tree(target, self.ds.user)
        os.chmod(target, 0o700)

    def _check_version(self, obj: BackupObject, target: Path) -> None:
        try:
            backup_major = (target / "PG_VERSION").read_text().strip()
        except OSError:
            raise RestoreError(f"backup {obj.backup_id} holds no PostgreSQL data directory (no PG_VERSION)") from None
        ours = self.ds.version().split(".")[0]
        if backup_major != ours:
            raise RestoreError(
                f"backup {obj.backup_id} is of PostgreSQL {backup_major}; this instance runs PostgreSQL {ours}"
            )
