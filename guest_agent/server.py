"""The command endpoint: signed CloudEvents in, 202/200 out (Werkzeug, threaded).

Checks, in order, each with its own status so the control plane can tell problems apart:
  400  not a CloudEvent (or too large)
  401  not from control_source(our id), unsigned, wrong key, bad signature, stale time, replay
  400  unknown type, invalid data, or a type that is not a command
  403  a validly signed command whose data names another instance
  409  another operation is running (or the instance is not prepared yet)

BackupRequested is answered 202 once its backup starts in the background (202 again, a
no-op, for the backup already running), 409 while another backup or an operation runs or
the instance is not prepared, 503 not_ready when the server does not run. While a backup
runs, prepare/restart/stop/start are refused with 409.

Database, user, access and root commands are answered at once on the request thread: 200
with the reply event (signed like the status reply), or {"error", "reason"} with 404
not_found, 409 exists, 400 invalid, or 503 not_ready (server not prepared or not running, or
an operation holds it: such a command never waits for one). They run one at a time.
The source is checked before the signature so a guest key can never replay a heartbeat
(signed for guest_source) at an agent as if it were a command. The replay guard is in
memory: after an agent restart, SequenceCounter's time-based floor on the control plane's
side keeps new commands above anything accepted before.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from events import registry
from events.base import Event
from events.envelope import decode_http, encode_binary, from_json
from events.errors import (
    AuthenticationError,
    EventError,
    InvalidCloudEvent,
    InvalidEventData,
    ReplayError,
    UnknownEventType,
)
from events.guest import (
    COMMANDS_PATH,
    HEALTH_PATH,
    BackupRequested,
    ChangePasswordsRequested,
    CommandCompleted,
    ConfigurationApplied,
    ConfigurationShown,
    CreateDatabasesRequested,
    CreateUsersRequested,
    DatabasesListed,
    DeleteDatabaseRequested,
    DeleteUserRequested,
    DisableRootRequested,
    EnableRootRequested,
    GrantAccessRequested,
    ListDatabasesRequested,
    ListUsersRequested,
    PrepareRequested,
    ResizeRequested,
    RestartRequested,
    RevokeAccessRequested,
    RootEnabled,
    ShowConfigurationRequested,
    ShowUserRequested,
    StartRequested,
    StatusRequested,
    StopRequested,
    UpdateOverridesRequested,
    UpdateUserRequested,
    UpgradeRequested,
    UserShown,
    UsersListed,
    control_source,
    instance_key,
)
from events.replay import InMemoryReplayGuard
from events.signing import Keyring, verify
from guest_agent.datastores.base import Datastore, DatastoreError, NotReady
from guest_agent.heartbeat import EventFactory
from guest_agent.process import REDACTOR
from guest_agent.settings import Settings
from guest_agent.supervisor import Busy, Supervisor

if TYPE_CHECKING:
    from guest_agent.backup.runner import BackupRunner

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
LONG_OPERATIONS: dict[type, str] = {
    PrepareRequested: "prepare",
    RestartRequested: "restart",
    StopRequested: "stop",
    StartRequested: "start",
    ResizeRequested: "resize",
    UpgradeRequested: "upgrade",
}


def _json(status: int, **body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


REASON_STATUS = {"not_found": 404, "exists": 409, "invalid": 400, "not_ready": 503}
# An account command waits at most this long for the one before it.
ACCOUNT_LOCK_TIMEOUT_S = 10.0


def _list_databases(ds: Datastore, e: ListDatabasesRequested) -> Event:
    databases, marker = ds.list_databases(e.limit, e.marker)
    return DatabasesListed(instance_id=e.instance_id, databases=databases, next_marker=marker)


def _list_users(ds: Datastore, e: ListUsersRequested) -> Event:
    users, marker = ds.list_users(e.limit, e.marker)
    return UsersListed(instance_id=e.instance_id, users=users, next_marker=marker)


def _show_user(ds: Datastore, e: ShowUserRequested) -> Event:
    return UserShown(instance_id=e.instance_id, user=ds.get_user(e.user.name, e.user.host))


def _enable_root(ds: Datastore, e: EnableRootRequested) -> Event:
    return RootEnabled(instance_id=e.instance_id, name=ds.enable_root(e.password))


# Each account command: what it does, returning its reply (None: CommandCompleted).
ACCOUNT_COMMANDS: dict[type, Callable[[Datastore, Any], Event | None]] = {
    ListDatabasesRequested: _list_databases,
    CreateDatabasesRequested: lambda ds, e: ds.create_databases(e.databases),
    DeleteDatabaseRequested: lambda ds, e: ds.delete_database(e.name),
    ListUsersRequested: _list_users,
    ShowUserRequested: _show_user,
    CreateUsersRequested: lambda ds, e: ds.create_users(e.users),
    DeleteUserRequested: lambda ds, e: ds.delete_user(e.user),
    UpdateUserRequested: lambda ds, e: ds.update_user(e.user, e.name, e.password, e.host),
    ChangePasswordsRequested: lambda ds, e: ds.change_passwords(e.users),
    GrantAccessRequested: lambda ds, e: ds.grant_access(e.user, e.databases),
    RevokeAccessRequested: lambda ds, e: ds.revoke_access(e.user, e.database),
    EnableRootRequested: _enable_root,
    DisableRootRequested: lambda ds, e: ds.disable_root(),
}


def _passwords(event: Event) -> list[str | None]:
    """Passwords a command carries: masked in every log line from now on."""
    if isinstance(event, CreateUsersRequested):
        return [u.password for u in event.users]
    if isinstance(event, ChangePasswordsRequested):
        return [u.password for u in event.users]
    if isinstance(event, (UpdateUserRequested, EnableRootRequested)):
        return [event.password]
    return []


class CommandApp:
    def __init__(
        self,
        settings: Settings,
        secret: bytes,
        supervisor: Supervisor,
        factory: EventFactory,
        backups: BackupRunner | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.backups = backups
        self.factory = factory
        # Only this instance's key: a command signed with any other key is unknown here.
        self.keyring = Keyring([instance_key(settings.instance_id, secret)])
        self.replay_guard = InMemoryReplayGuard()
        self.control = control_source(settings.instance_id)
        self._accounts = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        try:
            response = self.dispatch(request)
        except RequestEntityTooLarge:
            response = _json(413, error="request body too large")
        except Exception:  # never leak a traceback to the caller
            log.exception("command handling failed")
            response = _json(500, error="internal error")
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if request.path == HEALTH_PATH:
            if request.method not in ("GET", "HEAD"):
                return _json(405, error="method not allowed")
            return Response("ok", mimetype="text/plain")  # liveness only, no details
        if request.path != COMMANDS_PATH:
            return _json(404, error="not found")
        if request.method != "POST":
            return _json(405, error="method not allowed")
        return self.command(request)

    def command(self, request: Request) -> Response:
        try:
            message = decode_http(dict(request.headers), request.get_data())
        except InvalidCloudEvent as exc:
            return _json(400, error=str(exc))
        if message.source != self.control:
            return _json(401, error=f"commands must come from {self.control}")
        try:
            verify(message, self.keyring, replay_guard=self.replay_guard)
        except (AuthenticationError, ReplayError) as exc:
            log.warning("refused command %s (%s): %s", message.id, message.type, exc)
            return _json(401, error=str(exc))
        try:
            event = registry.parse(message)
        except UnknownEventType as exc:
            return _json(400, error=str(exc))
        except InvalidEventData as exc:
            return _json(400, error=REDACTOR.redact(str(exc)), reason="invalid")
        instance_id = getattr(event, "instance_id", None)
        if not isinstance(event, (StatusRequested, BackupRequested, *LONG_OPERATIONS, *ACCOUNT_COMMANDS,
                                  UpdateOverridesRequested, ShowConfigurationRequested)):
            return _json(400, error=f"{message.type} is not a guest command")
        if instance_id != self.settings.instance_id:
            log.warning("refused command %s for instance %s", message.id, instance_id)
            return _json(403, error="command is for another instance")
        log.info("command %s (%s)", message.type, message.id)

        if type(event) in ACCOUNT_COMMANDS:
            return self.account_command(event, message.type)
        if isinstance(event, UpdateOverridesRequested):
            return self.update_overrides(event, message.type)
        if isinstance(event, ShowConfigurationRequested):
            state = self.supervisor.store.state
            return self._reply(ConfigurationShown(
                instance_id=event.instance_id, values=self.supervisor.ds.template_values(state),
                overrides=dict(state.overrides)))

        if isinstance(event, StatusRequested):
            reply = self.factory.status_report(self.supervisor.snapshot())
            headers, body = encode_binary(reply)
            return Response(body, status=200, headers=headers)

        if isinstance(event, BackupRequested):
            return self.backup_command(event)

        if isinstance(event, PrepareRequested) and event.datastore != self.settings.datastore:
            return _json(400, error=f"this agent runs {self.settings.datastore}, not {event.datastore}")
        operation = LONG_OPERATIONS[type(event)]
        try:
            started = self.supervisor.submit(operation, event)
        except Busy as exc:
            return _json(409, error=str(exc))
        except DatastoreError as exc:  # overrides the agent refuses to write
            return _json(400, error=REDACTOR.redact(str(exc)), reason="invalid")
        if not started:
            return _json(202, operation=operation, accepted=True, note="already in progress")
        return _json(202, operation=operation, accepted=True)

    def backup_command(self, event: BackupRequested) -> Response:
        if self.backups is None:
            return _json(503, error="backups are not available on this agent", reason="not_ready")
        try:
            started = self.backups.submit(event)
        except Busy as exc:
            return _json(409, error=str(exc))
        except NotReady as exc:
            return _json(503, error=str(exc), reason=exc.reason)
        if not started:
            return _json(202, operation="backup", backup_id=event.backup_id, accepted=True, note="already in progress")
        return _json(202, operation="backup", backup_id=event.backup_id, accepted=True)

    def update_overrides(self, event: UpdateOverridesRequested, command_type: str) -> Response:
        """Configuration groups: one at a time with the account commands (both hold SQL)."""
        try:
            if not self._accounts.acquire(timeout=ACCOUNT_LOCK_TIMEOUT_S):
                raise NotReady("another command is still running; retry later")
            try:
                applied, pending = self.supervisor.update_overrides(dict(event.overrides), event.restart_required)
            finally:
                self._accounts.release()
        except DatastoreError as exc:
            return self._refused(command_type, exc)
        return self._reply(ConfigurationApplied(instance_id=event.instance_id, applied=applied, pending_restart=pending))

    def _refused(self, command_type: str, exc: DatastoreError) -> Response:
        message = REDACTOR.redact(str(exc))
        if exc.reason is None:  # the server failed in a way we did not foresee
            log.error("%s failed: %s", command_type, message)
            return _json(500, error=message)
        log.info("%s refused (%s): %s", command_type, exc.reason, message)
        return _json(REASON_STATUS[exc.reason], error=message, reason=exc.reason)

    def _reply(self, reply: Event) -> Response:
        headers, body = encode_binary(self.factory.reply(reply))
        return Response(body, status=200, headers=headers)

    def account_command(self, event: Event, command_type: str) -> Response:
        """Run a database/user/root command now, on this thread; never a 500 for bad input."""
        REDACTOR.add(_passwords(event))
        action = ACCOUNT_COMMANDS[type(event)]
        try:
            if not self._accounts.acquire(timeout=ACCOUNT_LOCK_TIMEOUT_S):
                raise NotReady("another database or user command is still running; retry later")
            try:
                with self.supervisor.sql_access() as ds:
                    reply = action(ds, event)
            finally:
                self._accounts.release()
        except DatastoreError as exc:
            return self._refused(command_type, exc)
        if reply is None:
            reply = CommandCompleted(instance_id=self.settings.instance_id, command=command_type)
        return self._reply(reply)


# User data is written when the server is created and read when the agent boots; allow for a
# slow boot, but not for a file replayed days later.
USER_DATA_WINDOW_S = 3600.0


def run_user_data(app: CommandApp, path: Path) -> None:
    """Verify the prepare command the compute driver left beside us, and start it.

    It passes the same checks as a command over HTTP (source, signature, instance, datastore)
    except the replay guard: it is read once, at boot, from a file only root can read."""
    try:
        message = from_json(path.read_text(encoding="utf-8"))
        if message.source != app.control:
            raise AuthenticationError(f"user data must come from {app.control}")
        verify(message, app.keyring, window_s=USER_DATA_WINDOW_S)
        event = registry.parse(message)
    except (OSError, ValueError, EventError) as exc:
        log.error("ignoring user data %s: %s", path, exc)
        return
    if not isinstance(event, PrepareRequested) or event.instance_id != app.settings.instance_id \
            or event.datastore != app.settings.datastore:
        log.error("ignoring user data %s: not a prepare command for this instance", path)
        return
    log.info("prepare from user data (%s)", message.id)
    try:
        app.supervisor.submit("prepare", event)
    except Busy as exc:
        log.warning("user data not run: %s", exc)


def serve(app: CommandApp, host: str, port: int) -> BaseWSGIServer:
    """A threaded server: a slow prepare never blocks StatusRequested or health checks."""
    return make_server(host, port, app, threaded=True)
