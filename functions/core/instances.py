"""Instance use cases behind the API: create, list, show, rename, delete, restart.

Each returns data plus the events to publish; the handler commits and relays them."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from events.envelope import Message
from functions.core import backups, catalog, configurations, flavors, guards, quotas
from functions.core import workflow as runner
from functions.core.errors import (
    BadRequest,
    NotFound,
    NotImplementedFeature,
    OverLimit,
)
from functions.core.instance_views import InstanceRow
from functions.core.models.base import utcnow
from functions.core.models.configuration import Configuration
from functions.core.models.datastore import Datastore, DatastoreVersion
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.provisioning import PROVISION, RESTART, TEARDOWN
from functions.core.schemas.instances import InstanceCreate, InstanceUpdate
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.core.views import page_size

MAX_VOLUME_GB = 10
NAME_LIMITS = {"postgresql": 63, "mariadb": 64, "mysql": 64}
USER_LIMITS = {"postgresql": 63, "mariadb": 80, "mysql": 32}
RESERVED_DATABASES = {
    "postgresql": {"postgres", "template0", "template1", "os_admin"},
    "mariadb": {"mysql", "information_schema", "performance_schema", "sys"},
}
RESERVED_USERS = {"postgresql": {"postgres", "os_admin"}, "mariadb": {"root", "os_admin", "mysql", "mariadb.sys"}}


def _rows() -> Select[Any]:
    return (
        select(Instance, ServiceStatus, Datastore, DatastoreVersion,
               guards.backup_running_clause(Instance.id).label("backup_running"), Configuration)
        .join(DatastoreVersion, DatastoreVersion.id == Instance.datastore_version_id)
        .join(Datastore, Datastore.id == DatastoreVersion.datastore_id)
        .outerjoin(ServiceStatus, ServiceStatus.instance_id == Instance.id)
        .outerjoin(Configuration, Configuration.id == Instance.configuration_id)
    )


def get_row(session: Session, project_id: str, instance_id: str, *, with_fault: bool = True) -> InstanceRow:
    found = session.execute(
        _rows().where(Instance.id == instance_id, Instance.tenant_id == project_id, Instance.deleted.is_(False))
    ).first()
    if found is None:
        raise NotFound(f"Instance {instance_id} could not be found.", resource="instance", id=instance_id)
    fault = None
    if with_fault:
        fault = session.execute(
            select(InstanceFault)
            .where(InstanceFault.instance_id == instance_id, InstanceFault.deleted.is_(False))
            .order_by(InstanceFault.created.desc())
            .limit(1)
        ).scalar_one_or_none()
    return InstanceRow(*found, fault=fault)


def list_rows(session: Session, project_id: str, limit: str | None, marker: str | None) -> tuple[list[InstanceRow], str | None]:
    """Trove's keyset paging on id (page size capped at 20), newest first within a page."""
    size = page_size(limit)
    query = _rows().where(Instance.tenant_id == project_id, Instance.deleted.is_(False))
    if marker:
        query = query.where(Instance.id > marker)
    found = session.execute(query.order_by(Instance.id).limit(size + 1)).all()
    next_marker = found[size - 1][0].id if len(found) > size else None
    rows = [InstanceRow(*r) for r in found[:size]]
    rows.sort(key=lambda r: r.instance.created, reverse=True)
    return rows, next_marker



def create(session: Session, project_id: str, body: InstanceCreate, now: dt.datetime | None = None) -> tuple[InstanceRow, list[Message]]:
    now = now or utcnow()
    for field, what in (("replica_of", "Creating replicas"), ("modules", "Modules")):
        if getattr(body, field):
            raise NotImplementedFeature(f"{what} is not available in this release of Troveless yet.")
    if body.replica_count is not None:
        raise BadRequest("replica_count is only valid together with replica_of.")
    chain = backups.restore_chain(session, project_id, body.restorePoint.backupRef) if body.restorePoint else []
    if chain and body.datastore is None:
        # Trove restores onto the backup's own datastore version when none is given.
        datastore, version = catalog.by_version_id(session, chain[-1].datastore_version_id or "")
    else:
        datastore, version = catalog.resolve(
            session,
            body.datastore.type if body.datastore else None,
            body.datastore.version if body.datastore else None,
            body.datastore.version_number if body.datastore else None,
        )
    flavor = flavors.get_flavor(session, body.flavorRef)
    if body.volume is None:
        raise BadRequest("Volume size must be specified.")
    if body.volume.size > MAX_VOLUME_GB:
        raise OverLimit(
            f"Volume 'size' cannot exceed maximum of {MAX_VOLUME_GB} GB, {body.volume.size} cannot be accepted."
        )
    if len(body.nics) > 1:
        raise BadRequest("Only one NIC is allowed.")
    kind = version.manager
    if chain:
        backups.check_restore(chain, body.volume.size, version.id, lambda vid: catalog.manager_of(session, vid))
    databases = _check_databases(kind, body)
    users = _check_users(kind, body, {d["name"] for d in databases})
    config = configurations.check_for_create(session, project_id, body.configuration, version) \
        if body.configuration else None

    instance = Instance(
        name=body.name,
        tenant_id=project_id,
        flavor_id=flavor.id,
        volume_size=body.volume.size,
        volume_type=body.volume.type,
        datastore_version_id=version.id,
        configuration_id=config.id if config else None,
        task_id=Task.BUILDING,
        task_description=Task.BUILDING.description,
        task_start_time=now,
        server_status="BUILD",
        region_id=body.region_name,
        access=body.access.model_dump() if body.access else {"is_public": False, "allowed_cidrs": []},
        # The per-instance key signing every message to and from its guest.
        # TODO(issue 7): encrypt at rest with a platform key; today it is stored as hex.
        encrypted_key=secrets.token_bytes(32).hex(),
        created=now,
        updated=now,
    )
    session.add(instance)
    session.flush()
    service = ServiceStatus(
        instance_id=instance.id, status_id=SS.NEW.code, status_description=SS.NEW.description, updated_at=now
    )
    session.add(service)
    session.flush()
    context: dict[str, Any] = {"databases": databases, "users": users}
    if chain:
        context["restore"] = [
            {"backup_id": b.id, "location": b.location, "checksum": b.checksum,
             "backup_type": "incremental" if b.backup_type == "incremental" else "full", "lsn": b.lsn}
            for b in chain
        ]
    # Late in the transaction, so the project's usage rows stay locked only until commit.
    quotas.hold(session, project_id, "instance", instance.id,
                {"instances": 1, "ram": flavor.ram, "volumes": body.volume.size})
    _, first = PROVISION.start(session, resource_id=instance.id, context=context, now=now)
    return InstanceRow(instance, service, datastore, version, configuration=config), [first]


def _check_databases(kind: str, body: InstanceCreate) -> list[dict[str, Any]]:
    limit, reserved = NAME_LIMITS.get(kind, 64), RESERVED_DATABASES.get(kind, set())
    seen: set[str] = set()
    out = []
    for db in body.databases:
        if len(db.name) > limit:
            raise BadRequest(f"Database name '{db.name}' is longer than {limit} characters.")
        if db.name.lower() in reserved:
            raise BadRequest(f"Database name '{db.name}' is reserved.")
        if db.name in seen:
            raise BadRequest(f"Database '{db.name}' appears more than once.")
        seen.add(db.name)
        out.append(db.model_dump(exclude_none=True))
    return out


def _check_users(kind: str, body: InstanceCreate, databases: set[str]) -> list[dict[str, Any]]:
    limit, reserved = USER_LIMITS.get(kind, 63), RESERVED_USERS.get(kind, set())
    seen: set[tuple[str, str]] = set()
    out = []
    for user in body.users:
        if len(user.name) > limit:
            raise BadRequest(f"User name '{user.name}' is longer than {limit} characters.")
        if user.name.lower() in reserved:
            raise BadRequest(f"User name '{user.name}' is reserved.")
        key = (user.name, user.host or "%")
        if key in seen:
            raise BadRequest(f"User '{user.name}' appears more than once.")
        seen.add(key)
        missing = [d.name for d in user.databases if d.name not in databases]
        if missing:
            raise BadRequest(f"User '{user.name}' is granted database(s) not being created: {', '.join(missing)}.")
        out.append({"name": user.name, "password": user.password, "host": user.host,
                    "databases": [d.name for d in user.databases]})
    return out


def lock(session: Session, project_id: str, instance_id: str) -> Instance:
    inst = session.execute(
        select(Instance)
        .where(Instance.id == instance_id, Instance.tenant_id == project_id, Instance.deleted.is_(False))
        .with_for_update()
    ).scalar_one_or_none()
    if inst is None:
        raise NotFound(f"Instance {instance_id} could not be found.", resource="instance", id=instance_id)
    return inst


def update(session: Session, project_id: str, instance_id: str, body: InstanceUpdate) -> str | None:
    """Rename now; return the one other change the body asks for ("configuration" for an
    attach or detach, "datastore_version" for an upgrade), which the caller carries out.
    As Trove: `name` plus at most one other attribute; an empty body detaches the group."""
    inst = lock(session, project_id, instance_id)
    fields = body.model_fields_set
    others = [f for f in ("configuration", "replica_of", "slave_of", "datastore_version", "access") if f in fields]
    if len(others) > 1:
        raise BadRequest(f"Only one of {', '.join(others)} can be changed at a time (besides the name).")
    later = [f for f in others if f in ("replica_of", "slave_of", "access")]
    if later:
        raise NotImplementedFeature(f"Changing {', '.join(later)} is not available in this release of Troveless yet.")
    if body.name is not None:
        inst.name = body.name
    if not fields:
        return "configuration"  # Trove detaches on an empty update
    return others[0] if others else None


def delete(session: Session, project_id: str, instance_id: str) -> list[Message]:
    """Delete in any state, BUILD included (unlike Trove): teardown cancels the build first."""
    inst = lock(session, project_id, instance_id)
    if runner.active_runs(session, inst.id, ("teardown",)):
        return []  # already being deleted
    inst.task_id = Task.DELETING
    inst.task_description = Task.DELETING.description
    _, first = TEARDOWN.start(session, resource_id=inst.id)
    return [first]


def restart(session: Session, project_id: str, instance_id: str) -> list[Message]:
    inst = lock(session, project_id, instance_id)
    service = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == inst.id)).scalar_one_or_none()
    guards.can_perform_action(session, inst, service)
    inst.task_id = Task.REBOOTING
    inst.task_description = Task.REBOOTING.description
    if service is not None:
        service.status_id, service.status_description = SS.RESTARTING.code, SS.RESTARTING.description
    _, first = RESTART.start(session, resource_id=inst.id)
    return [first]


def get_any(session: Session, instance_id: str) -> Instance:
    """An instance of any project (admin views)."""
    inst = session.get(Instance, instance_id)
    if inst is None or inst.deleted:
        raise NotFound(f"Instance {instance_id} could not be found.", resource="instance", id=instance_id)
    return inst
