"""Trove's status model (trove.md §3): task status, service status, and the derivation of
the `status` and `operating_status` an API client sees. Pure functions, no queries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum

# Trove's agent_heartbeat_expiry: an older heartbeat means the guest is not answering.
HEARTBEAT_EXPIRY_S = 90


class Task(IntEnum):
    """instances.task_id values (trove/instance/tasks.py)."""

    NONE = 0x01
    DELETING = 0x02
    REBOOTING = 0x03
    RESIZING = 0x04
    BUILDING = 0x05
    MIGRATING = 0x06
    RESTART_REQUIRED = 0x07
    PROMOTING = 0x08
    EJECTING = 0x09
    LOGGING = 0x0A
    DETACHING = 0x0B
    UPDATING = 0x0C
    BUILDING_ERROR_DNS = 0x50
    BUILDING_ERROR_SERVER = 0x51
    BUILDING_ERROR_VOLUME = 0x52
    BUILDING_ERROR_SEC_GROUP = 0x53
    BUILDING_ERROR_REPLICA = 0x54
    PROMOTION_ERROR = 0x55
    EJECTION_ERROR = 0x56
    GROWING_ERROR = 0x57
    SHRINKING_ERROR = 0x58
    UPGRADING = 0x59
    UPGRADING_ERROR = 0x5A
    BUILDING_ERROR_TIMEOUT_GA = 0x5B
    BUILDING_ERROR_PORT = 0x5C
    UPDATING_ERROR_ACCESS = 0x5D

    @property
    def is_error(self) -> bool:
        return self >= 0x50 and self not in (Task.UPGRADING,)

    @property
    def description(self) -> str:
        return TASK_DESCRIPTIONS.get(self, self.name.replace("_", " ").capitalize())


TASK_DESCRIPTIONS = {
    Task.NONE: "No tasks for the instance.",
    Task.DELETING: "Deleting the instance.",
    Task.REBOOTING: "Rebooting the instance.",
    Task.BUILDING: "The instance is building.",
    Task.BUILDING_ERROR_SERVER: "Build error: Server.",
    Task.BUILDING_ERROR_VOLUME: "Build error: Volume.",
    Task.BUILDING_ERROR_TIMEOUT_GA: "Build error: Guestagent timeout.",
}


@dataclass(frozen=True)
class Service:
    code: int
    description: str  # what the guest reports / what is stored
    api_status: str  # what the API shows


class ServiceStatus:
    """service_statuses values (trove/instance/service_status.py)."""

    RUNNING = Service(0x01, "running", "ACTIVE")
    BLOCKED = Service(0x02, "blocked", "BLOCKED")
    PAUSED = Service(0x03, "paused", "SHUTDOWN")
    SHUTDOWN = Service(0x04, "shutdown", "SHUTDOWN")
    DELETED = Service(0x05, "deleted", "DELETED")
    CRASHED = Service(0x06, "crashed", "SHUTDOWN")
    FAILED = Service(0x08, "failed to spawn", "FAILED")
    BUILDING = Service(0x09, "building", "BUILD")
    UNKNOWN = Service(0x16, "unknown", "ERROR")
    NEW = Service(0x17, "new", "NEW")
    FAILED_TIMEOUT_GUESTAGENT = Service(0x18, "guestagent error", "ERROR")
    RESTART_REQUIRED = Service(0x20, "restart required", "RESTART_REQUIRED")
    HEALTHY = Service(0x21, "healthy", "HEALTHY")
    # Trove gives UPGRADING and RESTARTING the same code (0x22); we give RESTARTING its own.
    UPGRADING = Service(0x22, "upgrading", "UPGRADING")
    RESTARTING = Service(0x23, "restarting", "RESTARTING")

    BY_CODE: dict[int, Service] = {}

    @classmethod
    def from_code(cls, code: int | None) -> Service:
        return cls.BY_CODE.get(code or 0, cls.UNKNOWN)

    @classmethod
    def from_guest(cls, status: str) -> Service:
        """Map the guest's GuestStatus name to Trove's service status."""
        return getattr(cls, status, cls.UNKNOWN)


ServiceStatus.BY_CODE = {
    v.code: v for k, v in vars(ServiceStatus).items() if isinstance(v, Service)
}

# Nova-like server status kept in instances.server_status.
SERVER_VISIBLE = {"BUILD", "ERROR", "REBOOT", "RESIZE", "ACTIVE", "SHUTDOWN"}


def visible_status(task: Task, server_status: str | None, backup_running: bool = False) -> str:
    """`status` as Trove derives it (SimpleInstance.status), rules in Trove's order."""
    server = (server_status or "").upper()
    if task.is_error:
        return "ERROR"
    if task == Task.BUILDING:
        return "ERROR" if server == "ERROR" else "BUILD"
    by_task = {
        Task.REBOOTING: "REBOOT",
        Task.RESIZING: "RESIZE",
        Task.UPGRADING: "UPGRADE",
        Task.RESTART_REQUIRED: "RESTART_REQUIRED",
        Task.PROMOTING: "PROMOTE",
        Task.EJECTING: "EJECT",
        Task.DETACHING: "DETACH",
    }
    if task in by_task:
        return by_task[task]
    if task == Task.DELETING:
        return "SHUTDOWN" if server in ("ACTIVE", "SHUTDOWN", "DELETED") else "ERROR"
    if backup_running:
        return "BACKUP"
    if server in SERVER_VISIBLE:
        return server
    if server == "VERIFY_RESIZE":
        return "RESIZE"
    return "UNKNOWN"


def operating_status(
    task: Task,
    server_status: str | None,
    service: Service,
    heartbeat_at: dt.datetime | None,
    now: dt.datetime,
) -> str:
    """`operating_status`: the service status, only once the instance is up and idle.

    A heartbeat older than HEARTBEAT_EXPIRY_S reads as FAILED_TIMEOUT_GUESTAGENT (ERROR),
    computed at read time as Trove does, so it is never stale and never needs a writer."""
    if task != Task.NONE or (server_status or "").upper() != "ACTIVE":
        return ""
    expired = heartbeat_at is None or (now - heartbeat_at).total_seconds() >= HEARTBEAT_EXPIRY_S
    if expired and service is not ServiceStatus.RESTART_REQUIRED:
        return ServiceStatus.FAILED_TIMEOUT_GUESTAGENT.api_status
    return service.api_status
