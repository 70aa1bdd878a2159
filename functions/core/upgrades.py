"""Datastore version upgrade (`PATCH /instances/{id}` with `datastore_version`), as Trove's
`upgrade`: the server restarts on the new version's binaries and keeps its data.

Only minor upgrades (same major version: PostgreSQL 15.x -> 15.y, MariaDB 10.11.x ->
10.11.y) are done; a major upgrade needs pg_upgrade / mariadb-upgrade and a way back, and
is refused with a 400 that says so. Downgrades are refused too.

Where a version's binaries are: `datastore_versions.image_id`. On OpenStack that names the
Glance image the server is rebuilt from; on the local platform it is a directory holding the
server binary (PostgreSQL's `bin/`, or the directory with `mariadbd`); empty means "the
installed default for that version".

`upgrade` workflow: send_upgrade (UpgradeRequested) → wait_upgraded (a HEALTHY heartbeat
after the request) → finish_upgrade (asks the guest which binaries run: the new ones, or
the guest fell back to the old ones and the upgrade failed). As in Trove the instance's
version column switches at once; a failure switches it back, with a fault.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from events import registry
from events.envelope import Message, format_time
from events.guest import GuestStatusReported, StatusRequested, UpgradeRequested
from functions.core import catalog, config_values, guards, instances, names
from functions.core.errors import BadRequest
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.provisioning import (
    STEADY,
    _guest_call,
    _instance,
    healthy_since,
    record_fault,
)
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.core.workflow import Step, StepContext, StepFailed, Wait, Workflow

UPGRADE_DEADLINE_S = 300.0


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def major(kind: str, version: str) -> tuple[int, ...]:
    """PostgreSQL >= 10: the first number; MariaDB: the first two (10.11)."""
    parts = version_tuple(version)
    return parts[:1] if kind == "postgresql" else parts[:2]


def start(session: Session, project_id: str, instance_id: str, version_ref: str) -> list[Message]:
    inst = instances.lock(session, project_id, instance_id)
    service = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == inst.id)).scalar_one_or_none()
    guards.can_perform_action(session, inst, service)
    datastore, current = catalog.by_version_id(session, inst.datastore_version_id)
    if not version_ref:
        raise BadRequest("datastore_version must name a version of the instance's datastore.")
    target = catalog.get_version(session, datastore, version_ref)
    if not target.active:
        raise BadRequest(f"Datastore version '{target.name}' is not active.")
    if target.id == current.id:
        raise BadRequest(f"The instance already runs {datastore.name} {current.name}.")
    kind = names.kind_of(current.manager)
    if names.kind_of(target.manager) != kind:
        raise BadRequest("The new version belongs to another datastore manager.")
    if major(kind, target.version) != major(kind, current.version):
        raise BadRequest(
            f"Upgrading {datastore.name} from {current.version} to {target.version} is a major version upgrade, "
            "which this release does not perform (it needs pg_upgrade / mariadb-upgrade). Back up the instance "
            "and restore a logical dump into a new instance of the new version instead."
        )
    if version_tuple(target.version) < version_tuple(current.version):
        raise BadRequest(f"Downgrading from {current.version} to {target.version} is not supported.")
    inst.datastore_version_id = target.id
    inst.task_id = Task.UPGRADING
    inst.task_description = "Upgrading the datastore version."
    inst.task_start_time = utcnow()
    if service is not None:
        service.status_id, service.status_description = SS.UPGRADING.code, SS.UPGRADING.description
    _, first = UPGRADE.start(session, resource_id=inst.id, context={"from": current.id, "to": target.id})
    return [first]


def send_upgrade(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    _, target = catalog.by_version_id(ctx.session, str(ctx.context["to"]))
    ctx.context["requested_at"] = format_time(utcnow())
    _guest_call(ctx, inst, UpgradeRequested(
        instance_id=inst.id, version=target.version, location=target.image_id or None,
        overrides=config_values.overrides_of(ctx.session, inst),
    ))


def wait_upgraded(ctx: StepContext) -> Wait | None:
    row = ctx.session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == ctx.resource_id)).scalar_one_or_none()
    if row is not None and healthy_since(row, ctx.context.get("requested_at")):
        return None
    return Wait(timeout_s=UPGRADE_DEADLINE_S)


def finish_upgrade(ctx: StepContext) -> None:
    """The guest falls back to the old binaries when the new ones do not start: ask it."""
    inst = _instance(ctx.session, ctx.resource_id or "")
    _, target = catalog.by_version_id(ctx.session, str(ctx.context["to"]))
    reply = _guest_call(ctx, inst, StatusRequested(instance_id=inst.id))
    report = registry.parse(reply) if reply is not None else None
    if not isinstance(report, GuestStatusReported):
        raise StepFailed("the guest did not report its status after the upgrade")
    if report.running_version != target.version:
        raise StepFailed(
            f"the guest runs {report.running_version or 'an unknown version'} after the upgrade, not {target.version}: "
            f"{report.description or 'the new binaries did not start'}"
        )
    if inst.task_id == Task.UPGRADING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description


def _upgrade_failed(session: Session, run: WorkflowRun) -> None:
    inst = session.get(Instance, run.resource_id)
    if inst is None or inst.deleted:
        return
    previous = (run.context or {}).get("from")
    if previous:
        inst.datastore_version_id = str(previous)
    if inst.task_id == Task.UPGRADING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description
    record_fault(session, inst.id, f"upgrade failed: {run.error or 'unknown error'}", f"workflow run {run.id}")


UPGRADE = Workflow(
    "upgrade",
    [
        Step("send_upgrade", send_upgrade, retry=STEADY, timeout_s=60),
        Step("wait_upgraded", wait_upgraded, retry=STEADY, timeout_s=UPGRADE_DEADLINE_S),
        Step("finish_upgrade", finish_upgrade, retry=STEADY, timeout_s=60),
    ],
    on_failure=_upgrade_failed,
)
