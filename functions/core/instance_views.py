"""Instance views in Trove's shapes (InstanceView for lists, InstanceDetailView for show)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from functions.core.models.configuration import Configuration
from functions.core.models.datastore import Datastore, DatastoreVersion
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task, operating_status, visible_status
from functions.core.views import links

REGION = "RegionOne"
GB = 1024**3


@dataclass(frozen=True)
class InstanceRow:
    """Everything a view needs, loaded up front by one query (no lazy loads, no N+1)."""

    instance: Instance
    service: ServiceStatus | None
    datastore: Datastore
    version: DatastoreVersion
    # A backup of the instance is NEW, BUILDING or SAVING (the instance shows BACKUP).
    backup_running: bool = False
    # The attached configuration group (id and name for the view), if any.
    configuration: Configuration | None = None
    fault: InstanceFault | None = None


def _trove_time(value: dt.datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


def status_of(row: InstanceRow, now: dt.datetime) -> tuple[str, str]:
    task = Task(row.instance.task_id)
    service = SS.from_code(row.service.status_id if row.service else None)
    heartbeat = row.service.heartbeat_at if row.service else None
    return (
        visible_status(task, row.instance.server_status, row.backup_running),
        operating_status(task, row.instance.server_status, service, heartbeat, now),
    )


def _addresses(instance: Instance) -> list[dict[str, Any]]:
    return list(instance.addresses or [])


def basic(row: InstanceRow, base_url: str, project: str, now: dt.datetime) -> dict[str, Any]:
    inst = row.instance
    status, op_status = status_of(row, now)
    view: dict[str, Any] = {
        "id": inst.id,
        "name": inst.name,
        "status": status,
        "operating_status": op_status,
        "links": links(base_url, project, "instances", inst.id),
        "flavor": {"id": inst.flavor_id, "links": links(base_url, project, "flavors", inst.flavor_id or "")},
        "datastore": {"type": row.datastore.name, "version": row.version.name, "version_number": row.version.version},
        "region": inst.region_id or REGION,
        "access": inst.access or {"is_public": False, "allowed_cidrs": []},
    }
    if inst.volume_size is not None:
        view["volume"] = {"size": inst.volume_size}
    addresses = _addresses(inst)
    if addresses:
        view["addresses"] = addresses
        view["ip"] = [a["address"] for a in addresses]
    return view


def detail(row: InstanceRow, base_url: str, project: str, now: dt.datetime, *, with_usage: bool = False,
           admin: bool = False) -> dict[str, Any]:
    inst = row.instance
    view = basic(row, base_url, project, now)
    view["created"] = _trove_time(inst.created)
    view["updated"] = _trove_time(inst.updated)
    if row.service is not None:
        view["service_status_updated"] = _trove_time(row.service.updated_at)
    if with_usage and row.service is not None and row.service.volume_used_bytes is not None and "volume" in view:
        used = row.service.volume_used_bytes / GB
        view["volume"]["used"] = round(used, 2)
        if inst.volume_size:
            view["volume"]["used_percent"] = round(100 * used / inst.volume_size, 2)
    if row.configuration is not None:
        view["configuration"] = {
            "id": row.configuration.id,
            "name": row.configuration.name,
            "links": links(base_url, project, "configurations", row.configuration.id),
        }
    if row.fault is not None and view["status"] == "ERROR":
        view["fault"] = {
            "message": row.fault.message,
            "created": _trove_time(row.fault.created),
            "details": row.fault.details if admin else None,
        }
    if admin:
        view.update(tenant_id=inst.tenant_id, server_id=inst.compute_instance_id, volume_id=inst.volume_id)
    return view
