"""API rate limits (Trove's http_*_rate), shared by every function instance.

Trove keeps a leaky bucket per project in each API worker's memory, so N workers allow N
times the limit. Here each limit is a fixed-window counter per (project, limit, window
start) in the shared database (`rate_limit_windows`), moved by one atomic UPSERT that only
counts a request while the window has room:

    INSERT ... VALUES (:project, :limit, :window, 1)
    ON CONFLICT (tenant_id, limit_key, window_start)
    DO UPDATE SET count = count + 1 WHERE count < :value RETURNING count

No row back means the window is full: 413 overLimit with Retry-After (seconds until the
window ends). A request matching two limits (POST on /mgmt: "POST *" and "POST */mgmt")
moves both in the same short transaction, and neither if either refuses. Windows that have
ended are deleted by the sweep schedule (`purge`). Requests are counted per project of the
caller's token, after authentication, whether or not the policy then allows them. A fixed
window lets a burst of up to twice the value straddle a window boundary; Trove's buckets
allow the value times the number of API workers.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from functions.core.errors import OverLimit
from functions.core.models.base import utcnow
from functions.core.models.quota import RateLimitWindow

if TYPE_CHECKING:
    from functions.settings import LimitSettings

UNITS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
UNIT = "MINUTE"  # Trove's, for every limit
_PREFIX = re.compile(r"^/v1\.0/[^/]+")
_EPOCH = dt.datetime(1970, 1, 1)
_TABLE = RateLimitWindow.__table__


@dataclass(frozen=True)
class Limit:
    verb: str
    uri: str
    regex: str
    value: int
    unit: str = UNIT

    @property
    def key(self) -> str:
        return f"{self.verb} {self.uri}"

    def matches(self, method: str, relative_path: str) -> bool:
        return method == self.verb and re.search(self.regex, relative_path) is not None

    def window(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """The fixed window `now` falls in: [start, end)."""
        seconds = UNITS[self.unit]
        elapsed = (now - _EPOCH).total_seconds()
        start = _EPOCH + dt.timedelta(seconds=elapsed - elapsed % seconds)
        return start, start + dt.timedelta(seconds=seconds)


def configured(settings: LimitSettings) -> list[Limit]:
    """Trove's DEFAULT_LIMITS, in its order; a value below 1 turns a limit off."""
    limits = [
        Limit("POST", "*", ".*", settings.http_post_rate),
        Limit("PUT", "*", ".*", settings.http_put_rate),
        Limit("DELETE", "*", ".*", settings.http_delete_rate),
        Limit("GET", "*", ".*", settings.http_get_rate),
        Limit("POST", "*/mgmt", "^/mgmt", settings.http_mgmt_post_rate),
    ]
    return [limit for limit in limits if limit.value > 0]


def _defaults(
    sessions: sessionmaker[Session] | None, limits: list[Limit] | None
) -> tuple[sessionmaker[Session], list[Limit]]:
    if sessions is not None and limits is not None:
        return sessions, limits
    from functions.runtime import runtime

    rt = runtime()
    return sessions or rt.sessions, configured(rt.settings.limits) if limits is None else limits


def hit(
    project_id: str,
    method: str,
    path: str,
    *,
    now: dt.datetime | None = None,
    sessions: sessionmaker[Session] | None = None,
    limits: list[Limit] | None = None,
) -> None:
    """Count one request of `project_id` to `path` (/v1.0/{project}/...); 413 (OverLimit
    with retry_after_s) when a limit it falls under is used up in this window. At most one
    short transaction; none when no limit applies."""
    sessions, limits = _defaults(sessions, limits)
    relative = _PREFIX.sub("", path)
    matching = [limit for limit in limits if limit.matches(method, relative)]
    if not matching:
        return
    now = now or utcnow()
    with sessions() as session, session.begin():
        refused = []
        for limit in matching:
            start, end = limit.window(now)
            if _count(session, project_id, limit, start) is None:
                refused.append((end, limit))
        if refused:  # raised inside the transaction: it rolls back, so none is counted
            end, limit = max(refused, key=lambda r: r[0])
            raise OverLimit(
                f"This request was rate-limited. Only {limit.value} {limit.verb} request(s) can be made "
                f"to {limit.uri} every {limit.unit.lower()}.",
                retry_after_s=max(1, math.ceil((end - now).total_seconds())),
            )


def _count(session: Session, project_id: str, limit: Limit, start: dt.datetime) -> int | None:
    """The window's new count, or None when it is full (nothing changed then)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_TABLE).values(tenant_id=project_id, limit_key=limit.key, window_start=start, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "limit_key", "window_start"],
        set_={"count": _TABLE.c.count + 1},
        where=_TABLE.c.count < limit.value,
    ).returning(_TABLE.c.count)
    return session.execute(stmt).scalar_one_or_none()


def view(
    project_id: str,
    *,
    now: dt.datetime | None = None,
    sessions: sessionmaker[Session] | None = None,
    limits: list[Limit] | None = None,
) -> list[dict[str, Any]]:
    """Trove's rate-limit entries of `GET /limits`, with what is left of this window."""
    sessions, limits = _defaults(sessions, limits)
    if not limits:
        return []
    now = now or utcnow()
    windows = {limit.key: limit.window(now) for limit in limits}
    with sessions() as session:
        used = {
            (key, start): count
            for key, start, count in session.execute(
                select(_TABLE.c.limit_key, _TABLE.c.window_start, _TABLE.c.count).where(
                    _TABLE.c.tenant_id == project_id,
                    _TABLE.c.limit_key.in_(list(windows)),
                    _TABLE.c.window_start.in_(sorted({start for start, _ in windows.values()})),
                )
            )
        }
    out = []
    for limit in limits:
        start, end = windows[limit.key]
        remaining = max(0, limit.value - used.get((limit.key, start), 0))
        out.append({
            "verb": limit.verb,
            "uri": limit.uri,
            "regex": limit.regex,
            "value": limit.value,
            "unit": limit.unit,
            "remaining": remaining,
            "nextAvailable": _zulu(now if remaining else end),
        })
    return out


def _zulu(value: dt.datetime) -> str:
    """Trove's rate-limit times carry a trailing Z (its only datetimes that do)."""
    return value.replace(microsecond=0).isoformat() + "Z"


def purge(session: Session, now: dt.datetime | None = None) -> int:
    """Delete the windows that have ended (the sweep schedule calls this)."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=UNITS[UNIT])
    return session.execute(delete(_TABLE).where(_TABLE.c.window_start <= cutoff)).rowcount
