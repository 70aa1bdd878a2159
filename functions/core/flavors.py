"""Flavors: our own catalog (there is no Nova locally), shown in Nova's shape as Trove does."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from functions.core.errors import NotFound
from functions.core.models.datastore import Flavor
from functions.core.views import links


def _numeric_id(flavor_id: str) -> int | None:
    """Trove shows an int `id` only for numeric ids without a leading zero."""
    if flavor_id.isdigit() and (flavor_id == "0" or not flavor_id.startswith("0")):
        return int(flavor_id)
    return None


def view(flavor: Flavor, base_url: str, project_id: str) -> dict[str, Any]:
    return {
        "id": _numeric_id(flavor.id),
        "str_id": flavor.id,
        "name": flavor.name,
        "ram": flavor.ram,
        "vcpus": flavor.vcpus,
        "disk": flavor.disk,
        "ephemeral": flavor.ephemeral,
        "links": links(base_url, project_id, "flavors", flavor.id),
    }


def list_flavors(session: Session) -> list[Flavor]:
    query = select(Flavor).where(Flavor.deleted.is_(False), Flavor.is_public.is_(True))
    return list(session.execute(query.order_by(Flavor.ram, Flavor.id)).scalars())


def get_flavor(session: Session, flavor_id: str) -> Flavor:
    flavor = session.get(Flavor, flavor_id)
    if flavor is None or flavor.deleted:
        raise NotFound(f"Resource Flavor {flavor_id} could not be found.", resource="flavor", id=flavor_id)
    return flavor
