"""Dead letters: events the broker gave up on, kept for operators (`troveless dead-letters`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message, to_json
from functions.core import inbox, metrics
from functions.core.models.platform import DeadLetter

CONSUMER = "dead-letters"


def record(session: Session, message: Message) -> bool:
    """Store a dead-lettered event once (the sink itself may get it twice). True if new."""
    if inbox.claim(session, CONSUMER, message) is not None:
        metrics.mark_event("duplicate")
        return False
    session.add(
        DeadLetter(
            event_id=message.id,
            event_source=message.source,
            event_type=message.type,
            subject=message.subject,
            error_dest=message.get("knativeerrordest"),
            error_code=message.get("knativeerrorcode"),
            error_data=message.get("knativeerrordata"),
            event=to_json(message),
        )
    )
    return True


def recent(session: Session, limit: int = 50) -> list[DeadLetter]:
    return list(session.execute(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)).scalars())
