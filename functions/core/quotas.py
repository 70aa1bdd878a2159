"""Per-project quotas (Trove's instances, ram, volumes, backups), reserved atomically.

What a project uses is kept twice, always moved together in the transaction that creates,
resizes or deletes the owning row:

- `quota_usages.in_use`: the project's counter, moved by ONE conditional UPDATE
  (`SET in_use = in_use + d WHERE ... AND (limit < 0 OR in_use + reserved + d <= limit)`),
  so concurrent creates cannot overshoot (Trove checks, then writes, and can); the row is
  created on first use by an INSERT .. ON CONFLICT DO NOTHING that tolerates a concurrent one;
- `quota_holds`: one row per (owner, resource) saying how much that instance or backup
  takes. Releasing deletes the owner's rows and gives back what the DELETE returned, so a
  retried step, a duplicate event or two racing deletes release once and never drift.

`reserved` stays 0: a reservation commits with the row that owns it (Trove's two-phase
reserve/commit exists because its API call and its database writes are not one transaction).

When things are released:
- instance delete: when the teardown workflow marks the row deleted (`finish_delete`),
  not when DELETE is accepted as Trove does: until then the server and volume still exist,
  and a teardown that fails leaves the instance (and what it holds) in place;
- a build that fails and is compensated cleanly: its server, volume and address are gone,
  so it holds nothing; the ERROR row stays to show the fault and deletes for free;
- resize: a larger flavor or volume is reserved when the resize is accepted, a smaller
  flavor given back when it finishes; a failed resize returns to what the instance records;
- backups: +1 on create, -1 when the row is deleted (by the user, a parent's delete, or
  retention). A FAILED backup counts until deleted, as in Trove.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from functions.core.errors import BadRequest, NotFound, OverLimit
from functions.core.models.base import new_id, utcnow
from functions.core.models.datastore import Flavor
from functions.core.models.instance import Instance
from functions.core.models.quota import Quota, QuotaHold, QuotaUsage
from functions.core.schemas.quotas import INT_MAX

RESOURCES = ("instances", "ram", "volumes", "backups")

_USAGE = QuotaUsage.__table__
_HOLD = QuotaHold.__table__


def default_limits() -> dict[str, int]:
    """The settings' defaults (TROVELESS_MAX_*_PER_TENANT)."""
    from functions.runtime import runtime

    s = runtime().settings.limits
    return {"instances": s.max_instances, "ram": s.max_ram_mb, "volumes": s.max_volumes_gb, "backups": s.max_backups}


def limits(session: Session, project_id: str, defaults: Mapping[str, int] | None = None) -> dict[str, int]:
    """The effective limit of each resource: the project's override, else the default."""
    out = dict(defaults if defaults is not None else default_limits())
    for resource, hard_limit in session.execute(
        select(Quota.resource, Quota.hard_limit).where(Quota.tenant_id == project_id)
    ):
        if resource in out:
            out[resource] = hard_limit
    return out


def exceeded(resources: list[str]) -> OverLimit:
    return OverLimit(f"Quota exceeded for resources: {sorted(resources)}.")


# ---- moving the counters ------------------------------------------------------------------


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _move(session: Session, project_id: str, resource: str, delta: int, limit: int) -> bool:
    """Add `delta` to the project's usage in one statement; a positive delta only while it
    stays within `limit` (-1: no limit). False when the limit refused it."""
    new = _USAGE.c.in_use + delta
    stmt = (
        update(_USAGE)
        .where(_USAGE.c.tenant_id == project_id, _USAGE.c.resource == resource)
        .values(in_use=case((new < 0, 0), else_=new), updated=utcnow())
    )
    if delta > 0 and limit >= 0:
        stmt = stmt.where(_USAGE.c.in_use + _USAGE.c.reserved + delta <= limit)
    if session.execute(stmt).rowcount:
        return True
    # No row yet (first use), or the limit refused: create the row if missing (a concurrent
    # creator wins harmlessly), then try once more; a second refusal is the limit's.
    now = utcnow()
    session.execute(
        _insert(session)(_USAGE)
        .values(id=new_id(), tenant_id=project_id, resource=resource, in_use=0, reserved=0, created=now, updated=now)
        .on_conflict_do_nothing(index_elements=["tenant_id", "resource"])
    )
    return bool(session.execute(stmt).rowcount)


def hold(session: Session, project_id: str, owner_type: str, owner_id: str, amounts: Mapping[str, int]) -> None:
    """Take `amounts` for a new owner, all or nothing: 413 naming every resource over its
    limit. Resources are moved in one fixed order, so concurrent holders never deadlock."""
    limit = limits(session, project_id)
    taken: list[tuple[str, int]] = []
    over: list[str] = []
    for resource in sorted(amounts):
        amount = amounts[resource]
        if amount and not _move(session, project_id, resource, amount, limit[resource]):
            over.append(resource)
        elif amount:
            taken.append((resource, amount))
    if over:
        # Give back what was taken, so the counters are right even if a caller commits.
        for resource, amount in taken:
            _move(session, project_id, resource, -amount, -1)
        raise exceeded(over)
    now = utcnow()
    session.execute(
        _HOLD.insert(),
        [{"owner_id": owner_id, "resource": r, "owner_type": owner_type, "tenant_id": project_id,
          "amount": a, "created": now, "updated": now} for r, a in sorted(amounts.items())],
    )


def set_held(session: Session, owner_id: str, amounts: Mapping[str, int], *, enforce: bool) -> None:
    """Change what an owner holds to `amounts` (a resize). Increases respect the limit when
    `enforce` (413 otherwise); setting what is already held changes nothing, so a retried
    step is harmless. An owner holding nothing (released, or older than quotas) is left alone."""
    rows = session.execute(
        select(_HOLD.c.resource, _HOLD.c.tenant_id, _HOLD.c.amount)
        .where(_HOLD.c.owner_id == owner_id, _HOLD.c.resource.in_(list(amounts)))
        .order_by(_HOLD.c.resource)
        .with_for_update()
    ).all()
    if not rows:
        return
    tenant_id = rows[0].tenant_id
    limit = limits(session, tenant_id) if enforce else {}
    moved: list[tuple[str, int]] = []
    over = []
    for resource, _tenant, amount in rows:
        delta = amounts[resource] - amount
        if delta and _move(session, tenant_id, resource, delta, limit.get(resource, -1)):
            moved.append((resource, delta))
        elif delta:
            over.append(resource)
    if over:
        for resource, delta in moved:
            _move(session, tenant_id, resource, -delta, -1)
        raise exceeded(over)
    for resource, _delta in moved:
        session.execute(
            update(_HOLD)
            .where(_HOLD.c.owner_id == owner_id, _HOLD.c.resource == resource)
            .values(amount=amounts[resource], updated=utcnow())
        )


def release(session: Session, owner_id: str) -> dict[str, int]:
    """Give back everything the owner holds, once: the DELETE decides who releases."""
    rows = session.execute(
        delete(_HOLD).where(_HOLD.c.owner_id == owner_id).returning(_HOLD.c.tenant_id, _HOLD.c.resource, _HOLD.c.amount)
    ).all()
    released = {}
    for tenant_id, resource, amount in sorted(rows, key=lambda r: r.resource):
        if amount:
            _move(session, tenant_id, resource, -amount, -1)
        released[resource] = amount
    return released


def of_instance(session: Session, inst: Instance) -> dict[str, int]:
    """What an instance takes, by what its row records (its flavor's RAM, its volume size)."""
    flavor = session.get(Flavor, inst.flavor_id) if inst.flavor_id else None
    return {"instances": 1, "ram": flavor.ram if flavor else 0, "volumes": inst.volume_size or 0}


def held(session: Session, owner_id: str) -> dict[str, int]:
    return dict(session.execute(select(_HOLD.c.resource, _HOLD.c.amount).where(_HOLD.c.owner_id == owner_id)).all())


# ---- the quota API (Trove's mgmt quotas) ---------------------------------------------------


def usage_view(session: Session, project_id: str) -> dict[str, Any]:
    limit = limits(session, project_id)
    used = {
        row.resource: row
        for row in session.execute(
            select(QuotaUsage.resource, QuotaUsage.in_use, QuotaUsage.reserved).where(QuotaUsage.tenant_id == project_id)
        )
    }
    return {
        "quotas": [
            {
                "resource": r,
                "in_use": used[r].in_use if r in used else 0,
                "reserved": used[r].reserved if r in used else 0,
                "limit": limit[r],
            }
            for r in RESOURCES
        ]
    }


def update_limits(session: Session, project_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Trove's quota update: `{"resource": limit}`; -1 = unlimited, a limit below -1 is a
    400, an unknown resource a 404, a null value is skipped. Upserted: concurrent updates of
    one resource leave one row, the last writer's."""
    unknown = sorted(r for r in body if r not in RESOURCES)
    if unknown:
        raise NotFound(f"Unknown quota resources {unknown}.", resource="quota")
    values: dict[str, int] = {}
    for resource, value in body.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value > INT_MAX:
            raise BadRequest(f"Validation error: quotas['{resource}']: the limit must be an integer up to {INT_MAX}.")
        if value < -1:
            raise BadRequest(
                f"Validation error: quotas['{resource}']: {value} is less than the minimum of -1 (-1 is unlimited)."
            )
        values[resource] = value
    now = utcnow()
    for resource in sorted(values):
        stmt = _insert(session)(Quota.__table__).values(
            id=new_id(), tenant_id=project_id, resource=resource, hard_limit=values[resource], created=now, updated=now
        )
        session.execute(stmt.on_conflict_do_update(
            index_elements=["tenant_id", "resource"],
            set_={"hard_limit": stmt.excluded.hard_limit, "updated": stmt.excluded.updated},
        ))
    return {"quotas": values}
