"""Backup workflows, and what the conductor does with the guest's backup events.

`backup`: start_backup (send BackupRequested to the guest) → wait_backup (Wait; resumed by
the guest's GuestBackupFinished, its deadline pushed forward by every progress event) →
finish_backup (scheduled backups: apply the schedule's retention). A guest that dies
mid-backup stops sending progress, so the wait passes its deadline and the run fails; a
guest that restarted says so sooner (its heartbeat names no running backup), which cuts
the deadline to a short grace. Failure marks the backup FAILED and deletes any partial
object.

`backup_delete`: remove the objects of rows the API already soft-deleted.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from events.envelope import Message, format_time, parse_time
from events.guest import (
    BackupObject,
    BackupRequested,
    GuestBackupFinished,
    GuestBackupProgress,
)
from functions.core import metrics, notifications
from functions.core import workflow as runner
from functions.core.models.backup import Backup
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance
from functions.core.models.platform import WorkflowRun
from functions.core.ports import GuestError, StorageError
from functions.core.workflow import Retry, Step, StepContext, StepFailed, Wait, Workflow

log = logging.getLogger("troveless.backups")

STEADY = Retry(attempts=5, interval_s=1.0, backoff_rate=2.0, max_delay_s=15.0)
RUNNING = ("NEW", "BUILDING", "SAVING")
# After a heartbeat shows the guest is not running the backup, how long a late
# GuestBackupFinished still has to arrive (events are not ordered across types).
NOT_RUNNING_GRACE_S = 10.0
# A backup never takes longer than this overall, progress or not.
MAX_BACKUP_S = 24 * 3600.0


def _deps():  # type: ignore[no-untyped-def]
    from functions.runtime import runtime

    return runtime()


def stall_timeout_s() -> float:
    return _deps().settings.backups.stall_timeout_s


def _backup(session: Session, backup_id: str) -> Backup:
    row = session.execute(select(Backup).where(Backup.id == backup_id).with_for_update()).scalar_one_or_none()
    if row is None:
        raise StepFailed(f"backup {backup_id} does not exist")
    return row


# ---- backup ------------------------------------------------------------------------------


def start_backup(ctx: StepContext) -> None:
    b = _backup(ctx.session, ctx.resource_id or "")
    if b.deleted or b.state not in RUNNING:
        raise StepFailed(f"backup {b.id} is {'deleted' if b.deleted else b.state}; nothing to start")
    inst = ctx.session.get(Instance, b.instance_id)
    if inst is None or inst.deleted:
        raise StepFailed(f"instance {b.instance_id} no longer exists")
    parent = None
    if b.parent_id:
        p = ctx.session.get(Backup, b.parent_id)
        if p is None or p.deleted or not p.location or not p.checksum:
            raise StepFailed(f"parent backup {b.parent_id} is gone or incomplete")
        parent = BackupObject(
            backup_id=p.id, location=p.location, checksum=p.checksum,
            backup_type="incremental" if p.backup_type == "incremental" else "full", lsn=p.lsn,
        )
    address = (inst.addresses or [{}])[0].get("address")
    if not address or not inst.encrypted_key:
        raise StepFailed("the instance has no address or key")
    rt = _deps()
    ctx.context["requested_at"] = format_time(utcnow())
    command = BackupRequested(
        instance_id=inst.id,
        backup_id=b.id,
        location=b.location or "",
        store=rt.storage.store_options(),
        parent=parent,
        metadata={"project_id": b.tenant_id, "instance_id": inst.id, "backup_name": b.name[:200]},
    )
    try:
        rt.guest.send(inst.id, address, bytes.fromhex(inst.encrypted_key), command)
    except GuestError as exc:
        if exc.transient:
            raise
        raise StepFailed(f"the guest refused the backup: {exc}") from exc


def wait_backup(ctx: StepContext) -> Wait | None:
    b = _backup(ctx.session, ctx.resource_id or "")
    if b.state == "COMPLETED":
        return None
    if b.state not in RUNNING:
        raise StepFailed(b.fail_reason or f"backup ended {b.state}")
    return Wait(timeout_s=stall_timeout_s())


def finish_backup(ctx: StepContext) -> None:
    b = _backup(ctx.session, ctx.resource_id or "")
    if b.schedule_id:
        from functions.core import backup_schedules, outbox

        outbox.enqueue(ctx.session, backup_schedules.apply_retention(ctx.session, b.schedule_id, ctx.now))


def _backup_failed(session: Session, run: WorkflowRun) -> None:
    b = session.get(Backup, run.resource_id)
    if b is None:
        return
    if b.state in RUNNING and _recovered_from_store(b):
        notifications.emit(session, [notifications.backup_created(b, run.context, "taskmanager")])
        return
    if b.state in RUNNING:
        b.state = "FAILED"
        b.fail_reason = (run.error or "the backup failed")[:1024]
    if b.state == "FAILED" and b.location:
        _delete_object(b.location)


def _recovered_from_store(b: Backup) -> bool:
    """The guest's result may be lost (the broker was down when it finished, and the guest
    gave up resending) while its object was published whole: objects appear only complete,
    with their SHA-256 and backup id in the metadata. Such a backup is COMPLETED, not FAILED."""
    try:
        found = _deps().storage.head(b.location or "")
    except StorageError as exc:
        log.warning("cannot check %s for backup %s: %s", b.location, b.id, exc)
        return False
    if found is None:
        return False
    size, meta = found
    if meta.get("backup_id") != b.id or not meta.get("sha256"):
        return False
    b.state = "COMPLETED"
    b.checksum = meta["sha256"]
    b.object_size = size
    b.bytes_done = size
    b.lsn = meta.get("lsn") or None
    b.backup_type = meta.get("backup_type") or b.backup_type
    b.backup_timestamp = utcnow()
    b.fail_reason = None
    log.warning("backup %s: no result from the guest, but its object is complete in the store: COMPLETED", b.id)
    return True


def _delete_object(location: str) -> None:
    try:
        _deps().storage.delete(location)
    except StorageError as exc:  # the object stays; a later delete of the row retries
        log.warning("cannot remove %s: %s", location, exc)


BACKUP = Workflow(
    "backup",
    [
        Step("start_backup", start_backup, retry=STEADY, timeout_s=60),
        Step("wait_backup", wait_backup, retry=STEADY, timeout_s=MAX_BACKUP_S),
        Step("finish_backup", finish_backup, retry=STEADY, timeout_s=60),
    ],
    on_failure=_backup_failed,
)


# ---- delete ------------------------------------------------------------------------------


def delete_objects(ctx: StepContext) -> None:
    storage = _deps().storage
    for location in ctx.context.get("locations", []):
        try:
            storage.delete(location)
        except StorageError as exc:
            raise StepFailed(f"cannot delete {location}: {exc}") from exc
    # Trove's dbaas.backup_delete.end comes from the taskmanager once the objects are gone.
    rows = [ctx.session.get(Backup, backup_id) for backup_id in ctx.context.get("backup_ids", [])]
    notifications.emit(ctx.session, [notifications.backup_deleted(b, ctx.context, "taskmanager") for b in rows if b])


def _delete_failed(session: Session, run: WorkflowRun) -> None:
    # As Trove: DELETE_FAILED, but the rows stay soft-deleted.
    for backup_id in (run.context or {}).get("backup_ids", []):
        b = session.get(Backup, backup_id)
        if b is not None:
            b.state = "DELETE_FAILED"
            b.fail_reason = (run.error or "delete failed")[:1024]


DELETE = Workflow(
    "backup_delete",
    [Step("delete_objects", delete_objects, retry=Retry(attempts=8, interval_s=2.0, backoff_rate=2.0, max_delay_s=60.0),
          timeout_s=600)],
    on_failure=_delete_failed,
)

WORKFLOWS = {w.name: w for w in (BACKUP, DELETE)}


# ---- conductor hooks ---------------------------------------------------------------------


def _waiting_run(session: Session, backup_id: str) -> WorkflowRun | None:
    for run in runner.active_runs(session, backup_id, ("backup",)):
        if run.status == runner.RunStatus.WAITING and run.step == "wait_backup":
            return run
    return None


def apply_progress(session: Session, instance_id: str, event: GuestBackupProgress, sequence: int) -> None:
    now = utcnow()
    applied = session.execute(
        update(Backup)
        .where(
            Backup.id == event.backup_id,
            Backup.instance_id == instance_id,
            Backup.state.in_(RUNNING),
            Backup.last_sequence < sequence,
        )
        .values(state=event.state, bytes_done=event.bytes_done, last_sequence=sequence, updated=now)
    ).rowcount
    if not applied:
        log.info("stale or foreign progress for backup %s ignored", event.backup_id)
        metrics.mark_event("stale")
        return
    run = _waiting_run(session, event.backup_id)
    if run is not None:
        # Progress is the guest's proof of life: the stall deadline starts again.
        runner.extend_wait(session, run.id, "wait_backup", stall_timeout_s(), now=now)


def apply_finished(session: Session, instance_id: str, event: GuestBackupFinished, sequence: int) -> list[Message]:
    now = utcnow()
    values: dict[str, object] = {"last_sequence": sequence, "updated": now}
    if event.success:
        values.update(
            state="COMPLETED",
            checksum=event.checksum,
            object_size=event.object_size,
            bytes_done=event.object_size or 0,
            size=event.size_gb,
            lsn=event.lsn,
            backup_type=event.backup_type,
            backup_timestamp=now,
        )
    else:
        values.update(state="FAILED", fail_reason=(event.error or "the guest reported a failure")[:1024])
    # Terminal states are sticky: only a running backup takes the result.
    applied = session.execute(
        update(Backup)
        .where(Backup.id == event.backup_id, Backup.instance_id == instance_id, Backup.state.in_(RUNNING))
        .values(**values)
    ).rowcount
    if not applied:
        metrics.mark_event("stale")
        row = session.get(Backup, event.backup_id)
        if event.success and row is not None and row.instance_id == instance_id and (row.deleted or row.state == "FAILED"):
            # We gave up on it (or it was deleted) while the guest kept going: the object
            # it just published belongs to nobody.
            _delete_object(event.location or row.location or "")
        return []
    run = _waiting_run(session, event.backup_id)
    if event.success:
        # COMPLETED in this transaction: Trove's dbaas.backup_create.end, relayed by the conductor.
        row = session.get(Backup, event.backup_id)
        if row is not None:
            session.refresh(row)
            context = run.context if run is not None else notifications.backup_run_context(session, row.id)
            notifications.emit(session, [notifications.backup_created(row, context, "conductor")])
    if run is None:
        return []
    if event.success:
        nxt = runner.resume(session, BACKUP, run.id, "wait_backup")
        return [nxt] if nxt is not None else []
    # Fail the run now instead of at its deadline: its compensation records the failure.
    runner.extend_wait(session, run.id, "wait_backup", 0.0, now=now - dt.timedelta(seconds=1))
    return []


def check_running_on_heartbeat(session: Session, instance_id: str, running: str | None, sent_at: dt.datetime) -> None:
    """The guest says which backup it runs. A backup we wait for that it does not run, in a
    heartbeat sent after we asked for it, gets a short grace for its result, then fails."""
    rows = session.execute(
        select(Backup.id).where(
            Backup.instance_id == instance_id, Backup.state.in_(RUNNING), Backup.deleted.is_(False)
        )
    ).scalars()
    for backup_id in rows:
        if backup_id == running:
            continue
        run = _waiting_run(session, backup_id)
        requested = (run.context or {}).get("requested_at") if run is not None else None
        if run is None or not requested or sent_at <= parse_time(requested).replace(tzinfo=None):
            continue
        grace_deadline = utcnow() + dt.timedelta(seconds=NOT_RUNNING_GRACE_S)
        if run.deadline_at is None or run.deadline_at > grace_deadline:
            log.warning("guest of %s no longer runs backup %s; failing it in %.0fs", instance_id, backup_id,
                        NOT_RUNNING_GRACE_S)
            runner.extend_wait(session, run.id, "wait_backup", NOT_RUNNING_GRACE_S)


def abandon_running(session: Session, instance_id: str, reason: str) -> None:
    """Fail the instance's running backups now (its server is going away) and drop their
    partial objects."""
    rows = session.execute(
        select(Backup)
        .where(Backup.instance_id == instance_id, Backup.state.in_(RUNNING), Backup.deleted.is_(False))
        .with_for_update()
    ).scalars()
    for b in rows:
        for run in runner.active_runs(session, b.id, ("backup",)):
            runner.cancel(session, run.id, f"cancelled: {reason}")
        b.state = "FAILED"
        b.fail_reason = reason
        if b.location:
            _delete_object(b.location)
