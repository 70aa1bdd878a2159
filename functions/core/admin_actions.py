"""Administrator actions on instances: reset_status (Trove's instance action) and the mgmt
actions stop, start, reboot and reset-task-status (`/mgmt/instances/{id}/action`).

Trove has `stop` as a mgmt action only and no `start` at all (a reboot brings the database
back); we add `start` as its natural pair. An administrator acts on any project's instance.
Non-administrators get 403 (Trove answers 401 for mgmt routes; see the README).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message
from events.guest import StartRequested, StopRequested
from functions.core import backup_flow, config_values, guards
from functions.core import workflow as runner
from functions.core.auth import Identity
from functions.core.errors import BadRequest, Forbidden, NotFound, UnprocessableEntity
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.ports import Guest, GuestError
from functions.core.provisioning import RESTART
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task

MGMT_ACTIONS = ("stop", "start", "reboot", "reset-task-status")


def require_admin(identity: Identity | None) -> None:
    if identity is None or not identity.is_admin:
        raise Forbidden("This action is for administrators only.")


def _instance(session: Session, instance_id: str) -> Instance:
    inst = session.execute(
        select(Instance).where(Instance.id == instance_id, Instance.deleted.is_(False)).with_for_update()
    ).scalar_one_or_none()
    if inst is None:
        raise NotFound(f"Instance {instance_id} could not be found.", resource="instance", id=instance_id)
    return inst


def _service(session: Session, instance_id: str) -> ServiceStatus | None:
    return session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == instance_id)).scalar_one_or_none()


def reset_status(session: Session, instance_id: str) -> None:
    """Trove's reset_status / reset-task-status: the task goes back to NONE, running
    backups fail, and (reset_status) the service status becomes UNKNOWN until the next
    heartbeat says otherwise. Our own runs that could undo it (a build, a restart) stop."""
    inst = _instance(session, instance_id)
    for run in runner.active_runs(session, inst.id, ("provision", "restart", "resize")):
        runner.cancel(session, run.id, "cancelled: status reset by an administrator")
    backup_flow.abandon_running(session, inst.id, "the instance's status was reset by an administrator")
    inst.task_id = Task.NONE
    inst.task_description = Task.NONE.description
    service = _service(session, inst.id)
    if service is not None:
        service.status_id, service.status_description = SS.UNKNOWN.code, SS.UNKNOWN.description


def reset_task_status(session: Session, instance_id: str) -> None:
    inst = _instance(session, instance_id)
    backup_flow.abandon_running(session, inst.id, "the instance's task was reset by an administrator")
    inst.task_id = Task.NONE
    inst.task_description = Task.NONE.description


def reboot(session: Session, instance_id: str) -> list[Message]:
    inst = _instance(session, instance_id)
    service = _service(session, inst.id)
    guards.can_perform_action(session, inst, service)
    inst.task_id = Task.REBOOTING
    inst.task_description = Task.REBOOTING.description
    if service is not None:
        service.status_id, service.status_description = SS.RESTARTING.code, SS.RESTARTING.description
    _, first = RESTART.start(session, resource_id=inst.id)
    return [first]


def power_target(session: Session, instance_id: str) -> tuple[str, str, bytes, dict[str, Any]]:
    """(instance id, address, key, configuration overrides) of an instance whose database
    may be stopped or started now (ACTIVE, idle, no backup running); 422 otherwise."""
    inst = _instance(session, instance_id)
    guards.can_perform_action(session, inst, _service(session, inst.id))
    address = (inst.addresses or [{}])[0].get("address")
    if not address or not inst.encrypted_key:
        raise UnprocessableEntity(f"Instance {inst.id} has no address yet.")
    return inst.id, address, bytes.fromhex(inst.encrypted_key), config_values.overrides_of(session, inst)


def send_power(guest: Guest, target: tuple[str, str, bytes, dict[str, Any]], action: str) -> None:
    """Stop or start the database server (the guest answers 202 and reports the result in
    its heartbeats: SHUTDOWN, then HEALTHY). Sent outside any transaction."""
    instance_id, address, secret, overrides = target
    command = StopRequested(instance_id=instance_id) if action == "stop" \
        else StartRequested(instance_id=instance_id, overrides=overrides)
    try:
        guest.send(instance_id, address, secret, command)
    except GuestError as exc:
        raise UnprocessableEntity(f"Instance {instance_id} cannot {action} now: {exc}") from exc


def check_action(name: str) -> None:
    if name not in MGMT_ACTIONS:
        raise BadRequest(f"Invalid mgmt instance action: {name}. Valid actions: {', '.join(MGMT_ACTIONS)}.")
