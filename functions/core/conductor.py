"""The conductor: applies what guests report to the shared database.

A guest can only speak for its own instance: its heartbeat must come from
`/troveless/guest/<id>` and carry a valid signature by that instance's key. Delivery is at
least once and in any order: duplicates are caught by the inbox, older or replayed events by
a guarded update (`WHERE last_sequence < :sequence`), so they change nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from events.envelope import Message, parse_time
from events.errors import AuthenticationError, PermanentEventError, ReplayError
from events.guest import (
    GuestBackupFinished,
    GuestBackupProgress,
    GuestHeartbeat,
    guest_source,
    instance_key,
)
from events.replay import parse_sequence
from events.signing import Keyring, verify
from functions.core import backup_flow, inbox, metrics, provisioning
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.states import ServiceStatus as SS

log = logging.getLogger("troveless.conductor")

CONSUMER = "conductor"


def _authenticate(session: Session, message: Message, instance_id: str) -> tuple[Instance, int] | None:
    """Check the event speaks for its own instance with that instance's key, claim it in
    the inbox, and return the instance and the event's sequence; None for a duplicate."""
    instance = session.get(Instance, instance_id)
    if instance is None or not instance.encrypted_key:
        raise PermanentEventError(f"event for unknown instance {instance_id}")
    if message.source != guest_source(instance.id) or (message.subject and message.subject != instance.id):
        raise AuthenticationError(f"{message.source} may not report for instance {instance.id}")
    verify(message, Keyring([instance_key(instance.id, bytes.fromhex(instance.encrypted_key))]))
    if inbox.claim(session, CONSUMER, message) is not None:
        metrics.mark_event("duplicate")
        return None
    try:
        sequence = parse_sequence(message.get("sequence"))
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc
    if sequence is None:
        raise ReplayError("guest events must carry a sequence")
    return instance, sequence


def _sent_at(message: Message):  # type: ignore[no-untyped-def]
    return parse_time(message.time or "").replace(tzinfo=None) if message.time else utcnow()


def apply_heartbeat(session: Session, message: Message, heartbeat: GuestHeartbeat) -> list[Message]:
    """Returns the events to publish (a build or restart that this heartbeat completes)."""
    found = _authenticate(session, message, heartbeat.instance_id)
    if found is None:
        return []
    instance, sequence = found
    if instance.deleted:
        metrics.mark_event("stale")
        return []
    service = SS.from_guest(heartbeat.status)
    sent_at = _sent_at(message)
    applied = session.execute(
        update(ServiceStatus)
        .where(ServiceStatus.instance_id == instance.id, ServiceStatus.last_sequence < sequence)
        .values(
            status_id=service.code,
            status_description=service.description,
            last_sequence=sequence,
            heartbeat_at=sent_at,
            updated_at=utcnow(),
            guest_detail=heartbeat.description or None,
            datastore_version=heartbeat.datastore_version,
            volume_used_bytes=heartbeat.volume_used_bytes,
            # The datastore's own figures, exported as metrics (functions/core/metrics.py).
            connections=heartbeat.connections,
            database_size_bytes=heartbeat.database_size_bytes,
        )
    ).rowcount
    if not applied:
        log.info("stale heartbeat %s from %s (sequence %s) ignored", message.id, instance.id, sequence)
        metrics.mark_event("stale")
        return []
    backup_flow.check_running_on_heartbeat(session, instance.id, heartbeat.backup_id, sent_at)
    row = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == instance.id)).scalar_one()
    return provisioning.resume_on_heartbeat(session, instance, row)


def apply_backup_progress(session: Session, message: Message, event: GuestBackupProgress) -> list[Message]:
    found = _authenticate(session, message, event.instance_id)
    if found is not None:
        backup_flow.apply_progress(session, found[0].id, event, found[1])
    return []


def apply_backup_finished(session: Session, message: Message, event: GuestBackupFinished) -> list[Message]:
    found = _authenticate(session, message, event.instance_id)
    if found is None:
        return []
    return backup_flow.apply_finished(session, found[0].id, event, found[1])
