"""The guest agent's wire contract: commands the control plane sends it, events it emits.

Commands are signed CloudEvents POSTed to the agent's command endpoint (see
`guest_command_url`); quick ones are answered with a CloudEvent (200), slow ones with 202
and reported through heartbeats. The agent posts signed heartbeats to the broker.

Both directions are signed with the instance's own key (keyid = instance id). The key
may sign for exactly two sources, `/troveless/guest/<id>` (the agent) and
`/troveless/control/<id>` (the control plane talking to that agent), so an agent can
never speak for another instance.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.base import PREFIX, Event
from events.envelope import Message
from events.replay import SequenceCounter, format_sequence
from events.signing import SigningKey, sign

GUEST_SOURCE_PREFIX = "/troveless/guest/"
CONTROL_SOURCE_PREFIX = "/troveless/control/"
AGENT_PORT = 8799
COMMANDS_PATH = "/commands"
HEALTH_PATH = "/healthz"

Datastore = Literal["postgresql", "mariadb"]


def guest_source(instance_id: str) -> str:
    return GUEST_SOURCE_PREFIX + instance_id


def control_source(instance_id: str) -> str:
    return CONTROL_SOURCE_PREFIX + instance_id


def instance_key(instance_id: str, secret: bytes) -> SigningKey:
    return SigningKey(instance_id, secret, (guest_source(instance_id), control_source(instance_id)))


_COMMANDS = SequenceCounter()


def sign_command(instance_id: str, secret: bytes, command: Event) -> Message:
    """A command as the control plane sends it: from control_source(id), sequenced, signed."""
    message = command.to_message(
        control_source(instance_id),
        subject=instance_id,
        extensions={"sequence": format_sequence(_COMMANDS.next()), "partitionkey": instance_id},
    )
    return sign(message, instance_key(instance_id, secret))


def guest_command_url(address: str, port: int = AGENT_PORT) -> str:
    return f"http://{address}:{port}{COMMANDS_PATH}"


class GuestStatus(StrEnum):
    """What the agent says about its datastore (Trove's service status names)."""

    NEW = "NEW"  # agent up, not prepared yet
    BUILDING = "BUILDING"  # prepare running
    HEALTHY = "HEALTHY"  # the database answers queries
    RUNNING = "RUNNING"  # process up, not answering yet
    RESTARTING = "RESTARTING"
    SHUTDOWN = "SHUTDOWN"  # stopped on purpose, or not running
    CRASHED = "CRASHED"  # died unexpectedly; the agent is restarting it
    FAILED = "FAILED"  # prepare failed or the server cannot be started


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSpec(_Strict):
    name: str
    character_set: str | None = None
    collate: str | None = None


class UserSpec(_Strict):
    name: str
    password: str
    host: str | None = None
    databases: list[str] = Field(default_factory=list)


class FlavorSpec(_Strict):
    ram_mb: int = Field(gt=0)
    vcpus: int = Field(gt=0)


class PrepareRequested(Event):
    """Initialise the datastore on the volume, configure it for the flavor, start it, and
    create the requested databases and users. Answered 202; progress via heartbeats.
    Idempotent: an already prepared instance only makes sure the server runs."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.prepare.requested"
    instance_id: str
    datastore: Datastore
    version: str
    flavor: FlavorSpec
    volume_size_gb: int = Field(gt=0)
    databases: list[DatabaseSpec] = Field(default_factory=list)
    users: list[UserSpec] = Field(default_factory=list)


class RestartRequested(Event):
    """Restart the database server (202; the heartbeat shows RESTARTING, then HEALTHY)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.restart.requested"
    instance_id: str


class StopRequested(Event):
    """Stop the database server and keep it stopped (202; heartbeat SHUTDOWN)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.stop.requested"
    instance_id: str


class StartRequested(Event):
    """Start a stopped database server (202)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.start.requested"
    instance_id: str


class StatusRequested(Event):
    """Answered at once (200) with a `GuestStatusReported` CloudEvent."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.status.requested"
    instance_id: str


class _StatusFields(Event):
    instance_id: str
    status: GuestStatus
    description: str = ""
    datastore: Datastore
    datastore_version: str | None = None
    volume_used_bytes: int = 0
    volume_size_bytes: int = 0
    server_pid: int | None = None
    # Times the agent restarted a crashed server since it started (supervision).
    restarts: int = 0


class GuestHeartbeat(_StatusFields):
    """Emitted every few seconds and on every status change; carries `sequence`."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.heartbeat"


class GuestStatusReported(_StatusFields):
    """The synchronous reply to `StatusRequested`."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.status.reported"
