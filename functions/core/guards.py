"""Can this instance take an action now? Trove's validate_can_perform_action, plus backups."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from functions.core.models.backup import Backup
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task, visible_status

RUNNING_BACKUP_STATES = ("NEW", "BUILDING", "SAVING")


def backup_running_clause(instance_id_column):  # type: ignore[no-untyped-def]
    """A correlated EXISTS: does the instance have a backup in a running state?"""
    return exists().where(
        Backup.instance_id == instance_id_column,
        Backup.state.in_(RUNNING_BACKUP_STATES),
        Backup.deleted.is_(False),
    )


def backup_running(session: Session, instance_id: str) -> bool:
    return bool(session.execute(select(backup_running_clause(instance_id))).scalar())


def can_perform_action(session: Session, inst: Instance, service: ServiceStatus | None) -> None:
    """Server ACTIVE, task idle, datastore in a sane state, and no backup running (the
    instance shows BACKUP then); else 422 as Trove."""
    from functions.core.errors import UnprocessableEntity

    status = SS.from_code(service.status_id if service else None)
    allowed = {SS.RUNNING, SS.SHUTDOWN, SS.CRASHED, SS.BLOCKED, SS.HEALTHY, SS.RESTART_REQUIRED}
    running_backup = backup_running(session, inst.id)
    if (inst.server_status or "").upper() != "ACTIVE" or Task(inst.task_id) not in (Task.NONE, Task.RESTART_REQUIRED) \
            or status not in allowed or running_backup:
        shown = visible_status(Task(inst.task_id), inst.server_status, running_backup)
        raise UnprocessableEntity(f"Instance {inst.id} is not ready. (Status is {shown}.)")
