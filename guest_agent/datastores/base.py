"""What the supervisor needs from a database engine.

A datastore knows its files (data dir, config, pid files), how to initialise them, the argv
of its server (run as a child of the agent, never daemonised), how to check health with a real
query over the admin connection, and how to create databases and users safely. It knows
nothing about HTTP, heartbeats or supervision; the supervisor drives it.
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from events.guest import (
    DatabaseInfo,
    DatabaseSpec,
    PasswordChange,
    UserInfo,
    UserRef,
    UserSpec,
)
from guest_agent.process import DbUser, Redactor, pid_alive, process_cmdline
from guest_agent.settings import Settings
from guest_agent.state import AgentState

log = logging.getLogger(__name__)


class DatastoreError(RuntimeError):
    """A datastore operation failed; the message is safe to report (no secrets).

    Account commands raise the subclasses below; `reason` is the wire code the command
    server answers with (a plain DatastoreError is an unexpected server failure)."""

    reason: ClassVar[str | None] = None


class InvalidRequest(DatastoreError):
    """A bad name, a reserved object, an unknown character set... (HTTP 400)."""

    reason = "invalid"


class NotFound(DatastoreError):
    """The database, user or grant does not exist (HTTP 404)."""

    reason = "not_found"


class AlreadyExists(DatastoreError):
    """The database or user exists already (HTTP 409)."""

    reason = "exists"


class NotReady(DatastoreError):
    """The server is not running or cannot be reached right now (HTTP 503)."""

    reason = "not_ready"


T = TypeVar("T")
# Lower-case setting names, as both catalogs spell them (a dot for extension settings).
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def paginate(items: list[T], key: Callable[[T], Any], limit: int, marker: Any | None) -> tuple[list[T], Any | None]:
    """One page of `items` in `key` order, starting after `marker` (exclusive).

    Returns the page and the next marker (the last item's key) when more items follow,
    else None: the first `limit + 1` items after the marker are taken, as a query would."""
    ordered = sorted(items, key=key)
    if marker is not None:
        ordered = [item for item in ordered if key(item) > marker]
    window = ordered[: limit + 1]
    page = window[:limit]
    return page, (key(page[-1]) if len(window) > limit and page else None)


def split_user_marker(marker: str) -> tuple[str, str]:
    """'name@host' -> (name, host), split at the last '@' (names may contain '@', hosts not).
    A marker without '@' starts before every host of that name."""
    name, at, host = marker.rpartition("@")
    return (name, host) if at else (marker, "")


def check_text(kind: str, value: object, max_len: int | None = None, *, max_bytes: int | None = None) -> str:
    """A non-empty str without NUL that is valid UTF-8 (no lone surrogates), within limits."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"invalid {kind}: it must be a non-empty string")
    if "\0" in value:
        raise InvalidRequest(f"invalid {kind} {value!r}: it contains a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(f"invalid {kind} {value!r}: it is not valid Unicode") from None
    if max_len is not None and len(value) > max_len:
        raise InvalidRequest(f"invalid {kind} {value[:80]!r}...: longer than {max_len} characters")
    if max_bytes is not None and size > max_bytes:
        raise InvalidRequest(f"invalid {kind} {value[:80]!r}...: longer than {max_bytes} bytes")
    return value


def check_password(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("the password must not be empty")
    if "\0" in value:
        raise InvalidRequest("the password contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the password is not valid Unicode") from None
    if len(value) > 1024:
        raise InvalidRequest("the password is longer than 1024 characters")
    return value


def random_password() -> str:
    """For disable_root: nobody ever sees it (only its hash reaches the server)."""
    return secrets.token_urlsafe(48)


def memory_settings_mb(ram_mb: int) -> dict[str, int]:
    """Shared sizing rules, in MB, so both engines scale with the flavor the same way."""
    ram_mb = max(ram_mb, 64)
    return {
        "quarter": max(16, ram_mb // 4),
        "half": max(32, ram_mb // 2),
        "three_quarters": max(32, ram_mb * 3 // 4),
        # One connection per 16 MB of RAM, but never fewer than 20 nor more than 500.
        "max_connections": min(500, max(20, ram_mb // 16)),
    }


def parse_version(text: str) -> str:
    """'postgres (PostgreSQL) 15.20 (Debian ...)' -> '15.20'; '10.11.19-MariaDB-...' -> '10.11.19'."""
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    if not match:
        raise DatastoreError(f"cannot find a version in {text.strip()!r}")
    return match.group(1)


def new_admin_password() -> str:
    return secrets.token_urlsafe(32)


class Datastore(ABC):
    name: ClassVar[str]
    # Signal that makes the server shut down cleanly and quickly.
    stop_signal: ClassVar[int] = signal.SIGTERM
    # Names the control plane may not create or manage (the engine's and the agent's own).
    reserved_databases: ClassVar[frozenset[str]] = frozenset()
    reserved_users: ClassVar[frozenset[str]] = frozenset()
    # A word that appears in the server's cmdline, to recognise a leftover server by pid.
    process_marker: ClassVar[str]
    # Whether initialisation needs a generated admin password (kept in agent.json only).
    uses_admin_password: ClassVar[bool] = False

    def __init__(self, settings: Settings, user: DbUser, redactor: Redactor) -> None:
        self.settings = settings
        self.user = user
        self.redactor = redactor

    # ------------------------------------------------------------ files and processes

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def server_log(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @abstractmethod
    def server_pid_file(self) -> Path:
        """The pid file the running server writes (used to find a leftover server)."""

    @abstractmethod
    def version(self) -> str:
        """The real server version (from the binary), e.g. '15.20'."""

    @abstractmethod
    def is_initialized(self) -> bool:
        """True if the data directory holds an initialised cluster."""

    @abstractmethod
    def initialize(self, state: AgentState) -> None:
        """Create a fresh cluster in an empty data directory (initdb / install-db)."""

    @abstractmethod
    def write_config(self, state: AgentState) -> None:
        """(Re)write the server configuration for this flavor, address and port, then the
        configuration group's overrides (which win)."""

    # ------------------------------------------------------------ configuration groups

    # Settings the platform owns (addresses, paths, authentication, logging plumbing): the
    # control plane's catalog leaves them out; checked here again so no command can set them.
    protected_settings: ClassVar[frozenset[str]] = frozenset()

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        for name, value in overrides.items():
            if not _SETTING_NAME.match(name):
                raise InvalidRequest(f"invalid setting name {name[:80]!r}")
            if name in self.protected_settings:
                raise InvalidRequest(f"the setting {name} is managed by the platform")
            if isinstance(value, str) and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
                raise InvalidRequest(f"the value of {name} contains control characters")

    @abstractmethod
    def template_values(self, state: AgentState) -> dict[str, str]:
        """The platform's own settings for this flavor, as a user would read them
        (Trove's rendered default configuration)."""

    @abstractmethod
    def apply_overrides(self, before: AgentState, after: AgentState, restart_required: set[str]) -> tuple[list[str], list[str]]:
        """The configuration file already holds `after`; make the running server follow it
        where it can. Returns (applied live, pending restart). InvalidRequest if the server
        refuses a value (then nothing it changed live stays changed)."""

    @abstractmethod
    def server_argv(self) -> list[str]:
        """How to run the server in the foreground."""

    @abstractmethod
    def ping(self, state: AgentState, timeout: float = 2.0) -> bool:
        """`SELECT 1` over the admin connection; False (never raises) if it does not answer."""

    @abstractmethod
    def server_version(self, state: AgentState) -> str | None:
        """Version reported by the running server (`SELECT version()`), None if unreachable."""

    def stats(self, timeout: float = 2.0) -> tuple[int, int] | None:
        """(client connections, total size of the databases in bytes): two cheap queries,
        each bounded by `timeout`; None when the server cannot answer right now."""
        return None

    @abstractmethod
    def create_database(self, state: AgentState, spec: DatabaseSpec) -> None: ...

    @abstractmethod
    def create_user(self, state: AgentState, spec: UserSpec) -> None: ...

    # ------------------------------------------------------------ account commands
    # Each raises InvalidRequest / NotFound / AlreadyExists / NotReady (see above). Reserved
    # objects (the engine's and the agent's own) are never listed, and naming one is invalid.
    # Paging is by name (users: (name, host)); markers are exclusive ("name", "name@host").

    def is_reserved_database(self, name: str) -> bool:
        return name.lower() in self.reserved_databases

    def is_reserved_user(self, name: str) -> bool:
        return name.lower() in self.reserved_users

    @abstractmethod
    def list_databases(self, limit: int, marker: str | None) -> tuple[list[DatabaseInfo], str | None]: ...

    @abstractmethod
    def create_databases(self, specs: list[DatabaseSpec]) -> None:
        """All or nothing: 409 if one exists, 400 for a bad name or character set."""

    @abstractmethod
    def delete_database(self, name: str) -> None: ...

    @abstractmethod
    def list_users(self, limit: int, marker: str | None) -> tuple[list[UserInfo], str | None]: ...

    @abstractmethod
    def get_user(self, name: str, host: str | None) -> UserInfo: ...

    @abstractmethod
    def create_users(self, specs: list[UserSpec]) -> None:
        """All or nothing: 409 if one exists, 404 if a database does not."""

    @abstractmethod
    def delete_user(self, ref: UserRef) -> None: ...

    @abstractmethod
    def update_user(
        self, ref: UserRef, new_name: str | None, new_password: str | None, new_host: str | None
    ) -> None: ...

    @abstractmethod
    def change_passwords(self, changes: list[PasswordChange]) -> None:
        """All or nothing: 404 (nothing changed) if any user does not exist."""

    @abstractmethod
    def grant_access(self, ref: UserRef, databases: list[str]) -> None: ...

    @abstractmethod
    def revoke_access(self, ref: UserRef, database: str) -> None:
        """404 if the user has no access to that database."""

    @abstractmethod
    def list_access(self, ref: UserRef) -> list[str]: ...

    @abstractmethod
    def enable_root(self, password: str) -> str:
        """Create or reset the superuser `root` with this password; returns its name."""

    @abstractmethod
    def disable_root(self) -> None:
        """A new random password nobody knows (the account stays); no-op if there is no root."""

    def use_version(self, requested: str | None) -> str | None:
        """Pick binaries for the requested version if several are installed; returns the choice."""
        return None

    @abstractmethod
    def binaries(self) -> str:
        """Where the server binary in use is (a directory)."""

    @abstractmethod
    def binaries_version(self, location: str) -> str:
        """The version of the server binary in `location` (InvalidRequest if there is none)."""

    @abstractmethod
    def use_binaries(self, location: str) -> None:
        """Run the server from `location` from the next start on."""

    def major(self, version: str) -> tuple[int, ...]:
        """The part of a version that must not change under the same data directory."""
        return tuple(int(p) for p in re.findall(r"\d+", version))[:1]

    def leftover_server_pid(self) -> int | None:
        """Pid of a server still running on our data dir (from a previous agent), if any."""
        path = self.server_pid_file()
        try:
            first = path.read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        if pid <= 1 or not pid_alive(pid):
            return None
        cmdline = " ".join(process_cmdline(pid))
        if self.process_marker not in cmdline:
            return None  # the pid was reused by something else: not ours to kill
        return pid

    def wait_ready(
        self,
        state: AgentState,
        alive: Callable[[], bool],
        timeout: float = 60.0,
    ) -> None:
        """Poll `SELECT 1` until it works; fail fast if the process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise DatastoreError(f"{self.name} server exited during startup: {self.log_tail()}")
            if self.ping(state, timeout=1.0):
                return
            time.sleep(0.02)
        raise DatastoreError(f"{self.name} server did not accept connections within {timeout:.0f}s")

    def template_key(self, state: AgentState) -> str:
        """What a reusable initialised data directory depends on: engine, version, sizing."""
        version = re.sub(r"[^A-Za-z0-9.]", "_", state.requested_version or "default")
        return f"{self.name}-{version}-{state.ram_mb}mb-v1"

    def after_template_start(self, state: AgentState) -> None:
        """Make a data directory copied from a template or restored from another instance's
        backup this instance's own (run by every first prepare; must be idempotent)."""

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.server_log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
        return self.redactor.redact(tail)

    def check_names(self, databases: list[DatabaseSpec], users: list[UserSpec]) -> None:
        """Refuse to touch the engine's own databases and accounts, and dangling grants."""
        for db in databases:
            if db.name.lower() in self.reserved_databases:
                raise DatastoreError(f"database name {db.name!r} is reserved")
        known = {db.name for db in databases}
        for user in users:
            if user.name.lower() in self.reserved_users:
                raise DatastoreError(f"user name {user.name!r} is reserved")
            if not user.password:
                raise DatastoreError(f"user {user.name!r} has an empty password")
            for name in user.databases:
                if name.lower() in self.reserved_databases:
                    raise DatastoreError(f"user {user.name!r} may not be granted {name!r}")
                if name not in known:
                    log.info("user %s is granted database %s, which is not in this request", user.name, name)
