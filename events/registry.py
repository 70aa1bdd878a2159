"""Maps a CloudEvent `type` to its payload model. An unknown type is a permanent failure."""

from __future__ import annotations

from events import guest, notifications
from events.base import Event
from events.envelope import Message
from events.errors import InvalidEventData, UnknownEventType
from events.schedule import ScheduleTick
from events.workflow import StepRequested

_EXACT: dict[str, type[Event]] = {}
_FAMILIES: dict[str, type[Event]] = {}


def register(model: type[Event]) -> type[Event]:
    """Register a model under its TYPE (or TYPE_PREFIX for families). Usable as a decorator."""
    if model.TYPE:
        existing = _EXACT.setdefault(model.TYPE, model)
        if existing is not model:
            raise ValueError(f"event type {model.TYPE!r} registered twice")
    elif model.TYPE_PREFIX:
        _FAMILIES[model.TYPE_PREFIX] = model
    else:
        raise ValueError(f"{model.__name__} has neither TYPE nor TYPE_PREFIX")
    return model


def model_for(event_type: str) -> type[Event]:
    if event_type in _EXACT:
        return _EXACT[event_type]
    for prefix, model in _FAMILIES.items():
        if event_type.startswith(prefix):
            return model
    raise UnknownEventType(event_type)


def parse(message: Message) -> Event:
    """Validate a message's data against the model registered for its type."""
    model = model_for(message.type)
    try:
        event = model.from_data(message.data)
    except ValueError as exc:
        raise InvalidEventData(f"{message.type}: {exc}") from exc
    if event.event_type() != message.type:
        raise InvalidEventData(f"data describes {event.event_type()!r}, not {message.type!r}")
    return event


def known_types() -> list[str]:
    return sorted(_EXACT)


def known_families() -> list[str]:
    return sorted(_FAMILIES)


for _model in (
    StepRequested,
    ScheduleTick,
    guest.PrepareRequested,
    guest.RestartRequested,
    guest.StopRequested,
    guest.StartRequested,
    guest.StatusRequested,
    guest.ResizeRequested,
    guest.UpgradeRequested,
    guest.GuestHeartbeat,
    guest.GuestStatusReported,
    guest.BackupRequested,
    guest.GuestBackupProgress,
    guest.GuestBackupFinished,
    guest.ListDatabasesRequested,
    guest.DatabasesListed,
    guest.CreateDatabasesRequested,
    guest.DeleteDatabaseRequested,
    guest.ListUsersRequested,
    guest.UsersListed,
    guest.ShowUserRequested,
    guest.UserShown,
    guest.CreateUsersRequested,
    guest.DeleteUserRequested,
    guest.UpdateUserRequested,
    guest.ChangePasswordsRequested,
    guest.GrantAccessRequested,
    guest.RevokeAccessRequested,
    guest.EnableRootRequested,
    guest.RootEnabled,
    guest.DisableRootRequested,
    guest.CommandCompleted,
    guest.UpdateOverridesRequested,
    guest.ConfigurationApplied,
    guest.ShowConfigurationRequested,
    guest.ConfigurationShown,
    *notifications.ALL,
):
    register(_model)
