"""Why an event was refused. Permanent failures must not be retried by the broker."""

from __future__ import annotations


class EventError(Exception):
    """Base class of every event problem."""


class PermanentEventError(EventError):
    """Redelivering the same event can never succeed (bad envelope, unknown type, bad data)."""


class InvalidCloudEvent(PermanentEventError):
    """The HTTP request does not carry a valid CloudEvent."""


class UnknownEventType(PermanentEventError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class InvalidEventData(PermanentEventError):
    """The event's data does not match the model registered for its type."""


class AuthenticationError(PermanentEventError):
    """Missing or wrong signature, unknown key, or a key used outside its scope."""


class ReplayError(PermanentEventError):
    """The event is outside the accepted time window or repeats an old sequence."""
