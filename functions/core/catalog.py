"""The catalog: datastores, their versions and flavors; seeded from what is installed.

Flavors map onto the datastore's memory and connection settings (the guest sizes shared
buffers / buffer pool and max_connections from the flavor's RAM).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from functions.core.errors import BadRequest, NotFound
from functions.core.models.datastore import Datastore, DatastoreVersion, Flavor
from functions.core.views import links

# (id, name, RAM MB, vCPUs): small enough to run several on one machine.
DEFAULT_FLAVORS = (
    ("1", "d1.tiny", 512, 1),
    ("2", "d1.small", 1024, 1),
    ("3", "d1.medium", 2048, 2),
    ("4", "d1.large", 4096, 2),
)
# A client asking for `mysql` gets the MySQL-compatible server that is installed.
ALIASES = {"mysql": "mariadb", "postgres": "postgresql"}


def seed(session: Session, installed: Iterable[Any]) -> list[str]:
    """Idempotent: add missing datastores/versions for the installed servers, and the default
    flavors when there are none. Returns what was added, for the log."""
    added: list[str] = []
    for server in installed:
        ds = session.execute(select(Datastore).where(Datastore.name == server.datastore)).scalar_one_or_none()
        if ds is None:
            ds = Datastore(name=server.datastore)
            session.add(ds)
            session.flush()
            added.append(f"datastore {server.datastore}")
        version = session.execute(
            select(DatastoreVersion).where(
                DatastoreVersion.datastore_id == ds.id, DatastoreVersion.name == server.version
            )
        ).scalar_one_or_none()
        if version is None:
            version = DatastoreVersion(
                datastore_id=ds.id, name=server.version, version=server.version,
                manager=server.manager, active=True, image_tags="", packages="",
            )
            session.add(version)
            session.flush()
            added.append(f"{server.datastore} {server.version}")
        if ds.default_version_id is None:
            ds.default_version_id = version.id
    if session.execute(select(func.count()).select_from(Flavor)).scalar_one() == 0:
        for flavor_id, name, ram, vcpus in DEFAULT_FLAVORS:
            session.add(Flavor(id=flavor_id, name=name, ram=ram, vcpus=vcpus, disk=0))
        added.append(f"{len(DEFAULT_FLAVORS)} flavors")
    return added


def list_datastores(session: Session) -> list[tuple[Datastore, list[DatastoreVersion]]]:
    stores = list(session.execute(select(Datastore).order_by(Datastore.name)).scalars())
    versions = list(
        session.execute(
            select(DatastoreVersion).where(DatastoreVersion.active.is_(True)).order_by(DatastoreVersion.name)
        ).scalars()
    )
    return [(ds, [v for v in versions if v.datastore_id == ds.id]) for ds in stores]


def get_datastore(session: Session, id_or_name: str) -> Datastore:
    name = ALIASES.get(id_or_name, id_or_name)
    ds = session.get(Datastore, id_or_name) or session.execute(
        select(Datastore).where(Datastore.name.in_([id_or_name, name]))
        .order_by((Datastore.name == id_or_name).desc())
    ).scalars().first()
    if ds is None:
        raise NotFound(f"Datastore '{id_or_name}' cannot be found.", resource="datastore", id=id_or_name)
    return ds


def versions_of(session: Session, datastore: Datastore) -> list[DatastoreVersion]:
    return list(
        session.execute(
            select(DatastoreVersion)
            .where(DatastoreVersion.datastore_id == datastore.id, DatastoreVersion.active.is_(True))
            .order_by(DatastoreVersion.name)
        ).scalars()
    )


def get_version(session: Session, datastore: Datastore, id_or_name: str) -> DatastoreVersion:
    version = session.execute(
        select(DatastoreVersion).where(
            DatastoreVersion.datastore_id == datastore.id,
            (DatastoreVersion.id == id_or_name) | (DatastoreVersion.name == id_or_name),
        )
    ).scalars().first()
    if version is None:
        raise NotFound(
            f"Datastore version '{id_or_name}' cannot be found.", resource="datastore_version", id=id_or_name
        )
    return version


def get_version_by_id(session: Session, version_id: str) -> DatastoreVersion:
    version = session.get(DatastoreVersion, version_id)
    if version is None:
        raise NotFound(f"Datastore version '{version_id}' cannot be found.")
    return version


def by_version_id(session: Session, version_id: str) -> tuple[Datastore, DatastoreVersion]:
    version = get_version_by_id(session, version_id)
    datastore = session.get(Datastore, version.datastore_id)
    if datastore is None:
        raise NotFound(f"Datastore version '{version_id}' cannot be found.")
    if not version.active:
        raise BadRequest(f"Datastore version '{version.name}' is not active.")
    return datastore, version


def manager_of(session: Session, version_id: str | None) -> str | None:
    """The engine (manager) of a datastore version; None if unknown."""
    version = session.get(DatastoreVersion, version_id) if version_id else None
    return version.manager if version is not None else None


def resolve(
    session: Session, type_: str | None, version: str | None, version_number: str | None = None
) -> tuple[Datastore, DatastoreVersion]:
    """Trove's get_datastore_version: type, then version (name or id), then the default."""
    if not type_:
        stores = session.execute(select(Datastore).order_by(Datastore.name)).scalars().all()
        if len(stores) != 1:
            raise BadRequest("Please specify datastore. Default datastore cannot be found.")
        datastore = stores[0]
    else:
        datastore = get_datastore(session, type_)
    if version:
        chosen = get_version(session, datastore, version)
    elif version_number:
        chosen = get_version(session, datastore, version_number)
    elif datastore.default_version_id:
        chosen = get_version_by_id(session, datastore.default_version_id)
    else:
        raise BadRequest(f"Default version for datastore '{datastore.name}' not found.")
    if not chosen.active:
        raise BadRequest(f"Datastore version '{chosen.name}' is not active.")
    return datastore, chosen


# ---- views ---------------------------------------------------------------------------


def version_view(v: DatastoreVersion, base_url: str, project: str, *, with_datastore: bool = True,
                 admin: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": v.id,
        "name": v.name,
        "version": v.version,
        "links": links(base_url, project, "datastores/versions", v.id),
    }
    if with_datastore:
        view["datastore"] = v.datastore_id
    if admin:
        view.update(
            active=v.active,
            packages=v.packages or "",
            image=v.image_id,
            image_tags=[t for t in (v.image_tags or "").split(",") if t],
        )
    return view


def datastore_view(ds: Datastore, versions: list[DatastoreVersion], base_url: str, project: str,
                   admin: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": ds.id,
        "name": ds.name,
        "links": links(base_url, project, "datastores", ds.id),
        "versions": [version_view(v, base_url, project, with_datastore=False, admin=admin) for v in versions],
    }
    if ds.default_version_id:
        view["default_version"] = ds.default_version_id
    return view
