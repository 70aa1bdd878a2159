"""Inbox: each consumer applies each (source, id) once and answers duplicates with the same reply."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from events.envelope import Message, from_json, to_json
from functions.core.models.platform import ProcessedEvent


@dataclass(frozen=True)
class Duplicate:
    reply: Message | None


def claim(session: Session, consumer: str, message: Message) -> Duplicate | None:
    """Insert the inbox row first; if it already exists the event is a duplicate.

    On PostgreSQL a concurrent delivery of the same event blocks on the unique key until the
    first transaction ends, then sees the row: so the check and the effect are atomic.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(ProcessedEvent)
        .values(consumer=consumer, source=message.source, event_id=message.id)
        .on_conflict_do_nothing()
        .returning(ProcessedEvent.event_id)
    )
    # RETURNING, not rowcount: drivers disagree on rowcount for INSERT .. ON CONFLICT.
    if session.execute(stmt).scalar_one_or_none() is not None:
        return None
    stored = session.execute(
        select(ProcessedEvent.reply).where(
            ProcessedEvent.consumer == consumer,
            ProcessedEvent.source == message.source,
            ProcessedEvent.event_id == message.id,
        )
    ).scalar_one()
    return Duplicate(from_json(stored) if stored else None)


def store_reply(session: Session, consumer: str, message: Message, reply: Message | None) -> None:
    if reply is None:
        return
    session.execute(
        update(ProcessedEvent)
        .where(
            ProcessedEvent.consumer == consumer,
            ProcessedEvent.source == message.source,
            ProcessedEvent.event_id == message.id,
        )
        .values(reply=to_json(reply))
    )
