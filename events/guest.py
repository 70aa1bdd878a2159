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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

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


# A configuration-group value as the control plane validated and normalised it: integers in
# the setting's own unit, booleans as JSON booleans, enum strings spelled as the server does.
ConfigValue = StrictBool | StrictInt | StrictFloat | StrictStr
# Setting name -> value. Commands that (re)start the server carry the instance's overrides
# (None: keep the agent's), so a restart always converges on what the control plane holds.
Overrides = dict[str, ConfigValue]


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


class StoreOptions(_Strict):
    """How to reach the object store named by a location. Credentials never travel in
    events (events are logged and dead-lettered): the agent reads them from its settings."""

    endpoint_url: str | None = None  # S3 only; None = AWS
    region: str | None = None
    path_style: bool = False


class BackupObject(_Strict):
    """One stored backup object, as a restore or an incremental needs to find and trust it."""

    backup_id: str
    # file:///abs/path/to/object or s3://bucket/key
    location: str
    # SHA-256 (hex) of the object exactly as stored (compressed bytes).
    checksum: str
    backup_type: Literal["full", "incremental"]
    # MariaDB: the backup's to_lsn, where the next incremental starts. None for PostgreSQL.
    lsn: str | None = None


class RestoreSpec(_Strict):
    """Restore the data directory from a chain of backups before the first start."""

    store: StoreOptions = Field(default_factory=StoreOptions)
    # The full backup first, then each incremental in order (each one's parent precedes it).
    chain: list[BackupObject] = Field(min_length=1)


class PrepareRequested(Event):
    """Initialise the datastore on the volume, configure it for the flavor, start it, and
    create the requested databases and users. Answered 202; progress via heartbeats.
    Idempotent: an already prepared instance only makes sure the server runs.

    With `restore`, the data directory comes from the backup chain instead of initdb /
    install-db; every object's SHA-256 is verified before the server is first started, and
    a mismatch fails the prepare (status FAILED, description names the backup)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.prepare.requested"
    instance_id: str
    datastore: Datastore
    version: str
    flavor: FlavorSpec
    volume_size_gb: int = Field(gt=0)
    databases: list[DatabaseSpec] = Field(default_factory=list)
    users: list[UserSpec] = Field(default_factory=list)
    restore: RestoreSpec | None = None
    # The attached configuration group's values, written before the first start.
    overrides: Overrides = Field(default_factory=dict)


class BackupRequested(Event):
    """Stream a backup of the running server into the object store. Answered 202 at once;
    the agent then emits GuestBackupProgress events and one GuestBackupFinished. A repeated
    request for the backup already running is a no-op (202); a different backup while one
    runs is refused with 409. The datastore keeps serving (and heartbeats keep flowing)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.backup.requested"
    instance_id: str
    backup_id: str
    # Where the object goes: file:///abs/path or s3://bucket/key.
    location: str
    store: StoreOptions = Field(default_factory=StoreOptions)
    # Incremental backups build on this one (MariaDB: from its lsn); None = full backup.
    parent: BackupObject | None = None
    # Stored as object metadata beside the agent's own (checksum, type, parent, lsn).
    metadata: dict[str, str] = Field(default_factory=dict)


class GuestBackupProgress(Event):
    """Emitted while a backup streams (every few seconds and on state changes)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.backup.progress"
    instance_id: str
    backup_id: str
    state: Literal["BUILDING", "SAVING"]
    # Compressed bytes stored so far.
    bytes_done: int = 0


class GuestBackupFinished(Event):
    """The backup's end: success with what was stored, or failure with a safe message.
    On failure the agent has already removed partial objects (best effort)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.backup.finished"
    instance_id: str
    backup_id: str
    success: bool
    backup_type: Literal["full", "incremental"] = "full"
    location: str | None = None
    checksum: str | None = None  # SHA-256 hex of the stored object
    object_size: int | None = None  # bytes stored
    # Used space of the data volume in GB at backup start (Trove's `size`).
    size_gb: float | None = None
    lsn: str | None = None
    error: str | None = None


class RestartRequested(Event):
    """Restart the database server (202; the heartbeat shows RESTARTING, then HEALTHY)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.restart.requested"
    instance_id: str
    overrides: Overrides | None = None


class StopRequested(Event):
    """Stop the database server and keep it stopped (202; heartbeat SHUTDOWN)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.stop.requested"
    instance_id: str


class StartRequested(Event):
    """Start a stopped database server (202)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.start.requested"
    instance_id: str
    overrides: Overrides | None = None


class ResizeRequested(Event):
    """A new flavor and/or a bigger volume (202). A new flavor rewrites the memory and
    connection settings and restarts the server (RESTARTING, then HEALTHY); a volume size
    only changes what the agent reports (the compute driver grew the volume already)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.resize.requested"
    instance_id: str
    flavor: FlavorSpec | None = None
    volume_size_gb: int | None = Field(default=None, gt=0)
    overrides: Overrides | None = None


class UpgradeRequested(Event):
    """Restart the server on another minor version's binaries, keeping the data (202; the
    heartbeat shows RESTARTING, then HEALTHY). `location`: where that version's server
    binary is (None: the installed default). If the new binaries do not start, the agent
    goes back to the old ones and reports the old `running_version`."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.upgrade.requested"
    instance_id: str
    version: str
    location: str | None = None
    overrides: Overrides | None = None


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
    # The backup this agent is running right now, if any: a backup the control plane thinks
    # is running but the agent does not (it restarted) is failed at once.
    backup_id: str | None = None
    # The datastore version (as the control plane names it) whose binaries the server runs.
    running_version: str | None = None
    # The datastore's own figures, sampled every half minute or so off the heartbeat thread
    # (None: not sampled yet, or the server did not answer): client connections, and the
    # total size of its databases in bytes. Exported as metrics by the control plane.
    connections: int | None = None
    database_size_bytes: int | None = None


class GuestHeartbeat(_StatusFields):
    """Emitted every few seconds and on every status change; carries `sequence`."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.heartbeat"


class GuestStatusReported(_StatusFields):
    """The synchronous reply to `StatusRequested`."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.status.reported"


# ---- databases, users, access and root (Trove §1.5) ---------------------------------------
# All are answered synchronously: 200 with the reply event named below, or a JSON error
# {"error": ..., "reason": R} with 404 (R = "not_found"), 409 ("exists"), 400 ("invalid").

PAGE_LIMIT_MAX = 100


class UserRef(_Strict):
    """A user as Trove addresses it: name and host (MariaDB; `%` when not given).
    PostgreSQL has no hosts: it ignores `host` and reports `%`."""

    name: str
    host: str | None = None


class DatabaseInfo(_Strict):
    name: str
    character_set: str | None = None
    collate: str | None = None


class UserInfo(_Strict):
    name: str
    host: str = "%"
    databases: list[str] = Field(default_factory=list)


class _Page(Event):
    instance_id: str
    limit: int = Field(default=20, ge=1, le=PAGE_LIMIT_MAX)
    # Exclusive: the page starts after this name (databases) or name@host (users).
    marker: str | None = None


class ListDatabasesRequested(_Page):
    """Reply: DatabasesListed (user databases only: never system or the agent's own)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.databases.list.requested"


class DatabasesListed(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.databases.listed"
    instance_id: str
    databases: list[DatabaseInfo]
    next_marker: str | None = None


class CreateDatabasesRequested(Event):
    """Reply: CommandCompleted. Creates each database (409 if one exists; none created then)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.databases.create.requested"
    instance_id: str
    databases: list[DatabaseSpec]


class DeleteDatabaseRequested(Event):
    """Reply: CommandCompleted; 404 if it does not exist."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.database.delete.requested"
    instance_id: str
    name: str


class ListUsersRequested(_Page):
    """Reply: UsersListed (never system users, root or the agent's own admin)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.users.list.requested"


class UsersListed(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.users.listed"
    instance_id: str
    users: list[UserInfo]
    next_marker: str | None = None


class ShowUserRequested(Event):
    """Reply: UserShown, with the databases the user may access; 404 if unknown."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.user.show.requested"
    instance_id: str
    user: UserRef


class UserShown(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.user.shown"
    instance_id: str
    user: UserInfo


class CreateUsersRequested(Event):
    """Reply: CommandCompleted. Creates each user with access to its databases (409 if one
    exists, 404 if a database does not; nothing is created then)."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.users.create.requested"
    instance_id: str
    users: list[UserSpec]


class DeleteUserRequested(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.user.delete.requested"
    instance_id: str
    user: UserRef


class UpdateUserRequested(Event):
    """Rename, new password and/or new host (MariaDB); grants follow a renamed user."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.user.update.requested"
    instance_id: str
    user: UserRef
    name: str | None = None
    password: str | None = None
    host: str | None = None


class PasswordChange(_Strict):
    name: str
    host: str | None = None
    password: str


class ChangePasswordsRequested(Event):
    """Reply: CommandCompleted; 404 (nothing changed) if any user does not exist."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.users.passwords.requested"
    instance_id: str
    users: list[PasswordChange]


class GrantAccessRequested(Event):
    """Reply: CommandCompleted; 404 if the user or a database does not exist."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.access.grant.requested"
    instance_id: str
    user: UserRef
    databases: list[str]


class RevokeAccessRequested(Event):
    """Reply: CommandCompleted; 404 if the user has no access to that database."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.access.revoke.requested"
    instance_id: str
    user: UserRef
    database: str


class EnableRootRequested(Event):
    """Create or reset the superuser `root` (MariaDB: root@'%'; PostgreSQL: role root with
    SUPERUSER) with the given password. Reply: RootEnabled."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.root.enable.requested"
    instance_id: str
    password: str = Field(min_length=8)


class RootEnabled(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.root.enabled"
    instance_id: str
    name: str


class DisableRootRequested(Event):
    """Make root unusable over the network (a new random password nobody knows, as Trove;
    PostgreSQL also loses LOGIN). Reply: CommandCompleted."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.root.disable.requested"
    instance_id: str


# ---- configuration groups (Trove §8) -------------------------------------------------------


class UpdateOverridesRequested(Event):
    """Make `overrides` the configuration group's settings (replacing the previous set; {} =
    detach). They are written after the platform's own settings (so they win) and applied to
    the running server at once where it can: PostgreSQL reloads its configuration,
    MariaDB `SET GLOBAL`s. Settings named in `restart_required` (the control plane's
    catalog) or that the server itself cannot change live wait for the next restart.
    Answered at once with ConfigurationApplied; idempotent. A value the server rejects
    leaves everything as it was: 400 invalid."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.configuration.update.requested"
    instance_id: str
    overrides: Overrides
    restart_required: list[str] = Field(default_factory=list)


class ConfigurationApplied(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.configuration.applied"
    instance_id: str
    applied: list[str] = Field(default_factory=list)  # changed in the running server
    pending_restart: list[str] = Field(default_factory=list)  # take effect at the next restart


class ShowConfigurationRequested(Event):
    """The platform's own settings for this instance's flavor (Trove's default configuration
    template, rendered). Reply: ConfigurationShown."""

    TYPE: ClassVar[str] = f"{PREFIX}.guest.configuration.show.requested"
    instance_id: str


class ConfigurationShown(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.configuration.shown"
    instance_id: str
    values: dict[str, str]
    overrides: Overrides = Field(default_factory=dict)


class CommandCompleted(Event):
    TYPE: ClassVar[str] = f"{PREFIX}.guest.command.completed"
    instance_id: str
    command: str
