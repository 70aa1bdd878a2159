"""Scheduled backups and retention (Trove has neither).

A schedule belongs to one instance: a cron expression (five fields, or six with a trailing
seconds field), keep-last-N and/or a maximum age, optionally incremental (MariaDB) with a
full backup every `full_every` runs. The `run_backup_schedules` function ticks (PingSource),
starts the backups that are due, and each scheduled backup that completes prunes its
schedule: expired backups go (objects and rows), but never one that a kept backup needs
(the full backup and the incrementals under a kept incremental).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message
from functions.core import backups
from functions.core.errors import (
    BadRequest,
    DomainError,
    NotFound,
    NotImplementedFeature,
)
from functions.core.models.backup import Backup, BackupSchedule
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance
from functions.core.ports import BackupStorage
from functions.core.schemas.backups import BackupCreate, BackupScheduleCreate

log = logging.getLogger("troveless.schedules")


def next_run(cron: str, after: dt.datetime) -> dt.datetime:
    from croniter import croniter

    return croniter(cron, after).get_next(dt.datetime)


def _check_cron(cron: str) -> None:
    from croniter import croniter

    fields = cron.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(cron):
        raise BadRequest(
            f"Invalid cron expression '{cron}': five fields (minute hour day month weekday), "
            "or six with a trailing seconds field."
        )


def view(row: BackupSchedule) -> dict[str, Any]:
    def t(value: dt.datetime | None) -> str | None:
        return value.replace(microsecond=0).isoformat() if value else None

    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "instance_id": row.instance_id,
        "project_id": row.tenant_id,
        "cron": row.cron,
        "keep_last": row.keep_last,
        "max_age_days": row.max_age_days,
        "incremental": row.incremental,
        "full_every": row.full_every,
        "next_run": t(row.next_run_at),
        "last_run": t(row.last_run_at),
        "last_result": row.last_result,
        "created": t(row.created),
        "updated": t(row.updated),
    }


def create(session: Session, project_id: str, body: BackupScheduleCreate, *, now: dt.datetime | None = None) -> BackupSchedule:
    now = now or utcnow()
    _check_cron(body.cron)
    inst = session.execute(
        select(Instance).where(
            Instance.id == body.instance_id, Instance.tenant_id == project_id, Instance.deleted.is_(False)
        )
    ).scalar_one_or_none()
    if inst is None:
        raise NotFound(f"Instance {body.instance_id} could not be found.", resource="instance", id=body.instance_id)
    if body.incremental and backups.instance_kind(session, inst) != "mariadb":
        raise NotImplementedFeature("Incremental backups are only supported for MariaDB instances.")
    row = BackupSchedule(
        tenant_id=project_id,
        instance_id=inst.id,
        name=body.name,
        description=body.description,
        cron=body.cron,
        keep_last=body.keep_last,
        max_age_days=body.max_age_days,
        incremental=body.incremental,
        full_every=body.full_every,
        next_run_at=next_run(body.cron, now),
        created=now,
        updated=now,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, project_id: str, schedule_id: str) -> BackupSchedule:
    row = session.execute(
        select(BackupSchedule).where(
            BackupSchedule.id == schedule_id, BackupSchedule.tenant_id == project_id, BackupSchedule.deleted.is_(False)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"Backup schedule {schedule_id} could not be found.", resource="backup_schedule", id=schedule_id)
    return row


def list_rows(session: Session, project_id: str, instance_id: str | None = None) -> list[BackupSchedule]:
    query = select(BackupSchedule).where(BackupSchedule.tenant_id == project_id, BackupSchedule.deleted.is_(False))
    if instance_id:
        query = query.where(BackupSchedule.instance_id == instance_id)
    return list(session.execute(query.order_by(BackupSchedule.created, BackupSchedule.id)).scalars())


def delete(session: Session, project_id: str, schedule_id: str) -> None:
    """The schedule stops; the backups it made stay (they are the user's)."""
    row = get(session, project_id, schedule_id)
    row.deleted = True


# ---- the tick -----------------------------------------------------------------------------


def run_due(
    session: Session, storage: BackupStorage, default_container: str, *, now: dt.datetime | None = None, limit: int = 100
) -> list[Message]:
    """Start every backup that is due. A schedule that cannot run now (instance busy, not
    ACTIVE) records why and waits for its next time; one whose instance is gone ends."""
    now = now or utcnow()
    out: list[Message] = []
    due = session.execute(
        select(BackupSchedule)
        .where(BackupSchedule.deleted.is_(False), BackupSchedule.next_run_at <= now)
        .order_by(BackupSchedule.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars()
    for schedule in due:
        schedule.next_run_at = next_run(schedule.cron, now)
        schedule.last_run_at = now
        inst = session.get(Instance, schedule.instance_id)
        if inst is None or inst.deleted:
            schedule.deleted = True
            schedule.last_result = "instance deleted; schedule ended"
            continue
        incremental = schedule.incremental and schedule.runs % max(schedule.full_every, 1) != 0
        body = BackupCreate(
            name=f"{schedule.name} {now.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            description=f"scheduled by {schedule.id}",
            instance=inst.id,
            incremental=int(incremental),
        )
        try:
            with session.begin_nested():
                backup, events = backups.create(
                    session, schedule.tenant_id, body, storage, default_container, schedule_id=schedule.id, now=now
                )
        except DomainError as exc:
            schedule.last_result = f"skipped: {exc.message}"[:512]
            log.info("schedule %s skipped: %s", schedule.id, exc.message)
            continue
        schedule.runs += 1
        schedule.last_result = f"backup {backup.id} started"
        out += events
    return out


# ---- retention ----------------------------------------------------------------------------


def apply_retention(session: Session, schedule_id: str, now: dt.datetime) -> list[Message]:
    schedule = session.get(BackupSchedule, schedule_id)
    if schedule is None or (schedule.keep_last is None and schedule.max_age_days is None):
        return []
    rows = list(
        session.execute(
            select(Backup)
            .where(Backup.schedule_id == schedule.id, Backup.deleted.is_(False))
            .order_by(Backup.created.desc(), Backup.id.desc())
        ).scalars()
    )
    completed = [b for b in rows if b.state in backups.DONE]
    expired = expired_backups(completed, schedule.keep_last, schedule.max_age_days, now)
    if completed:
        # Failed runs older than the oldest backup we keep are noise.
        kept = [b for b in completed if b.id not in expired]
        oldest_kept = kept[-1].created if kept else now
        expired |= {b.id for b in rows if b.state == "FAILED" and b.created < oldest_kept}
    if not expired:
        return []
    # Never cut a chain under a backup we keep, whoever made it.
    by_id = {b.id: b for b in rows}
    needed = _ancestors_of_kept(session, expired, by_id)
    doomed = [b for b in reversed(rows) if b.id in expired and b.id not in needed]
    out: list[Message] = []
    for b in doomed:
        if b.deleted:
            continue  # gone with a parent deleted earlier in this loop
        tree = backups.subtree(session, b)
        if any(child.id not in expired for child in tree):
            continue
        out += backups.delete_rows(session, tree, now=now)
    return out


def expired_backups(completed_newest_first: list[Backup], keep_last: int | None, max_age_days: float | None,
                    now: dt.datetime) -> set[str]:
    expired: set[str] = set()
    for index, b in enumerate(completed_newest_first):
        too_many = keep_last is not None and index >= keep_last
        too_old = max_age_days is not None and now - b.created > dt.timedelta(days=max_age_days)
        if too_many or too_old:
            expired.add(b.id)
    return expired


def _ancestors_of_kept(session: Session, expired: set[str], by_id: dict[str, Backup]) -> set[str]:
    """Ids of the parents (transitively) of every backup that is not expired."""
    needed: set[str] = set()
    kept_parents = session.execute(
        select(Backup.parent_id).where(
            Backup.parent_id.in_(expired), Backup.deleted.is_(False), Backup.id.not_in(expired)
        )
    ).scalars()
    frontier = [p for p in kept_parents if p]
    while frontier:
        current = frontier.pop()
        if current in needed:
            continue
        needed.add(current)
        parent = by_id.get(current) or session.get(Backup, current)
        if parent is not None and parent.parent_id:
            frontier.append(parent.parent_id)
    return needed
