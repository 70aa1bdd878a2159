"""The administrators' catalog: datastore versions, flavors, and every project's instances.

- Datastore versions, as Trove's mgmt datastore-versions (trove/extensions/mgmt/datastores):
  all versions, inactive ones included, with the admin fields. `image` is optional here and
  stored as given (there is no Glance; it will name where the version's binaries live).
  The manager must be one this platform runs: postgresql (alias postgres) or mariadb (alias
  mysql: MySQL-compatible versions run on the mariadb driver, so that name is stored).
  Refusals are 400s, as Trove's DatastoreVersionAlreadyExists and DatastoreVersionsInUse.
- Flavors are ours: Trove delegates them to Nova, which answers 409 for a duplicate. A
  flavor in use by a live instance cannot be deleted, nor can its ram, vcpus, disk or
  ephemeral change (the instance was sized from them); renaming it is fine. Deleted flavors
  stay as rows (deleted instances and running workflows still name them); creating a flavor
  with a deleted one's id or name takes that id or name over.
- Instances of every project, as Trove's MgmtInstanceController.index.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from functions.core import instance_views, instances
from functions.core.errors import BadRequest, Conflict, NotFound
from functions.core.instance_views import InstanceRow
from functions.core.models.backup import Backup
from functions.core.models.base import new_id
from functions.core.models.configuration import (
    Configuration,
    DatastoreConfigurationParameter,
)
from functions.core.models.datastore import Datastore, DatastoreVersion, Flavor
from functions.core.models.instance import Instance
from functions.core.schemas.mgmt import (
    DatastoreVersionCreate,
    DatastoreVersionEdit,
    FlavorCreate,
    FlavorEdit,
)
from functions.core.states import ServiceStatus as SS
from functions.core.views import page_size

# What a client may name -> the guest agent driver that runs it (names.kind_of's kinds).
MANAGERS = {"postgresql": "postgresql", "postgres": "postgresql", "mariadb": "mariadb", "mysql": "mariadb"}


def manager_of(name: str) -> str:
    manager = MANAGERS.get(name.lower())
    if manager is None:
        raise BadRequest(
            f"Datastore manager '{name}' is not supported here; use one of {', '.join(sorted(MANAGERS))}."
        )
    return manager


def _split(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


# ---- datastore versions ----------------------------------------------------------------


def version_view(datastore: Datastore, version: DatastoreVersion) -> dict[str, Any]:
    """Trove's mgmt DatastoreVersionView (empty lists are [] rather than Trove's [''])."""
    return {
        "id": version.id,
        "name": version.name,
        "version": version.version,
        "datastore_id": datastore.id,
        "datastore_name": datastore.name,
        "datastore_manager": version.manager,
        "image": version.image_id,
        "image_tags": _split(version.image_tags),
        "packages": _split(version.packages),
        "active": bool(version.active),
        "registry_ext": version.registry_ext,
        "repl_strategy": version.repl_strategy,
        "default": datastore.default_version_id == version.id,
    }


def list_versions(session: Session) -> list[tuple[Datastore, DatastoreVersion]]:
    found = session.execute(
        select(Datastore, DatastoreVersion)
        .join(DatastoreVersion, DatastoreVersion.datastore_id == Datastore.id)
        .order_by(Datastore.name, DatastoreVersion.name, DatastoreVersion.version)
    ).all()
    return [(ds, v) for ds, v in found]


def get_version(session: Session, version_id: str, *, lock: bool = False) -> tuple[Datastore, DatastoreVersion]:
    query = select(DatastoreVersion).where(DatastoreVersion.id == version_id)
    version = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    datastore = session.get(Datastore, version.datastore_id) if version is not None else None
    if version is None or datastore is None:
        raise NotFound(
            f"Datastore version '{version_id}' cannot be found.", resource="datastore_version", id=version_id
        )
    return datastore, version


def _duplicate(session: Session, datastore_id: str, name: str, number: str, other_than: str | None = None) -> bool:
    query = select(DatastoreVersion.id).where(
        DatastoreVersion.datastore_id == datastore_id,
        DatastoreVersion.name == name,
        DatastoreVersion.version == number,
    )
    if other_than is not None:
        query = query.where(DatastoreVersion.id != other_than)
    return session.execute(query).first() is not None


def _exists(name: str, number: str) -> BadRequest:
    return BadRequest(f"The datastore version '{name}({number})' already exists.")


def _flush(session: Session, conflict: Exception) -> None:
    """Flush; a unique constraint that a concurrent request beat us to is `conflict`."""
    try:
        session.flush()
    except IntegrityError:
        raise conflict from None


def create_version(session: Session, body: DatastoreVersionCreate) -> tuple[Datastore, DatastoreVersion]:
    manager = manager_of(body.datastore_manager)
    number = body.version or body.name  # Trove: the name when no version number is given
    if body.default and not body.active:
        raise BadRequest("An inactive version cannot be the default version of its datastore.")
    datastore = session.execute(
        select(Datastore).where((Datastore.name == body.datastore_name) | (Datastore.id == body.datastore_name))
        .order_by((Datastore.name == body.datastore_name).desc())
    ).scalars().first()
    if datastore is None:
        datastore = Datastore(name=body.datastore_name)
        session.add(datastore)
        _flush(session, Conflict(f"Datastore '{body.datastore_name}' was created concurrently; try again."))
    if _duplicate(session, datastore.id, body.name, number):
        raise _exists(body.name, number)
    version = DatastoreVersion(
        datastore_id=datastore.id,
        name=body.name,
        version=number,
        manager=manager,
        image_id=body.image,
        image_tags=",".join(body.image_tags),
        packages=",".join(body.packages),
        active=body.active,
        registry_ext=body.registry_ext,
        repl_strategy=body.repl_strategy,
    )
    session.add(version)
    _flush(session, _exists(body.name, number))
    if body.default:
        datastore.default_version_id = version.id
    return datastore, version


def edit_version(session: Session, version_id: str, body: DatastoreVersionEdit) -> None:
    """Trove's edit: only the keys sent change; `default: false` on the default version
    leaves its datastore without a default."""
    datastore, version = get_version(session, version_id, lock=True)
    fields = body.model_fields_set
    if body.datastore_manager is not None:
        manager = manager_of(body.datastore_manager)
        if manager != version.manager:
            in_use = _usage(session, version.id)
            if in_use:
                raise BadRequest(f"The manager of a datastore version in use by {in_use} cannot change.")
            version.manager = manager
    if body.name is not None and body.name != version.name:
        if _duplicate(session, datastore.id, body.name, version.version, other_than=version.id):
            raise _exists(body.name, version.version)
        version.name = body.name
    if "image" in fields:
        version.image_id = body.image
    if body.image_tags is not None:
        version.image_tags = ",".join(body.image_tags)
    if body.packages is not None:
        version.packages = ",".join(body.packages)
    if "registry_ext" in fields:
        version.registry_ext = body.registry_ext
    if "repl_strategy" in fields:
        version.repl_strategy = body.repl_strategy
    if body.active is not None:
        version.active = body.active
    if body.default is True:
        datastore.default_version_id = version.id
    elif body.default is False and datastore.default_version_id == version.id:
        datastore.default_version_id = None
    if not version.active and datastore.default_version_id == version.id:
        if body.default:
            raise BadRequest("An inactive version cannot be the default version of its datastore.")
        raise BadRequest(
            f"Datastore version '{version.name}' is the default of datastore '{datastore.name}' and cannot be "
            "made inactive; send \"default\": false with it, or make another version the default first."
        )
    _flush(session, _exists(version.name, version.version))


def _count(session: Session, model: Any, *where: ColumnElement[bool]) -> int:
    return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def _usage(session: Session, version_id: str) -> str | None:
    """What still uses a version (Trove's check: live instances, backups, configurations)."""
    for resource, model in (("instance", Instance), ("backup", Backup), ("configuration", Configuration)):
        count = _count(session, model, model.datastore_version_id == version_id, model.deleted.is_(False))
        if count:
            return f"{count} {resource}{'s' if count > 1 else ''}"
    return None


def delete_version(session: Session, version_id: str) -> None:
    datastore, version = get_version(session, version_id, lock=True)
    in_use = _usage(session, version.id)
    if in_use:
        raise BadRequest(f"Datastore version is in use by {in_use}.")
    # Deleted instances and configuration groups keep their version (their rows point at it).
    kept = sum(
        _count(session, model, model.datastore_version_id == version.id) for model in (Instance, Configuration)
    )
    if kept:
        raise BadRequest(
            "Datastore version is still named by deleted instances or configuration groups; "
            "deactivate it instead (PATCH {\"active\": false})."
        )
    for parameter in session.execute(
        select(DatastoreConfigurationParameter).where(DatastoreConfigurationParameter.datastore_version_id == version.id)
    ).scalars():
        session.delete(parameter)
    session.flush()  # the parameters point at the version: gone first
    if datastore.default_version_id == version.id:
        datastore.default_version_id = None
    session.delete(version)
    session.flush()


# ---- flavors ---------------------------------------------------------------------------


def _flavor(session: Session, flavor_id: str, *, lock: bool = True) -> Flavor:
    query = select(Flavor).where(Flavor.id == flavor_id, Flavor.deleted.is_(False))
    flavor = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if flavor is None:
        raise NotFound(f"Resource Flavor {flavor_id} could not be found.", resource="flavor", id=flavor_id)
    return flavor


def _users(session: Session, flavor_id: str) -> int:
    return _count(session, Instance, Instance.flavor_id == flavor_id, Instance.deleted.is_(False))


def _claim_name(session: Session, name: str, flavor_id: str) -> None:
    """A live flavor's name is taken (409); a deleted flavor's name is freed for reuse."""
    holder = session.execute(select(Flavor).where(Flavor.name == name, Flavor.id != flavor_id)).scalar_one_or_none()
    if holder is None:
        return
    if not holder.deleted:
        raise Conflict(f"Flavor with name '{name}' already exists (id {holder.id}).")
    holder.name = f"deleted:{holder.id}"
    _flush(session, Conflict(f"The name '{name}' was taken concurrently; try again."))


def _next_id(session: Session) -> str:
    numeric = [int(i) for i in session.execute(select(Flavor.id)).scalars() if i.isdigit()]
    candidate = str(max(numeric, default=0) + 1)
    return candidate if len(candidate) <= 36 else new_id()  # the column holds 36 characters


def create_flavor(session: Session, body: FlavorCreate) -> Flavor:
    flavor_id = body.id if body.id and body.id != "auto" else _next_id(session)
    existing = session.get(Flavor, flavor_id)
    if existing is not None and not existing.deleted:
        raise Conflict(f"Flavor with id '{flavor_id}' already exists.")
    _claim_name(session, body.name, flavor_id)
    values = {"name": body.name, "ram": body.ram, "vcpus": body.vcpus, "disk": body.disk,
              "ephemeral": body.ephemeral, "is_public": body.is_public}
    if existing is not None:  # a deleted flavor's id, taken over
        for key, value in values.items():
            setattr(existing, key, value)
        existing.deleted = False
        flavor = existing
    else:
        flavor = Flavor(id=flavor_id, **values)
        session.add(flavor)
    _flush(session, Conflict(f"Flavor '{flavor_id}' or the name '{body.name}' was taken concurrently; try again."))
    return flavor


RESOURCES = ("ram", "vcpus", "disk", "ephemeral")


def edit_flavor(session: Session, flavor_id: str, body: FlavorEdit) -> Flavor:
    flavor = _flavor(session, flavor_id)
    changed = [f for f in RESOURCES if getattr(body, f) is not None and getattr(body, f) != getattr(flavor, f)]
    if changed:
        users = _users(session, flavor.id)
        if users:
            raise Conflict(
                f"Flavor {flavor.id} is in use by {users} instance(s): its {', '.join(changed)} cannot change "
                "(create another flavor and resize the instances to it)."
            )
        for key in changed:
            setattr(flavor, key, getattr(body, key))
    if body.name is not None and body.name != flavor.name:
        _claim_name(session, body.name, flavor.id)
        flavor.name = body.name
    if body.is_public is not None:
        flavor.is_public = body.is_public
    _flush(session, Conflict(f"The name '{flavor.name}' was taken concurrently; try again."))
    return flavor


def delete_flavor(session: Session, flavor_id: str) -> None:
    flavor = _flavor(session, flavor_id)
    users = _users(session, flavor.id)
    if users:
        raise Conflict(f"Flavor {flavor.id} is in use by {users} instance(s) and cannot be deleted.")
    flavor.deleted = True


# ---- every project's instances ---------------------------------------------------------


def _flag(name: str, value: str | None) -> bool | None:
    if value in (None, ""):
        return None
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise BadRequest(f"The '{name}' query parameter must be true or false, not {value!r}.")
    return lowered == "true"


def list_instances(
    session: Session, *, deleted: str | None, project_id: str | None, include_clustered: str | None,
    limit: str | None, marker: str | None,
) -> tuple[list[InstanceRow], str | None]:
    """Trove's load_mgmt_instances: `deleted` absent lists live and deleted instances alike;
    clustered instances only with include_clustered=true. Paged like the project's list."""
    size = page_size(limit)
    query = instances._rows()
    show_deleted = _flag("deleted", deleted)
    if show_deleted is not None:
        query = query.where(Instance.deleted.is_(show_deleted))
    if project_id:
        query = query.where(Instance.tenant_id == project_id)
    if not _flag("include_clustered", include_clustered):
        query = query.where(Instance.cluster_id.is_(None))
    if marker:
        query = query.where(Instance.id > marker)
    found = session.execute(query.order_by(Instance.id).limit(size + 1)).all()
    next_marker = found[size - 1][0].id if len(found) > size else None
    rows = [InstanceRow(*r) for r in found[:size]]
    rows.sort(key=lambda r: r.instance.created, reverse=True)
    return rows, next_marker


def _time(value: dt.datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


def instance_view(row: InstanceRow, base_url: str, now: dt.datetime) -> dict[str, Any]:
    """Trove's MgmtInstanceView: the detail view plus the owner, the server and volume ids,
    deletion, the raw service status and the task. Links name the owner's project."""
    inst = row.instance
    view = instance_views.detail(row, base_url, inst.tenant_id, now, admin=True)
    view.update(
        deleted=bool(inst.deleted),
        deleted_at=_time(inst.deleted_at),
        service_status=SS.from_code(row.service.status_id).api_status if row.service is not None else None,
        task_description=inst.task_description,
    )
    return view
