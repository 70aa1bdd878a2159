"""BackupRequested: one backup at a time, in a background thread, reported through events.

The command is answered 202 as soon as the supervisor's backup slot is taken (409/503 when
it cannot be). The thread then emits GuestBackupProgress (BUILDING at once and every
PROGRESS_INTERVAL_S, SAVING while committing) and exactly one GuestBackupFinished, and frees
the slot only after that result is queued, so heartbeats never drop `backup_id` before the
control plane has the result.

The backup tool's stdout goes straight into the ObjectWriter (stream.py), compressed with
zstd on the way, or as it is when the tool compressed it already (PostgreSQL's server-side
zstd: ToolCommand.zstd_output); either way the object is a zstd stream. On any
failure (the tool exits non-zero, the store fails, the agent shuts down) the writer is
aborted, so no object or part of one stays behind, and the result carries a short message
with known secrets masked.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from events.base import Event
from events.guest import BackupRequested, GuestBackupFinished, GuestBackupProgress
from guest_agent.backup.engine import BackupEngine, BackupError, ToolCommand
from guest_agent.backup.storage import open_store
from guest_agent.backup.stream import Cancelled, compress_stream, copy_stream
from guest_agent.process import (
    REDACTOR,
    describe_exit,
    helper_process,
    kill_group,
    tree_size,
)
from guest_agent.settings import Settings
from guest_agent.supervisor import Busy, Supervisor
from objectstore import ObjectStoreError, ObjectWriter

log = logging.getLogger(__name__)

GIB = 1024**3
PROGRESS_INTERVAL_S = 2.0
SHUTDOWN_WAIT_S = 30.0
MAX_ERROR_CHARS = 500
SHUTTING_DOWN = "the guest agent is shutting down"
# A backup's private work directory (root only): the tool's --extra-lsndir and temp files.
WORKDIR_PREFIX = ".backup-"


def safe_error(text: str) -> str:
    text = REDACTOR.redact(" ".join(text.split()))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines a tool wrote (its error, usually), for the result's message."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    # Not the command line helper_process logs first: only what the tool said.
    said = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("$ ")]
    return " | ".join(said[-lines:])


class BackupRunner:
    def __init__(
        self,
        settings: Settings,
        supervisor: Supervisor,
        engine: BackupEngine,
        emit: Callable[[Event], None],
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.engine = engine
        self.emit = emit
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._tool: subprocess.Popen[bytes] | None = None
        # Work directories of backups an earlier agent did not finish (it was killed).
        for stale in settings.instance_dir.glob(f"{WORKDIR_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / "backup.log"

    def submit(self, event: BackupRequested) -> bool:
        """True: started; False: this backup is already running (no-op). Busy / NotReady
        from the supervisor when it cannot run now."""
        if self._cancel.is_set():
            raise Busy(SHUTTING_DOWN)
        if not self.supervisor.begin_backup(event.backup_id):
            return False
        thread = threading.Thread(target=self._run, args=(event,), name="backup", daemon=True)
        self._thread = thread
        thread.start()
        return True

    def shutdown(self, timeout: float = SHUTDOWN_WAIT_S) -> None:
        """Stop a running backup (its tool is killed) and wait until its failure is queued."""
        self._cancel.set()
        tool = self._tool
        if tool is not None and tool.returncode is None:
            kill_group(tool.pid, signal.SIGKILL)  # a tool blocked in a checkpoint sends nothing
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------ one backup

    def _run(self, event: BackupRequested) -> None:
        backup_type = "incremental" if event.parent is not None else "full"
        try:
            finished = self._backup(event, backup_type)
        except Exception as exc:
            if self._cancel.is_set():
                message = SHUTTING_DOWN
            elif isinstance(exc, (BackupError, ObjectStoreError, OSError)):
                message = str(exc)  # written to be shown (OSError: errno text and a path)
            else:
                log.exception("backup %s failed unexpectedly", event.backup_id)
                message = f"internal error: {type(exc).__name__}"
            message = safe_error(message)
            log.error("backup %s failed: %s", event.backup_id, message)
            finished = GuestBackupFinished(
                instance_id=self.settings.instance_id, backup_id=event.backup_id, success=False,
                backup_type=backup_type, error=message,
            )
        self.emit(finished)
        self.supervisor.end_backup(event.backup_id)

    def _backup(self, event: BackupRequested, backup_type: str) -> GuestBackupFinished:
        log.info("backup %s (%s) to %s", event.backup_id, backup_type, event.location)
        progress = _Progress(self.settings.instance_id, event.backup_id, self.emit)
        progress.report()  # BUILDING, 0 bytes: at once
        size_gb = round(tree_size(self.settings.volume_dir) / GIB, 3)
        workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.settings.instance_dir))
        try:
            command = self.engine.backup_command(event.parent, workdir)
            store, key = open_store(event.location, event.store, self.settings)
            writer = store.writer(key, self._metadata(event, backup_type))
            progress.start(writer)
            try:
                raw_bytes = self._stream(command, writer, workdir)
                lsn = self.engine.backup_lsn(workdir)
                # Committing can take a while (S3 completes the upload and copies in the late
                # metadata): SAVING now and on every tick until it is done.
                progress.saving()
                info = writer.commit({"lsn": lsn} if lsn else None)
            except BaseException:
                writer.abort()
                raise
            finally:
                progress.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        checksum = info.metadata.get("sha256") or writer.sha256
        log.info(
            "backup %s stored: %d bytes from %d (%.1f%%), sha256 %s",
            event.backup_id, info.size, raw_bytes, 100.0 * info.size / max(raw_bytes, 1), checksum,
        )
        return GuestBackupFinished(
            instance_id=self.settings.instance_id, backup_id=event.backup_id, success=True,
            backup_type=backup_type, location=event.location,  # type: ignore[arg-type]
            checksum=checksum, object_size=info.size, size_gb=size_gb, lsn=lsn,
        )

    def _metadata(self, event: BackupRequested, backup_type: str) -> dict[str, str]:
        # The request's own keys first: the agent's facts about the object win over them.
        metadata = dict(event.metadata)
        metadata.update({
            "backup_id": event.backup_id,
            "backup_type": backup_type,
            "datastore": self.settings.datastore,
            "datastore_version": self.supervisor.snapshot().datastore_version or "",
            "instance_id": self.settings.instance_id,
            "format": self.engine.stream_format,
            "compression": "zstd",
        })
        if event.parent is not None:
            metadata.update({
                "parent_backup_id": event.parent.backup_id,
                "parent_location": event.parent.location,
                "parent_checksum": event.parent.checksum,
            })
        return metadata

    def _stream(self, command: ToolCommand, writer: ObjectWriter, workdir: Path) -> int:
        """Run the tool into the writer; its output bytes, or BackupError."""
        self.log_file.unlink(missing_ok=True)  # only the latest backup's tool output is kept
        with helper_process(command.argv, user=None, log_file=self.log_file, cwd=workdir) as proc:
            assert proc.stdout is not None
            self._tool = proc
            if self._cancel.is_set():  # shutdown came between spawn and here: it missed the tool
                kill_group(proc.pid, signal.SIGKILL)
            try:
                if command.zstd_output:
                    raw_bytes = copy_stream(
                        proc.stdout, writer, max_rate=self.settings.backup_max_rate_mb * 1e6,
                        cancelled=self._cancel.is_set, wait=self._cancel.wait,
                    )
                else:
                    raw_bytes = compress_stream(
                        proc.stdout, writer, threads=self.settings.backup_compress_threads,
                        max_rate=self.settings.backup_max_rate_mb * 1e6,
                        cancelled=self._cancel.is_set, wait=self._cancel.wait,
                    )
                returncode = proc.wait()
            except Cancelled:
                raise BackupError(SHUTTING_DOWN) from None
            finally:
                self._tool = None
        if self._cancel.is_set():
            raise BackupError(SHUTTING_DOWN)
        if returncode != 0:
            raise BackupError(f"{command.name} {describe_exit(returncode)}: {log_tail(self.log_file)}")
        return raw_bytes


class _Progress:
    """GuestBackupProgress now and every PROGRESS_INTERVAL_S from a thread of its own (the
    backup's thread may block in a read or in the commit), BUILDING and then SAVING."""

    def __init__(self, instance_id: str, backup_id: str, emit: Callable[[Event], None]) -> None:
        self.instance_id = instance_id
        self.backup_id = backup_id
        self.emit = emit
        self.state = "BUILDING"
        self.writer: ObjectWriter | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="backup-progress", daemon=True)
        # Reading the state and queueing the event happen together: no BUILDING after SAVING.
        self._lock = threading.Lock()

    def report(self) -> None:
        with self._lock:
            done = self.writer.bytes_written if self.writer is not None else 0
            self.emit(GuestBackupProgress(
                instance_id=self.instance_id, backup_id=self.backup_id,
                state=self.state, bytes_done=done,  # type: ignore[arg-type]
            ))

    def start(self, writer: ObjectWriter) -> None:
        self.writer = writer
        self._thread.start()

    def saving(self) -> None:
        with self._lock:
            self.state = "SAVING"
        self.report()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _tick(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            self.report()
