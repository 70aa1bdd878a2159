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
from events.guest import GuestHeartbeat, guest_source, instance_key
from events.replay import parse_sequence
from events.signing import Keyring, verify
from functions.core import inbox, provisioning
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.states import ServiceStatus as SS

log = logging.getLogger("troveless.conductor")

CONSUMER = "conductor"


def apply_heartbeat(session: Session, message: Message, heartbeat: GuestHeartbeat) -> list[Message]:
    """Returns the events to publish (a build or restart that this heartbeat completes)."""
    instance = session.get(Instance, heartbeat.instance_id)
    if instance is None or not instance.encrypted_key:
        raise PermanentEventError(f"heartbeat for unknown instance {heartbeat.instance_id}")
    if message.source != guest_source(instance.id) or (message.subject and message.subject != instance.id):
        raise AuthenticationError(f"{message.source} may not report for instance {instance.id}")
    verify(message, Keyring([instance_key(instance.id, bytes.fromhex(instance.encrypted_key))]))
    if inbox.claim(session, CONSUMER, message) is not None:
        return []
    try:
        sequence = parse_sequence(message.get("sequence"))
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc
    if sequence is None:
        raise ReplayError("heartbeats must carry a sequence")
    if instance.deleted:
        return []
    service = SS.from_guest(heartbeat.status)
    sent_at = parse_time(message.time or "").replace(tzinfo=None) if message.time else utcnow()
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
        )
    ).rowcount
    if not applied:
        log.info("stale heartbeat %s from %s (sequence %s) ignored", message.id, instance.id, sequence)
        return []
    row = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == instance.id)).scalar_one()
    return provisioning.resume_on_heartbeat(session, instance, row)
