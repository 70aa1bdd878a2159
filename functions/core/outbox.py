"""Transactional outbox: events written with a state change, published after commit."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from events.envelope import Message, from_json, to_json
from events.publisher import Publisher, PublishError
from functions.core.models.base import utcnow
from functions.core.models.platform import OutboxEvent

log = logging.getLogger("troveless.outbox")


# session.info key: ids of the rows this transaction enqueued, so the unit of work relays
# them right after commit wherever in the call tree they were written (a step, a hook).
PENDING_KEY = "troveless_outbox_ids"


def enqueue(session: Session, messages: Sequence[Message]) -> list[int]:
    rows = [OutboxEvent(event=to_json(m)) for m in messages]
    session.add_all(rows)
    session.flush()
    ids = [row.id for row in rows]
    session.info.setdefault(PENDING_KEY, []).extend(ids)
    return ids


def enqueued(session: Session) -> list[int]:
    """Ids of the rows enqueued in this session so far (rows of a rolled-back savepoint are
    simply not found by the relay)."""
    return list(session.info.get(PENDING_KEY, ()))


def relay(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    *,
    ids: Sequence[int] | None = None,
    older_than_s: float = 0.0,
    limit: int = 200,
) -> int:
    """Publish outbox rows (given ids, or every row older than `older_than_s`); returns the
    number published. Rows are deleted one by one after the broker accepted them, so a crash
    re-publishes at most the event in flight (consumers dedupe on source and id)."""
    with sessions() as session:
        query = select(OutboxEvent.id, OutboxEvent.event).order_by(OutboxEvent.id).limit(limit)
        if ids is not None:
            query = query.where(OutboxEvent.id.in_(ids))
        else:
            cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
            query = query.where(OutboxEvent.created_at <= cutoff)
        pending = session.execute(query).all()
    published = 0
    for row_id, text in pending:
        try:
            publisher.publish(from_json(text))
        except PublishError as exc:
            log.warning("outbox event %s not published yet: %s", row_id, exc)
            with sessions.begin() as session:
                session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id == row_id)
                    .values(attempts=OutboxEvent.attempts + 1, last_error=str(exc)[:2000])
                )
            continue
        with sessions.begin() as session:
            session.execute(delete(OutboxEvent).where(OutboxEvent.id == row_id))
        published += 1
    return published
