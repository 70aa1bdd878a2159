"""Absolute limits per project (Trove's quota defaults; per-project overrides from `quotas`).

Rate limits are not enforced yet, so `GET /limits` reports only the ABSOLUTE entry."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from functions.core.models.quota import Quota

# Trove's defaults: max_instances_per_tenant, max_ram_per_tenant, max_volumes_per_tenant,
# max_backups_per_tenant.
DEFAULTS = {"instances": 10, "ram": -1, "volumes": 40, "backups": 50}


def absolute(session: Session, project_id: str) -> dict[str, int]:
    limits = dict(DEFAULTS)
    for resource, hard_limit in session.execute(
        select(Quota.resource, Quota.hard_limit).where(Quota.tenant_id == project_id)
    ):
        if resource in limits:
            limits[resource] = hard_limit
    return limits


def view(limits: dict[str, int]) -> dict[str, object]:
    return {
        "limits": [
            {
                "verb": "ABSOLUTE",
                "max_instances": limits["instances"],
                "max_ram": limits["ram"],
                "max_volumes": limits["volumes"],
                "max_backups": limits["backups"],
            }
        ]
    }
