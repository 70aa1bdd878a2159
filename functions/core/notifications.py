"""Usage and lifecycle notifications (events/notifications.py): built from the rows they
report on, written to the outbox in the same transaction as the state change, recorded by
the notification consumer.

Where each one is emitted (the transaction that makes it true):
- trove.instance.create: provisioning's `mark_active` step (the instance turns ACTIVE);
- trove.instance.delete: teardown's `finish_delete` step (server and volume are gone);
- trove.instance.modify_flavor / modify_volume: resizing's `finish_resize` step;
- trove.instance.exists: the `emit_exists_notifications` schedule, for every live instance;
- dbaas.backup_create.end: the conductor applying a successful GuestBackupFinished (or the
  backup workflow finding the finished object in the store);
- dbaas.backup_delete.end: the backup_delete workflow once the objects are removed.

Who asked (Trove's `user_id`, and the request traits of the dbaas.* events) is what the
workflow run remembered of the API request that started it (`context["request"]`, see
functions/core/workflow.py); a scheduled action has a fresh request id and no caller.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message
from events.notifications import (
    NOTIFICATIONS_SOURCE,
    BackupCreateEnd,
    BackupDeleteEnd,
    InstanceCreated,
    InstanceDeleted,
    InstanceExists,
    InstanceFlavorModified,
    InstanceVolumeModified,
    Notification,
    ServerType,
    isotime,
    service_id,
)
from functions.core import context as request_context
from functions.core.models.backup import Backup
from functions.core.models.datastore import DatastoreVersion, Flavor
from functions.core.models.instance import Instance
from functions.core.models.platform import NotificationRecord, WorkflowRun
from functions.core.states import Task, visible_status

log = logging.getLogger("troveless.notifications")

SOURCE = NOTIFICATIONS_SOURCE
# The exists audit period when the schedule does not say (Trove's exists_notification_interval).
DEFAULT_AUDIT_PERIOD_S = 3600
RUNNING_BACKUP = ("NEW", "BUILDING", "SAVING")


def request_of(run_context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The API request a workflow run remembers (empty for runs not started by one)."""
    return dict((run_context or {}).get("request") or {})


def _message(event: Notification, key: str, subject: str, partition: str | None) -> Message:
    # Deterministic ids: the same fact emitted twice is one notification to a consumer.
    return event.to_message(
        SOURCE,
        subject=subject,
        id=f"{event.TROVE_EVENT_TYPE}:{key}",
        extensions={"partitionkey": partition or subject},
    )


def emit(session: Session, messages: Sequence[Message]) -> None:
    """Write notifications to the outbox in the caller's transaction."""
    from functions.core import outbox

    if messages:
        outbox.enqueue(session, messages)


# ---- instances ---------------------------------------------------------------------------------


def _state(session: Session, inst: Instance) -> str:
    """The instance's status as the API shows it, lower case (Trove's `state`)."""
    backup_running = session.execute(
        select(Backup.id)
        .where(Backup.instance_id == inst.id, Backup.state.in_(RUNNING_BACKUP), Backup.deleted.is_(False))
        .limit(1)
    ).first() is not None
    return visible_status(Task(inst.task_id), inst.server_status, backup_running).lower()


def _instance_traits(session: Session, inst: Instance, user_id: str | None) -> dict[str, Any]:
    """TroveBaseTraits + TroveCommonTraits of an instance, as it is now."""
    from functions.core.instance_views import REGION

    version = session.get(DatastoreVersion, inst.datastore_version_id)
    flavor = session.get(Flavor, inst.flavor_id) if inst.flavor_id else None
    created = isotime(inst.created)
    state = _state(session, inst)
    return {
        "created_at": created,
        "name": inst.name,
        "instance_id": inst.id,
        "instance_name": inst.name,
        "instance_type_id": inst.flavor_id,
        "launched_at": created,
        "nova_instance_id": inst.compute_instance_id,
        "region": inst.region_id or REGION,
        "state_description": state,
        "state": state,
        "tenant_id": inst.tenant_id,
        "user_id": user_id,
        "instance_type": flavor.name if flavor is not None else None,
        "instance_size": flavor.ram if flavor is not None else None,
        "service_id": service_id(version.manager if version is not None else None),
        "availability_zone": None,
        "volume_size": inst.volume_size,
        "nova_volume_id": inst.volume_id,
    }


def instance_created(session: Session, inst: Instance, run_context: Mapping[str, Any] | None) -> Message:
    event = InstanceCreated(**_instance_traits(session, inst, request_of(run_context).get("user_id")))
    return _message(event, inst.id, inst.id, inst.id)


def instance_deleted(
    session: Session, inst: Instance, run_context: Mapping[str, Any] | None, deleted_at: dt.datetime
) -> Message:
    traits = _instance_traits(session, inst, request_of(run_context).get("user_id"))
    event = InstanceDeleted(**traits, deleted_at=isotime(deleted_at))
    return _message(event, inst.id, inst.id, inst.id)


def instance_flavor_modified(
    session: Session,
    inst: Instance,
    run_context: Mapping[str, Any] | None,
    *,
    old_ram_mb: int | None,
    at: dt.datetime,
    run_id: str,
) -> Message:
    traits = _instance_traits(session, inst, request_of(run_context).get("user_id"))
    traits["launched_at"] = isotime(at)
    event = InstanceFlavorModified(**traits, old_instance_size=old_ram_mb, modify_at=isotime(at))
    return _message(event, run_id, inst.id, inst.id)


def instance_volume_modified(
    session: Session,
    inst: Instance,
    run_context: Mapping[str, Any] | None,
    *,
    old_size_gb: int | None,
    at: dt.datetime,
    run_id: str,
) -> Message:
    traits = _instance_traits(session, inst, request_of(run_context).get("user_id"))
    traits["launched_at"] = isotime(at)
    event = InstanceVolumeModified(**traits, old_volume_size=old_size_gb, modify_at=isotime(at))
    return _message(event, run_id, inst.id, inst.id)


def exists_all(session: Session, now: dt.datetime, period_s: float = DEFAULT_AUDIT_PERIOD_S) -> list[Message]:
    """trove.instance.exists for every live instance that has a server and is not shut
    down (NovaNotificationTransformer); the audit period is the `period_s` ending now."""
    from functions.core.instance_views import REGION

    start, end = isotime(now - dt.timedelta(seconds=period_s)), isotime(now)
    assert start is not None and end is not None
    instances = list(
        session.execute(
            select(Instance)
            .where(Instance.deleted.is_(False), Instance.compute_instance_id.is_not(None))
            .order_by(Instance.created, Instance.id)
        ).scalars()
    )
    creators = _creators(session, [i.id for i in instances])
    out = []
    for inst in instances:
        state = _state(session, inst)
        if state == "shutdown":
            continue
        version = session.get(DatastoreVersion, inst.datastore_version_id)
        flavor = session.get(Flavor, inst.flavor_id) if inst.flavor_id else None
        created = isotime(inst.created)
        event = InstanceExists(
            audit_period_beginning=start,
            audit_period_ending=end,
            created_at=created,
            display_name=inst.name,
            instance_id=inst.id,
            instance_name=inst.name,
            instance_type_id=inst.flavor_id,
            launched_at=created,
            nova_instance_id=inst.compute_instance_id,
            region=inst.region_id or REGION,
            state_description=state,
            state=state,
            tenant_id=inst.tenant_id,
            service_id=service_id(version.manager if version is not None else None),
            instance_type=flavor.name if flavor is not None else None,
            user_id=creators.get(inst.id),
        )
        out.append(_message(event, f"{inst.id}:{end}", inst.id, inst.id))
    return out


def _creators(session: Session, instance_ids: list[str]) -> dict[str, str | None]:
    """Who created each instance (Nova's server.user_id): the provision run remembers it."""
    if not instance_ids:
        return {}
    rows = session.execute(
        select(WorkflowRun.resource_id, WorkflowRun.context).where(
            WorkflowRun.workflow == "provision", WorkflowRun.resource_id.in_(instance_ids)
        )
    )
    return {resource_id: request_of(ctx).get("user_id") for resource_id, ctx in rows if resource_id}


# ---- backups -----------------------------------------------------------------------------------


def _api_traits(tenant_id: str, request: Mapping[str, Any], server_type: ServerType) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "client_ip": request.get("client_ip"),
        "server_ip": request.get("server_ip"),
        "server_type": server_type,
        "request_id": request.get("request_id") or request_context.new_request_id(),
    }


def backup_created(b: Backup, run_context: Mapping[str, Any] | None, server_type: ServerType) -> Message:
    event = BackupCreateEnd(
        **_api_traits(b.tenant_id, request_of(run_context), server_type),
        name=b.name,
        instance_id=b.instance_id,
        description=b.description,
        parent_id=b.parent_id,
        backup_id=b.id,
    )
    return _message(event, b.id, b.id, b.instance_id)


def backup_deleted(b: Backup, run_context: Mapping[str, Any] | None, server_type: ServerType) -> Message:
    event = BackupDeleteEnd(**_api_traits(b.tenant_id, request_of(run_context), server_type), backup_id=b.id)
    return _message(event, b.id, b.id, b.instance_id)


def backup_run_context(session: Session, backup_id: str) -> dict[str, Any] | None:
    """The context of the backup workflow run of this backup (the newest, if several)."""
    ctx = session.execute(
        select(WorkflowRun.context)
        .where(WorkflowRun.workflow == "backup", WorkflowRun.resource_id == backup_id)
        .order_by(WorkflowRun.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return ctx


# ---- the consumer ------------------------------------------------------------------------------

CONSUMER = "notifications"


def record(session: Session, message: Message, event: Notification) -> bool:
    """Record a received notification once (delivery is at least once); True if new.

    Each one is logged (logger `troveless.notifications`; JSON logs carry the payload under
    `notification`), counted in `troveless_notifications_received_total`, and kept in the
    `notifications` table for the admin API (GET /mgmt/notifications): a durable ledger a
    billing job can page through and reconcile against, deduplicated by event id."""
    from functions.core import inbox, metrics

    if inbox.claim(session, CONSUMER, message) is not None:
        metrics.mark_event("duplicate")
        return False
    payload = event.model_dump(mode="json")
    _store(session, message, event, payload)
    metrics.NOTIFICATIONS.labels(event.TROVE_EVENT_TYPE).inc()
    log.info(
        "notification %s %s",
        event.TROVE_EVENT_TYPE,
        message.subject or "",
        extra={"notification": {"event_type": event.TROVE_EVENT_TYPE, "message_id": message.id,
                                "timestamp": message.time, "payload": payload}},
    )
    return True


def _store(session: Session, message: Message, event: Notification, payload: dict[str, Any]) -> None:
    from events.envelope import parse_time
    from functions.core.models.base import utcnow

    session.add(
        NotificationRecord(
            event_id=message.id,
            event_type=event.TROVE_EVENT_TYPE,
            tenant_id=str(payload.get("tenant_id") or ""),
            resource_id=message.subject,
            payload=payload,
            occurred_at=parse_time(message.time).replace(tzinfo=None) if message.time else utcnow(),
        )
    )


# ---- the admin list ----------------------------------------------------------------------------

PAGE_DEFAULT = 100
PAGE_MAX = 1000


def view(row: NotificationRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_type": row.event_type,
        "message_id": row.event_id,
        "tenant_id": row.tenant_id,
        "resource_id": row.resource_id,
        "timestamp": isotime(row.occurred_at),
        "received_at": isotime(row.received_at),
        "payload": row.payload,
    }


def list_page(
    session: Session,
    *,
    event_type: str | None = None,
    tenant_id: str | None = None,
    resource_id: str | None = None,
    limit: str | None = None,
    marker: str | None = None,
) -> tuple[list[NotificationRecord], str | None]:
    """Oldest first, after `marker` (the last id seen): a billing poller resumes where it
    stopped and never misses one. Returns the page and the next marker (None at the end)."""
    from functions.core.errors import BadRequest
    from functions.core.views import page_size

    size = page_size(limit, cap=PAGE_MAX) if limit not in (None, "") else PAGE_DEFAULT
    query = select(NotificationRecord).order_by(NotificationRecord.id).limit(size + 1)
    if marker not in (None, ""):
        try:
            query = query.where(NotificationRecord.id > int(marker))  # type: ignore[arg-type]
        except ValueError:
            raise BadRequest(f"marker must be a notification id, not {marker!r}") from None
    if event_type:
        query = query.where(NotificationRecord.event_type == event_type)
    if tenant_id:
        query = query.where(NotificationRecord.tenant_id == tenant_id)
    if resource_id:
        query = query.where(NotificationRecord.resource_id == resource_id)
    rows = list(session.execute(query).scalars())
    if len(rows) > size:
        rows = rows[:size]
        return rows, str(rows[-1].id)
    return rows, None
