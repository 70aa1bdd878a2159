"""Backup use cases behind the API: create, list, show, delete, strategies, restore chains.

A backup row is created NEW and handed to the `backup` workflow (functions/core/backup_flow.py):
the guest streams the datastore's own backup tool into the object store and reports
progress and the result through the conductor. Deleting soft-deletes the rows at once (so
nothing can restore from them any more) and leaves removing the objects to a workflow.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from events.envelope import Message
from functions.core import guards, quotas
from functions.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NotImplementedFeature,
    UnprocessableEntity,
)
from functions.core.models.backup import Backup, BackupStrategy
from functions.core.models.base import utcnow
from functions.core.models.datastore import Datastore, DatastoreVersion
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.ports import BackupStorage
from functions.core.schemas.backups import BackupCreate, BackupStrategyCreate
from functions.core.views import PAGE_SIZE, links

DONE = ("COMPLETED", "RESTORED")
RUNNING = guards.RUNNING_BACKUP_STATES
# Trove's running_backups_expires: a "running" backup this old is presumed dead.
RUNNING_EXPIRES = dt.timedelta(days=3)
GB = 1024**3

# Object names: the backup id plus what the stream is (tool format, then compression).
EXTENSIONS = {"postgresql": ".tar.zst", "mariadb": ".xbstream.zst"}


def _trove_time(value: dt.datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


def _version_of(session: Session, version_id: str | None) -> tuple[DatastoreVersion, Datastore] | None:
    if not version_id:
        return None
    found = session.execute(
        select(DatastoreVersion, Datastore)
        .join(Datastore, Datastore.id == DatastoreVersion.datastore_id)
        .where(DatastoreVersion.id == version_id)
    ).first()
    return (found[0], found[1]) if found else None


def view(session: Session, b: Backup, base_url: str) -> dict[str, Any]:
    """Trove's backup view, plus what we know that Trove does not (checksum, progress)."""
    ds = _version_of(session, b.datastore_version_id)
    body: dict[str, Any] = {
        "id": b.id,
        "name": b.name,
        "description": b.description,
        "locationRef": b.location,
        "instance_id": b.instance_id,
        "created": _trove_time(b.created),
        "updated": _trove_time(b.updated),
        "size": b.size,
        "status": b.state,
        "parent_id": b.parent_id,
        "project_id": b.tenant_id,
        "datastore": (
            {"type": ds[1].name, "version": ds[0].name, "version_id": ds[0].id} if ds else None
        ),
        # Ours:
        "backup_type": b.backup_type,
        "checksum": {"sha256": b.checksum} if b.checksum else None,
        "object_size": b.object_size,
        "bytes_done": b.bytes_done,
        "links": links(base_url, b.tenant_id, "backups", b.id),
    }
    if b.schedule_id:
        body["schedule_id"] = b.schedule_id
    if b.state in ("FAILED", "DELETE_FAILED") and b.fail_reason:
        body["fail_reason"] = b.fail_reason
    return body


# ---- lookups ------------------------------------------------------------------------------


def get(session: Session, project_id: str, backup_id: str, *, lock: bool = False) -> Backup:
    query = select(Backup).where(Backup.id == backup_id, Backup.tenant_id == project_id, Backup.deleted.is_(False))
    if lock:
        query = query.with_for_update()
    found = session.execute(query).scalar_one_or_none()
    if found is None:
        raise NotFound(f"Backup {backup_id} could not be found.", resource="backup", id=backup_id)
    return found


def list_page(
    session: Session,
    project_id: str,
    *,
    instance_id: str | None = None,
    datastore: str | None = None,
    limit: str | None = None,
    marker: str | None = None,
) -> tuple[list[Backup], str | None]:
    """Newest first. Trove pages backups with `limit or page_size` and no cap; the marker is
    the last id of the previous page (keyset on created, id: stable while rows update)."""
    size = _limit(limit)
    query = select(Backup).where(Backup.tenant_id == project_id, Backup.deleted.is_(False))
    if instance_id:
        query = query.where(Backup.instance_id == instance_id)
    if datastore:
        query = query.where(
            Backup.datastore_version_id.in_(
                select(DatastoreVersion.id)
                .join(Datastore, Datastore.id == DatastoreVersion.datastore_id)
                .where(or_(Datastore.name == datastore, Datastore.id == datastore))
            )
        )
    if marker:
        last = session.execute(
            select(Backup.created, Backup.id).where(Backup.id == marker, Backup.tenant_id == project_id)
        ).first()
        if last is None:
            raise BadRequest(f"Invalid marker {marker!r}.")
        query = query.where(or_(Backup.created < last[0], (Backup.created == last[0]) & (Backup.id < last[1])))
    rows = list(session.execute(query.order_by(Backup.created.desc(), Backup.id.desc()).limit(size + 1)).scalars())
    next_marker = rows[size - 1].id if len(rows) > size else None
    return rows[:size], next_marker


def _limit(limit: str | None) -> int:
    if limit in (None, ""):
        return PAGE_SIZE
    try:
        value = int(limit)  # type: ignore[arg-type]
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {limit!r}") from None
    if value < 1:
        raise BadRequest("limit must be at least 1")
    return min(value, 1000)


def _instance(session: Session, project_id: str, instance_id: str, *, lock: bool = True) -> Instance:
    query = select(Instance).where(
        Instance.id == instance_id, Instance.tenant_id == project_id, Instance.deleted.is_(False)
    )
    if lock:
        query = query.with_for_update()
    inst = session.execute(query).scalar_one_or_none()
    if inst is None:
        raise NotFound(f"Instance {instance_id} could not be found.", resource="instance", id=instance_id)
    return inst


def instance_kind(session: Session, inst: Instance) -> str:
    found = _version_of(session, inst.datastore_version_id)
    if found is None:
        raise UnprocessableEntity(f"Instance {inst.id} has no datastore version.")
    return "postgresql" if found[0].manager == "postgresql" else "mariadb"


# ---- create -------------------------------------------------------------------------------


def create(
    session: Session,
    project_id: str,
    body: BackupCreate,
    storage: BackupStorage,
    default_container: str,
    *,
    schedule_id: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Backup, list[Message]]:
    from functions.core.backup_flow import BACKUP

    now = now or utcnow()
    if body.restore_from is not None:
        raise NotImplementedFeature("Importing a backup from another location (restore_from) is not supported yet.")
    if not body.instance:
        raise BadRequest("Validation error: backup['instance'] is required.")
    if body.storage_driver not in (None, "swift", "s3", "file"):
        raise NotImplementedFeature(f"Storage driver '{body.storage_driver}' is not supported.")
    inst = _instance(session, project_id, body.instance)
    service = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == inst.id)).scalar_one_or_none()
    guards.can_perform_action(session, inst, service)
    kind = instance_kind(session, inst)

    parent = _parent(session, project_id, inst, body)
    if parent is not None and kind != "mariadb":
        raise NotImplementedFeature(
            f"Incremental backups are not supported for {kind} instances; create a full backup."
        )
    container = body.swift_container or _strategy_container(session, project_id, inst.id) or default_container
    try:
        storage.check_container(container)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

    backup = Backup(
        name=body.name,
        description=body.description,
        tenant_id=project_id,
        instance_id=inst.id,
        state="NEW",
        backup_type="incremental" if parent is not None else "full",
        parent_id=parent.id if parent is not None else None,
        datastore_version_id=inst.datastore_version_id,
        schedule_id=schedule_id,
        created=now,
        updated=now,
    )
    session.add(backup)
    session.flush()
    backup.location = storage.location(container, backup.id + EXTENSIONS[kind])
    quotas.hold(session, project_id, "backup", backup.id, {"backups": 1})
    _, first = BACKUP.start(session, resource_id=backup.id, context={"instance_id": inst.id}, now=now)
    return backup, [first]


def _parent(session: Session, project_id: str, inst: Instance, body: BackupCreate) -> Backup | None:
    """Trove: parent_id names the parent; incremental without one takes the instance's last
    completed backup; incremental with no completed backup at all is a full backup."""
    if body.parent_id:
        parent = session.execute(
            select(Backup).where(Backup.id == body.parent_id, Backup.tenant_id == project_id, Backup.deleted.is_(False))
        ).scalar_one_or_none()
        if parent is None:
            raise NotFound(f"Backup {body.parent_id} could not be found.", resource="backup", id=body.parent_id)
        if parent.instance_id != inst.id:
            raise BadRequest(f"Backup {parent.id} is not a backup of instance {inst.id}.")
        if parent.state not in DONE:
            raise UnprocessableEntity(f"Backup {parent.id} is {parent.state}: only a completed backup can be a parent.")
        return parent
    if not body.incremental:
        return None
    return session.execute(
        select(Backup)
        .where(
            Backup.instance_id == inst.id,
            Backup.tenant_id == project_id,
            Backup.state.in_(DONE),
            Backup.deleted.is_(False),
        )
        .order_by(Backup.created.desc(), Backup.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _strategy_container(session: Session, project_id: str, instance_id: str) -> str | None:
    rows = session.execute(
        select(BackupStrategy).where(
            BackupStrategy.tenant_id == project_id, BackupStrategy.instance_id.in_((instance_id, ""))
        )
    ).scalars()
    by_scope = {row.instance_id: row.swift_container for row in rows}
    return by_scope.get(instance_id) or by_scope.get("")


# ---- delete -------------------------------------------------------------------------------


def subtree(session: Session, root: Backup) -> list[Backup]:
    """The backup and every incremental built on it, children before parents."""
    found = [root]
    frontier = [root.id]
    while frontier:
        children = list(
            session.execute(
                select(Backup).where(Backup.parent_id.in_(frontier), Backup.deleted.is_(False)).with_for_update()
            ).scalars()
        )
        found += children
        frontier = [c.id for c in children]
    return list(reversed(found))


def delete(session: Session, project_id: str, backup_id: str, *, now: dt.datetime | None = None) -> list[Message]:
    """Trove: children first (recursively), 422 while running unless the run is presumed
    dead. The rows are soft-deleted now; a workflow removes the objects."""
    backup = get(session, project_id, backup_id, lock=True)
    return delete_rows(session, subtree(session, backup), now=now)


def delete_rows(session: Session, rows: list[Backup], *, now: dt.datetime | None = None) -> list[Message]:
    from functions.core.backup_flow import DELETE

    now = now or utcnow()
    for b in rows:
        if b.state in RUNNING and now - (b.created or now) < RUNNING_EXPIRES:
            raise UnprocessableEntity(f"Backup {b.id} cannot be deleted while it is running ({b.state}).")
    locations = []
    for b in rows:
        b.deleted = True
        b.deleted_at = now
        quotas.release(session, b.id)
        if b.location:
            locations.append(b.location)
    if not rows:
        return []
    _, first = DELETE.start(
        session, resource_id=rows[-1].id, context={"backup_ids": [b.id for b in rows], "locations": locations}, now=now
    )
    return [first]


# ---- restore ------------------------------------------------------------------------------


def restore_chain(session: Session, project_id: str, backup_id: str) -> list[Backup]:
    """The backups a restore of `backup_id` needs, full first. Every one must be completed,
    not deleted, and have a checksum (we never restore what we cannot verify)."""
    chain: list[Backup] = []
    current: str | None = backup_id
    while current is not None:
        row = session.execute(
            select(Backup).where(Backup.id == current, Backup.tenant_id == project_id, Backup.deleted.is_(False))
        ).scalar_one_or_none()
        if row is None:
            if current == backup_id:
                raise NotFound(f"Backup {backup_id} could not be found.", resource="backup", id=backup_id)
            raise UnprocessableEntity(f"Backup {backup_id} depends on backup {current}, which no longer exists.")
        if row.state not in DONE:
            raise Conflict(f"Backup {row.id} is {row.state}: only a completed backup can be restored.")
        if not row.checksum or not row.location:
            raise Conflict(f"Backup {row.id} has no checksum or location: it cannot be verified on restore.")
        chain.append(row)
        if len(chain) > 1000:
            raise UnprocessableEntity(f"Backup {backup_id} has a parent cycle.")
        current = row.parent_id
    return list(reversed(chain))


def check_restore(chain: list[Backup], volume_size_gb: int, datastore_version_id: str, kind_of) -> None:  # type: ignore[no-untyped-def]
    """Trove's checks: the backup fits the volume (403 BackupTooLarge) and its datastore is
    the instance's."""
    latest = chain[-1]
    if latest.size is not None and latest.size > volume_size_gb:
        raise Forbidden(
            f"Backup is too large for given flavor or volume. Backup size: {latest.size} GBs. "
            f"Available size: {volume_size_gb} GBs."
        )
    if kind_of(latest.datastore_version_id) != kind_of(datastore_version_id):
        raise BadRequest("The backup's datastore does not match the instance's datastore.")


# ---- strategies ---------------------------------------------------------------------------


def strategy_view(row: BackupStrategy) -> dict[str, Any]:
    return {
        "project_id": row.tenant_id,
        "instance_id": row.instance_id,
        "backend": row.backend,
        "swift_container": row.swift_container,
    }


def create_strategy(
    session: Session, project_id: str, body: BackupStrategyCreate, storage: BackupStorage
) -> BackupStrategy:
    instance_id = body.instance_id or ""
    if instance_id:
        _instance(session, project_id, instance_id, lock=False)
    try:
        storage.check_container(body.swift_container)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    row = session.execute(
        select(BackupStrategy)
        .where(BackupStrategy.tenant_id == project_id, BackupStrategy.instance_id == instance_id)
        .with_for_update()
    ).scalar_one_or_none()
    if row is None:
        row = BackupStrategy(tenant_id=project_id, instance_id=instance_id, backend="swift")
        session.add(row)
    row.swift_container = body.swift_container
    session.flush()
    return row


def list_strategies(session: Session, project_id: str, instance_id: str | None) -> list[BackupStrategy]:
    query = select(BackupStrategy).where(BackupStrategy.tenant_id == project_id)
    if instance_id is not None:
        query = query.where(BackupStrategy.instance_id == instance_id)
    return list(session.execute(query.order_by(BackupStrategy.created)).scalars())


def delete_strategy(session: Session, project_id: str, instance_id: str | None) -> None:
    for row in session.execute(
        select(BackupStrategy).where(
            BackupStrategy.tenant_id == project_id, BackupStrategy.instance_id == (instance_id or "")
        )
    ).scalars():
        session.delete(row)
