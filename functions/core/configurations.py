"""Configuration groups (Trove §1.7, §8): named sets of datastore settings instances attach to.

Values are validated against the datastore's parameter catalog (`config_rules`) on create,
PUT and PATCH: an unknown parameter, a wrong type or an out-of-range value is a 400 naming
the parameter. They are stored as the client gave them (JSON, so a value reads back with its
type) and sent to the guest normalised (integers in the setting's unit, canonical names).

Applying a group to an instance is a synchronous guest call, as Trove's update_overrides /
apply_overrides, but framed so that no failure can leave the database and the server
disagreeing for good: the database is the truth, and every command that (re)starts the
server carries the instance's overrides. So the fallback for anything that did not apply
live (the setting needs a restart, the guest did not answer, the function died halfway) is
RESTART_REQUIRED, which `instance restart` always resolves.

  1. one transaction: checks, `configuration_id` set, task UPDATING (claims the instance)
  2. no transaction: UpdateOverridesRequested to the guest (bounded by the guest timeout)
  3. one transaction: task NONE, or RESTART_REQUIRED when a setting waits for the restart or
     the guest did not confirm; a value the server refused (400) undoes step 1.
An instance left in UPDATING by a function that died between 1 and 3 is moved to
RESTART_REQUIRED by `recover_interrupted` (run by the sweeper).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from events import guest as g
from functions.core import (
    accounts,
    catalog,
    config_rules,
    config_values,
    guards,
    instances,
    names,
)
from functions.core.errors import BadRequest, DomainError, NotFound, UnprocessableEntity
from functions.core.models.base import utcnow
from functions.core.models.configuration import Configuration, ConfigurationParameter
from functions.core.models.datastore import Datastore, DatastoreVersion
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.ports import Guest
from functions.core.schemas.configurations import (
    ConfigurationCreate,
    ConfigurationEdit,
    ConfigurationUpdate,
)
from functions.core.states import Task
from functions.core.views import links, page_size

log = logging.getLogger(__name__)

# An UPDATING claim older than this was left by a function that died (the guest call it
# waited for is bounded well below it).
UPDATING_STALE_AFTER = dt.timedelta(minutes=2)

Transaction = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Group:
    config: Configuration
    datastore: Datastore
    version: DatastoreVersion
    values: dict[str, Any]
    instance_count: int = 0

    @property
    def kind(self) -> str:
        return names.kind_of(self.version.manager)


# ---- reading -----------------------------------------------------------------------------


def _row(session: Session, project_id: str, config_id: str) -> Configuration:
    config = session.execute(
        select(Configuration).where(
            Configuration.id == config_id, Configuration.tenant_id == project_id, Configuration.deleted.is_(False)
        )
    ).scalar_one_or_none()
    if config is None:
        raise NotFound(f"Configuration group {config_id} could not be found.", resource="configuration", id=config_id)
    return config


def _values(session: Session, config_id: str) -> dict[str, Any]:
    return config_values.stored(session, config_id)


def _attached_count(session: Session, config_id: str) -> int:
    return session.execute(
        select(func.count()).select_from(Instance)
        .where(Instance.configuration_id == config_id, Instance.deleted.is_(False))
    ).scalar_one()


def get(session: Session, project_id: str, config_id: str) -> Group:
    config = _row(session, project_id, config_id)
    datastore, version = catalog.by_version_id(session, config.datastore_version_id)
    return Group(config, datastore, version, _values(session, config.id), _attached_count(session, config.id))


def list_groups(session: Session, project_id: str, limit: str | None, marker: str | None) -> tuple[list[Group], str | None]:
    size = page_size(limit)
    query = (
        select(Configuration, Datastore, DatastoreVersion)
        .join(DatastoreVersion, DatastoreVersion.id == Configuration.datastore_version_id)
        .join(Datastore, Datastore.id == DatastoreVersion.datastore_id)
        .where(Configuration.tenant_id == project_id, Configuration.deleted.is_(False))
        .order_by(Configuration.id)
    )
    if marker:
        query = query.where(Configuration.id > marker)
    rows = session.execute(query.limit(size + 1)).all()
    groups = [Group(c, d, v, {}) for c, d, v in rows[:size]]
    return groups, groups[-1].config.id if len(rows) > size else None


def attached_instances(session: Session, project_id: str, config_id: str, limit: str | None,
                       marker: str | None) -> tuple[list[Instance], str | None]:
    _row(session, project_id, config_id)
    size = page_size(limit)
    query = select(Instance).where(
        Instance.configuration_id == config_id, Instance.tenant_id == project_id, Instance.deleted.is_(False)
    ).order_by(Instance.id)
    if marker:
        query = query.where(Instance.id > marker)
    found = list(session.execute(query.limit(size + 1)).scalars())
    page = found[:size]
    return page, page[-1].id if len(found) > size else None


overrides_of = config_values.overrides_of


# ---- writing -----------------------------------------------------------------------------


def _check_values(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """Validated, keyed by the catalog's canonical name, as the client gave them."""
    normalised = config_rules.validate(kind, values)  # 400 naming the parameter
    canonical = {config_rules.get(kind, key).name: value for key, value in values.items()}
    assert canonical.keys() == normalised.keys()
    return canonical


def _store_values(session: Session, config_id: str, values: dict[str, Any]) -> None:
    session.execute(delete(ConfigurationParameter).where(ConfigurationParameter.configuration_id == config_id))
    for key, value in values.items():
        session.add(ConfigurationParameter(configuration_id=config_id, configuration_key=key,
                                           configuration_value=json.dumps(value)))
    session.flush()


def create(session: Session, project_id: str, body: ConfigurationCreate) -> Group:
    ds = body.datastore
    datastore, version = catalog.resolve(session, ds.type if ds else None, ds.version if ds else None,
                                         ds.version_number if ds else None)
    kind = names.kind_of(version.manager)
    values = _check_values(kind, body.values)
    now = utcnow()
    config = Configuration(name=body.name, description=body.description, tenant_id=project_id,
                           datastore_version_id=version.id, created=now, updated=now)
    session.add(config)
    session.flush()
    _store_values(session, config.id, values)
    return Group(config, datastore, version, values, 0)


def update(session: Session, project_id: str, config_id: str, body: ConfigurationUpdate | ConfigurationEdit,
           *, merge: bool) -> list[str]:
    """PUT replaces the values (and name/description if given); PATCH merges values.
    Returns the attached instances' ids, to re-apply the group to."""
    config = session.execute(
        select(Configuration).where(Configuration.id == config_id, Configuration.tenant_id == project_id,
                                    Configuration.deleted.is_(False)).with_for_update()
    ).scalar_one_or_none()
    if config is None:
        raise NotFound(f"Configuration group {config_id} could not be found.", resource="configuration", id=config_id)
    _, version = catalog.by_version_id(session, config.datastore_version_id)
    kind = names.kind_of(version.manager)
    values = _check_values(kind, body.values)
    if merge:
        values = {**_values(session, config.id), **values}
    if isinstance(body, ConfigurationUpdate):
        if body.name is not None:
            config.name = body.name
        if body.description is not None:
            config.description = body.description
    config.updated = utcnow()
    _store_values(session, config.id, values)
    return list(session.execute(
        select(Instance.id).where(Instance.configuration_id == config.id, Instance.tenant_id == project_id,
                                  Instance.deleted.is_(False)).order_by(Instance.id)
    ).scalars())


def delete_group(session: Session, project_id: str, config_id: str) -> None:
    config = _row(session, project_id, config_id)
    if _attached_count(session, config.id):
        raise BadRequest(
            "A configuration group cannot be deleted if it is associated with one or more non-terminated "
            "instances. Detach the configuration group from all non-terminated instances and please try again."
        )
    config.deleted = True
    config.deleted_at = utcnow()
    session.execute(
        ConfigurationParameter.__table__.update()
        .where(ConfigurationParameter.configuration_id == config.id)
        .values(deleted=True, deleted_at=config.deleted_at)
    )


def check_for_create(session: Session, project_id: str, config_id: str, version: DatastoreVersion) -> Configuration:
    """Instance create with `configuration`: the group must be the project's and match the
    instance's datastore version."""
    config = _row(session, project_id, config_id)
    _same_version(config, version.id)
    return config


def _same_version(config: Configuration, version_id: str) -> None:
    if config.datastore_version_id != version_id:
        raise BadRequest(
            f"The configuration group {config.id} is for another datastore version than the instance."
        )


# ---- applying to an instance ---------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    target: accounts.Target
    overrides: dict[str, Any]
    restart_required: list[str]
    previous_configuration: str | None
    previous_task: Task


def _restart_keys(kind: str, *groups: dict[str, Any]) -> list[str]:
    keys = set().union(*groups)
    return sorted(k for k in keys if config_rules.restart_required(kind, k))


def _claim(session: Session, project_id: str, instance_id: str, configuration_id: str | None,
           *, attach: bool) -> Change | None:
    target = accounts.target(session, project_id, instance_id)  # 422 unless the server answers
    inst = instances.lock(session, project_id, instance_id)
    service = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == inst.id)).scalar_one_or_none()
    guards.can_perform_action(session, inst, service)
    _, version = catalog.by_version_id(session, inst.datastore_version_id)
    kind = names.kind_of(version.manager)
    before = overrides_of(session, inst)
    if attach:
        if inst.configuration_id and inst.configuration_id != configuration_id:
            raise BadRequest(
                f"Instance {inst.id} already has a Configuration Group attached: {inst.configuration_id}."
            )
        assert configuration_id is not None
        config = _row(session, project_id, configuration_id)
        _same_version(config, inst.datastore_version_id)
        after = config_rules.validate(kind, _values(session, config.id))
    elif configuration_id is None:
        if inst.configuration_id is None:
            return None  # nothing attached: nothing to do
        after = {}
    else:  # re-applying an edited group
        after = config_rules.validate(kind, _values(session, configuration_id))
    change = Change(target, after, _restart_keys(kind, before, after), inst.configuration_id, Task(inst.task_id))
    inst.configuration_id = configuration_id
    inst.task_id = Task.UPDATING
    inst.task_description = "Applying the configuration group."
    inst.task_start_time = utcnow()
    return change


def _settle(session: Session, change: Change, applied: g.ConfigurationApplied | None, error: Exception | None) -> None:
    inst = session.execute(
        select(Instance).where(Instance.id == change.target.instance_id).with_for_update()
    ).scalar_one_or_none()
    if inst is None or inst.deleted or inst.task_id != Task.UPDATING:
        return  # reset or deleted meanwhile: whoever did that owns the instance now
    if isinstance(error, BadRequest):  # the server refused a value and changed nothing
        inst.configuration_id = change.previous_configuration
        restart = change.previous_task == Task.RESTART_REQUIRED
    elif error is not None:
        restart = True
        session.add(InstanceFault(
            instance_id=inst.id,
            message=f"The configuration could not be applied to the running server ({error}); "
                    "restart the instance to apply it."[:255],
        ))
    else:
        assert applied is not None
        restart = bool(applied.pending_restart) or change.previous_task == Task.RESTART_REQUIRED
    task = Task.RESTART_REQUIRED if restart else Task.NONE
    inst.task_id = task
    inst.task_description = task.description


def change_instance(transaction: Transaction, guest: Guest, project_id: str, instance_id: str,
                    configuration_id: str | None, *, attach: bool) -> None:
    """Attach (`attach=True`), detach (`configuration_id=None`) or re-apply a group."""
    with transaction() as session:
        change = _claim(session, project_id, instance_id, configuration_id, attach=attach)
    if change is None:
        return
    command = g.UpdateOverridesRequested(instance_id=instance_id, overrides=change.overrides,
                                         restart_required=change.restart_required)
    applied: g.ConfigurationApplied | None = None
    error: Exception | None = None
    try:
        reply = accounts.call(guest, change.target, command, g.ConfigurationApplied)
        assert isinstance(reply, g.ConfigurationApplied)
        applied = reply
    except DomainError as exc:
        error = exc
    with transaction() as session:
        _settle(session, change, applied, error)
    if isinstance(error, BadRequest):
        raise BadRequest(f"The datastore refused the configuration: {error}")


def reapply(transaction: Transaction, guest: Guest, project_id: str, config_id: str, instance_ids: list[str]) -> None:
    """After an edit: each attached instance gets the new values now if its server runs;
    one that does not converges at its next start or restart (they carry the values)."""
    for instance_id in instance_ids:
        try:
            change_instance(transaction, guest, project_id, instance_id, config_id, attach=False)
        except (UnprocessableEntity, NotFound) as exc:
            log.info("configuration %s not applied live to %s: %s", config_id, instance_id, exc)


def recover_interrupted(session: Session, now: dt.datetime | None = None) -> int:
    """Instances a dying function left in UPDATING: RESTART_REQUIRED (a restart pushes the
    group's values, so the server and the database agree again)."""
    cutoff = (now or utcnow()) - UPDATING_STALE_AFTER
    stuck = list(session.execute(
        select(Instance).where(Instance.task_id == Task.UPDATING, Instance.deleted.is_(False),
                               Instance.task_start_time < cutoff).with_for_update(skip_locked=True)
    ).scalars())
    for inst in stuck:
        inst.task_id = Task.RESTART_REQUIRED
        inst.task_description = Task.RESTART_REQUIRED.description
        session.add(InstanceFault(instance_id=inst.id, message="A configuration change was interrupted; "
                                  "restart the instance to apply the configuration group."))
    return len(stuck)


# ---- views -------------------------------------------------------------------------------


def view(group: Group) -> dict[str, Any]:
    c = group.config
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "values": group.values,
        "created": _time(c.created),
        "updated": _time(c.updated),
        "instance_count": group.instance_count,
        "datastore_name": group.datastore.name,
        "datastore_version_id": group.version.id,
        "datastore_version_name": group.version.name,
        "datastore_version_number": group.version.version,
    }


def list_view(group: Group) -> dict[str, Any]:
    c = group.config
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "created": _time(c.created),
        "updated": _time(c.updated),
        "datastore_name": group.datastore.name,
        "datastore_version_id": group.version.id,
        "datastore_version_name": group.version.name,
        "datastore_version_number": group.version.version,
    }


def instance_link(config: Configuration, base_url: str, project_id: str) -> dict[str, Any]:
    return {"id": config.id, "name": config.name, "links": links(base_url, project_id, "configurations", config.id)}


def _time(value: dt.datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


# ---- the parameter catalog -----------------------------------------------------------------


def parameters(session: Session, datastore: str | None, version: str) -> tuple[DatastoreVersion, list[config_rules.Parameter]]:
    v = _version(session, datastore, version)
    return v, config_rules.catalog(names.kind_of(v.manager))


def parameter(session: Session, datastore: str | None, version: str, name: str) -> tuple[DatastoreVersion, config_rules.Parameter]:
    v = _version(session, datastore, version)
    found = config_rules.load(names.kind_of(v.manager)).find(name)
    if found is None:
        raise NotFound(f"Configuration parameter {name} could not be found.", resource="parameter", id=name)
    return v, found


def _version(session: Session, datastore: str | None, version: str) -> DatastoreVersion:
    if datastore is None:
        return catalog.get_version_by_id(session, version)
    return catalog.get_version(session, catalog.get_datastore(session, datastore), version)
