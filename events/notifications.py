"""Usage and lifecycle notifications: Trove's notification payloads, carried as CloudEvents.

Trove publishes these through oslo.messaging for billing and auditing (Ceilometer reads
them). We publish the same payloads, key for key, as CloudEvents of type
`troveless.notification.<Trove event type>`, e.g. `troveless.notification.trove.instance.create`
(Trove's `event_type` is the part after the prefix, kept in TROVE_EVENT_TYPE). `subject` is
the instance or backup id; ids are deterministic, so a consumer dedupes on (source, id).

- `trove.instance.{create,delete,modify_flavor,modify_volume}`: usage events
  (trove/common/notification.py `TroveCommonTraits`: the instance, its flavor and volume,
  taken when the build, delete or resize has finished).
- `trove.instance.exists`: the periodic audit of every live instance
  (trove/extensions/mgmt/instances/models.py `NovaNotificationTransformer`).
- `dbaas.backup_create.end`, `dbaas.backup_delete.end`: Trove's API action notifications
  (`DBaaSBackupCreate`, `DBaaSBackupDelete`: the request's base traits, the start traits and
  the end trait `backup_id`), sent when the backup COMPLETED or was deleted.

Times are Trove's `timeutils.isotime`: UTC, whole seconds, a `Z` suffix.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar, Literal

from events.base import PREFIX, Event

NOTIFICATION_PREFIX = f"{PREFIX}.notification."
# trove/common/cfg.py UNKNOWN_SERVICE_ID and the default `notification_service_id` map.
UNKNOWN_SERVICE_ID = "unknown-service-id-error"
SERVICE_IDS = {
    "mysql": "2f3ff068-2bfb-4f70-9a9d-a6bb65bc084b",
    "mariadb": "7a4f82cc-10d2-4bc6-aadc-d9aacc2a3cb5",
    "postgresql": "ac277e0d-4f21-40aa-b347-1ea31e571720",
}
# The CloudEvent `source` of every notification (ids are unique within it).
NOTIFICATIONS_SOURCE = "/troveless/notifications"

ServerType = Literal["api", "taskmanager", "guest", "conductor"]


def isotime(moment: dt.datetime | None) -> str | None:
    """Trove's timeutils.isotime: '2026-11-22T06:10:00Z' (naive values are UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat() + "Z"


def service_id(manager: str | None) -> str:
    return SERVICE_IDS.get(manager or "", UNKNOWN_SERVICE_ID)


class Notification(Event):
    """A notification's payload; TROVE_EVENT_TYPE is Trove's `event_type`."""

    TROVE_EVENT_TYPE: ClassVar[str] = ""


def _type(trove_event_type: str) -> str:
    return NOTIFICATION_PREFIX + trove_event_type


# ---- usage events (TroveBaseTraits + TroveCommonTraits) -------------------------------------


class _InstanceTraits(Notification):
    created_at: str | None
    name: str
    instance_id: str
    instance_name: str
    instance_type_id: str | None
    launched_at: str | None
    nova_instance_id: str | None
    region: str
    state_description: str
    state: str
    tenant_id: str
    user_id: str | None
    # The flavor's name and RAM in MB.
    instance_type: str | None
    instance_size: int | None
    service_id: str
    availability_zone: str | None
    # GB; every datastore here has volume support.
    volume_size: int | None
    nova_volume_id: str | None


class InstanceCreated(_InstanceTraits):
    """The build finished: the guest is healthy and the instance ACTIVE."""

    TROVE_EVENT_TYPE: ClassVar[str] = "trove.instance.create"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)


class InstanceDeleted(_InstanceTraits):
    """The server and volume are gone."""

    TROVE_EVENT_TYPE: ClassVar[str] = "trove.instance.delete"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    deleted_at: str | None


class InstanceFlavorModified(_InstanceTraits):
    """A flavor resize finished (`instance_size` is the new RAM)."""

    TROVE_EVENT_TYPE: ClassVar[str] = "trove.instance.modify_flavor"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    old_instance_size: int | None
    modify_at: str | None


class InstanceVolumeModified(_InstanceTraits):
    """A volume resize finished (`volume_size` is the new size)."""

    TROVE_EVENT_TYPE: ClassVar[str] = "trove.instance.modify_volume"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    old_volume_size: int | None
    modify_at: str | None


class InstanceExists(Notification):
    """The periodic audit: one per live instance per audit period."""

    TROVE_EVENT_TYPE: ClassVar[str] = "trove.instance.exists"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    audit_period_beginning: str
    audit_period_ending: str
    created_at: str | None
    display_name: str
    instance_id: str
    instance_name: str
    instance_type_id: str | None
    launched_at: str | None
    nova_instance_id: str | None
    region: str
    state_description: str
    state: str
    tenant_id: str
    service_id: str
    instance_type: str | None
    user_id: str | None


# ---- API action notifications (DBaaSAPINotification) ----------------------------------------


class _ApiTraits(Notification):
    """`required_base_traits`: who asked, from where, handled by which service."""

    tenant_id: str
    client_ip: str | None
    server_ip: str | None
    server_type: ServerType
    request_id: str


class BackupCreateEnd(_ApiTraits):
    """The backup COMPLETED."""

    TROVE_EVENT_TYPE: ClassVar[str] = "dbaas.backup_create.end"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    name: str
    instance_id: str | None
    description: str | None
    parent_id: str | None
    backup_id: str


class BackupDeleteEnd(_ApiTraits):
    """The backup was deleted (one notification per backup, incrementals included)."""

    TROVE_EVENT_TYPE: ClassVar[str] = "dbaas.backup_delete.end"
    TYPE: ClassVar[str] = _type(TROVE_EVENT_TYPE)

    backup_id: str


ALL: tuple[type[Notification], ...] = (
    InstanceCreated,
    InstanceDeleted,
    InstanceFlavorModified,
    InstanceVolumeModified,
    InstanceExists,
    BackupCreateEnd,
    BackupDeleteEnd,
)
