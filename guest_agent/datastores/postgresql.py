"""PostgreSQL: initdb, configuration sized for the flavor, admin connection, databases and users.

Admin access: initdb creates the superuser `os_admin` (with a generated password kept only in
agent.json). The agent connects through the unix socket in DIR/run with `peer` authentication
and a pg_ident map that lets exactly the agent's OS user (root) log in as os_admin. So the
agent needs no password at runtime, and the password is never on the wire. The socket
directory is 0700 and owned by the db user: only root and the db user can reach it at all.
Over TCP, os_admin is rejected outright; everyone else uses scram-sha-256.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from events.guest import (
    DatabaseInfo,
    DatabaseSpec,
    PasswordChange,
    UserInfo,
    UserRef,
    UserSpec,
)
from guest_agent.datastores.base import (
    AlreadyExists,
    Datastore,
    DatastoreError,
    InvalidRequest,
    NotFound,
    NotReady,
    check_password,
    check_text,
    memory_settings_mb,
    paginate,
    parse_version,
    random_password,
    split_user_marker,
)
from guest_agent.process import (
    DbUser,
    Redactor,
    agent_os_user,
    chown_tree,
    ensure_dir,
    run_as,
    write_private,
)
from guest_agent.settings import Settings
from guest_agent.state import AgentState

log = logging.getLogger(__name__)

ADMIN_USER = "os_admin"
PG_ROOT = Path("/usr/lib/postgresql")
CONFIG_NAME = "troveless.conf"
IDENT_MAP = "troveless_agent"
MAX_IDENTIFIER_BYTES = 63
# libpq/kernels limit a unix socket path to 107 bytes (sun_path).
MAX_SOCKET_PATH = 107


def installed_bin_dirs() -> list[Path]:
    """Installed PostgreSQL bin dirs, highest major version first."""

    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    dirs = [p for p in PG_ROOT.glob("*/bin") if (p / "postgres").exists()]
    return sorted(dirs, key=major, reverse=True)


def _conf_str(value: str) -> str:
    """A postgresql.conf string literal (quotes doubled, backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _render(value: bool | int | float | str) -> str:
    """A configuration-group value as a postgresql.conf value. Numbers are in the setting's
    own unit already (the control plane normalised them)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return repr(value)
    return _conf_str(value)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'").replace("\\\\", "\\")
    return value


def _check_identifier(kind: str, name: str) -> None:
    """1..63 bytes of valid UTF-8 without NUL; anything else (quotes, spaces...) is literal."""
    check_text(f"{kind} name", name, max_bytes=MAX_IDENTIFIER_BYTES)


# SQLSTATEs -> the wire's reasons. Class 08 (connection) and 57P (shutdown) mean not ready.
_SQLSTATE_ERRORS: dict[str, type[DatastoreError]] = {
    "42P04": AlreadyExists,  # duplicate_database
    "42710": AlreadyExists,  # duplicate_object (role)
    "3D000": NotFound,  # invalid_catalog_name (database)
    "42704": NotFound,  # undefined_object (role)
    "22023": InvalidRequest,  # invalid_parameter_value (encoding does not match locale)
    "42809": InvalidRequest,  # wrong_object_type (invalid locale name)
    "42602": InvalidRequest,  # invalid_name
    "42622": InvalidRequest,  # name_too_long
    "42939": InvalidRequest,  # reserved_name
    "22021": InvalidRequest,  # character_not_in_repertoire
    "0A000": InvalidRequest,  # feature_not_supported
    "2BP01": InvalidRequest,  # dependent_objects_still_exist
    "55006": InvalidRequest,  # object_in_use
}
ROOT_ROLE = "root"


class PostgreSQL(Datastore):
    name = "postgresql"
    # SIGINT = "fast" shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT
    reserved_databases = frozenset({"postgres", "template0", "template1"})
    reserved_users = frozenset({ADMIN_USER, "postgres", "root"})
    process_marker = "postgres"
    uses_admin_password = True  # initdb --pwfile: os_admin gets one, though the agent uses peer auth

    def __init__(self, settings: Settings, user: DbUser, redactor: Redactor) -> None:
        super().__init__(settings, user, redactor)
        if settings.pg_bin_dir is not None:
            self.bin_dir = settings.pg_bin_dir
        else:
            dirs = installed_bin_dirs()
            if not dirs:
                raise DatastoreError(f"no PostgreSQL installation under {PG_ROOT}")
            self.bin_dir = dirs[0]
        socket = settings.run_dir / f".s.PGSQL.{settings.db_port}"
        if len(str(socket)) > MAX_SOCKET_PATH:
            raise DatastoreError(f"socket path {socket} is too long; use a shorter --instance-dir")
        self._version: str | None = None

    def use_version(self, requested: str | None) -> str | None:
        """Prefer the installed major version the control plane asked for."""
        if not requested or self.settings.pg_bin_dir is not None:
            return str(self.bin_dir)
        major = requested.split(".")[0]
        candidate = PG_ROOT / major / "bin"
        if (candidate / "postgres").exists():
            self.bin_dir = candidate
            self._version = None
        else:
            log.warning("PostgreSQL %s is not installed; using %s", requested, self.bin_dir)
        return str(self.bin_dir)

    def binaries(self) -> str:
        return str(self.bin_dir)

    def binaries_version(self, location: str) -> str:
        binary = Path(location) / "postgres"
        if not binary.is_file():
            raise InvalidRequest(f"no PostgreSQL server binary in {location}")
        return parse_version(run_as(self.user, [str(binary), "--version"], timeout=30))

    def use_binaries(self, location: str) -> None:
        if not (Path(location) / "postgres").is_file():
            raise InvalidRequest(f"no PostgreSQL server binary in {location}")
        self.bin_dir = Path(location)
        self._version = None

    # ------------------------------------------------------------ files and processes

    def server_pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def version(self) -> str:
        if self._version is None:
            out = run_as(self.user, [str(self.bin_dir / "postgres"), "--version"], timeout=30)
            self._version = parse_version(out)
        return self._version

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initialize(self, state: AgentState) -> None:
        if not state.admin_password:
            raise DatastoreError("no admin password in the agent state")
        ensure_dir(self.data_dir, 0o700, self.user)
        # initdb reads the superuser password from a file: written into the private run dir,
        # readable only by the db user, removed right after.
        pwfile = self.settings.run_dir / "initdb.pw"
        write_private(pwfile, state.admin_password + "\n", owner=self.user)
        try:
            run_as(
                self.user,
                [
                    str(self.bin_dir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", ADMIN_USER,
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                ],
                log_file=self.settings.log_dir / "initdb.log",
                redactor=self.redactor,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def after_template_start(self, state: AgentState) -> None:
        # The template's os_admin password is the template maker's: give this instance its own.
        with self._connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ADMIN_USER), sql.Literal(state.admin_password)))

    def config_values(self, state: AgentState) -> dict[str, str]:
        mem = memory_settings_mb(state.ram_mb)
        ram_mb = max(state.ram_mb, 64)
        conns = mem["max_connections"]
        # A query may use work_mem several times (sorts, hashes): budget a quarter of RAM
        # over all connections, between 1 MB and 256 MB.
        work_mem_kb = min(256 * 1024, max(1024, ram_mb * 1024 // 4 // conns))
        maintenance_mb = min(2048, max(16, ram_mb // 16))
        run = str(self.settings.run_dir)
        return {
            "listen_addresses": _conf_str(self.settings.address),
            "port": str(self.settings.db_port),
            "unix_socket_directories": _conf_str(run),
            "unix_socket_permissions": "0700",
            "external_pid_file": _conf_str(f"{run}/postgresql.pid"),
            "max_connections": str(conns),
            "shared_buffers": f"{mem['quarter']}MB",
            "effective_cache_size": f"{mem['three_quarters']}MB",
            "work_mem": f"{work_mem_kb}kB",
            "maintenance_work_mem": f"{maintenance_mb}MB",
            "password_encryption": "'scram-sha-256'",
            "hba_file": _conf_str(f"{self.data_dir}/pg_hba.conf"),
            "ident_file": _conf_str(f"{self.data_dir}/pg_ident.conf"),
            # stderr goes to the log file the agent opened for the child.
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }

    protected_settings = frozenset({
        "listen_addresses", "port", "unix_socket_directories", "unix_socket_group",
        "unix_socket_permissions", "external_pid_file", "data_directory", "config_file",
        "hba_file", "ident_file", "logging_collector", "log_destination", "log_directory",
        "log_filename", "password_encryption", "ssl", "include", "include_dir", "include_if_exists",
    })

    def write_config(self, state: AgentState) -> None:
        """Rewritten before every start, so a changed address/port/flavor always applies;
        also when a configuration group changes (then the server reloads it)."""
        values = self.config_values(state)
        # The group's settings replace the platform's line for the same name.
        values.update({name: _render(value) for name, value in state.overrides.items()})
        body = "# Written by the Troveless guest agent; changes are overwritten.\n"
        body += "".join(f"{key} = {value}\n" for key, value in values.items())
        write_private(self.data_dir / CONFIG_NAME, body, owner=self.user)
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        include = f"include '{CONFIG_NAME}'"
        if include not in text:
            # Last line wins in postgresql.conf: our include overrides initdb's defaults.
            write_private(main, text.rstrip("\n") + f"\n\n{include}\n", owner=self.user)
        hba = (
            "# Written by the Troveless guest agent; changes are overwritten.\n"
            "# TYPE  DATABASE  USER      ADDRESS     METHOD\n"
            f"local   all       {ADMIN_USER:<9} peer map={IDENT_MAP}\n"
            # pg_basebackup (backups) runs as the agent and logs in as os_admin, like the agent.
            f"local   replication {ADMIN_USER:<9} peer map={IDENT_MAP}\n"
            "local   all       all                   scram-sha-256\n"
            f"host    all       {ADMIN_USER:<9} 0.0.0.0/0   reject\n"
            f"host    all       {ADMIN_USER:<9} ::/0        reject\n"
            "host    all       all       0.0.0.0/0   scram-sha-256\n"
            "host    all       all       ::/0        scram-sha-256\n"
        )
        write_private(self.data_dir / "pg_hba.conf", hba, owner=self.user)
        # Only the agent's OS user may become os_admin over the socket.
        ident = f"# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n{IDENT_MAP} {agent_os_user()} {ADMIN_USER}\n"
        write_private(self.data_dir / "pg_ident.conf", ident, owner=self.user)
        chown_tree(self.data_dir, self.user)

    def server_argv(self) -> list[str]:
        return [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]

    def template_values(self, state: AgentState) -> dict[str, str]:
        return {name: _unquote(value) for name, value in self.config_values(state).items()}

    def apply_overrides(self, before: AgentState, after: AgentState, restart_required: set[str]) -> tuple[list[str], list[str]]:
        """Reload the configuration the file now holds; the server itself says which
        changed settings wait for a restart (pg_settings.pending_restart)."""
        changed = {name for name in before.overrides.keys() | after.overrides.keys()
                   if before.overrides.get(name) != after.overrides.get(name)}
        try:
            with self._connect() as conn:
                # pg_file_settings parses the files now: a value the server would refuse is
                # caught before the reload (which would otherwise skip it with a log line).
                # A changed restart-only setting shows "could not be applied" there too: those
                # wait for the restart (the control plane checked their values already).
                errors = conn.execute(
                    "SELECT f.name, f.error FROM pg_file_settings f JOIN pg_settings s ON s.name = f.name"
                    " WHERE f.error IS NOT NULL AND f.name = ANY(%s) AND s.context <> 'postmaster'",
                    (sorted(changed),),
                ).fetchall()
                if errors:
                    raise InvalidRequest("; ".join(f"{name}: {error}" for name, error in errors))
                loaded = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]
                conn.execute("SELECT pg_reload_conf()")
            self._wait_reloaded(loaded)
            with self._connect() as conn:
                pending = {row[0] for row in conn.execute("SELECT name FROM pg_settings WHERE pending_restart")}
        except psycopg.Error as exc:
            raise DatastoreError(f"reloading the configuration failed: {exc}") from exc
        pending |= changed & restart_required
        return sorted(changed - pending), sorted(pending)

    def _wait_reloaded(self, loaded_before: object, timeout: float = 10.0) -> None:
        """pg_reload_conf() only signals the postmaster: a new session sees the postmaster's
        load time once it has re-read the files (and so the new values)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._connect() as conn:
                if conn.execute("SELECT pg_conf_load_time() > %s", (loaded_before,)).fetchone()[0]:
                    return
            time.sleep(0.05)
        raise DatastoreError("the server did not reload its configuration within 10 s")

    # ------------------------------------------------------------ SQL

    def _connect(self, dbname: str = "postgres", timeout: float = 5.0) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.settings.run_dir),
            port=self.settings.db_port,
            user=ADMIN_USER,
            dbname=dbname,
            connect_timeout=max(2, int(timeout)),
            autocommit=True,
            application_name="troveless-guest-agent",
        )

    def ping(self, state: AgentState, timeout: float = 2.0) -> bool:
        try:
            with self._connect(timeout=timeout) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except (psycopg.Error, OSError):
            return False

    def server_version(self, state: AgentState) -> str | None:
        try:
            with self._connect() as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except (psycopg.Error, OSError):
            return None
        return parse_version(row[0]) if row else None

    def stats(self, timeout: float = 2.0) -> tuple[int, int] | None:
        try:
            with self._connect(timeout=timeout) as conn:
                conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
                # Client sessions only (not autovacuum, walwriter...); ours is one of them.
                connections = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ).fetchone()
                size = conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()
        except (psycopg.Error, OSError):
            return None
        return int(connections[0] if connections else 0), int((size[0] if size else 0) or 0)

    # ------------------------------------------------------------ databases and users

    @contextmanager
    def _session(self, action: str, dbname: str = "postgres", **overrides: type[DatastoreError]) -> Iterator[psycopg.Connection]:
        """An admin connection whose errors become the wire's reasons (see _SQLSTATE_ERRORS)."""
        try:
            with self._connect(dbname=dbname) as conn:
                yield conn
        except DatastoreError:
            raise
        except psycopg.Error as exc:
            raise self._error(action, exc, overrides) from None
        except OSError as exc:
            raise NotReady(f"cannot {action}: {exc}") from None

    def _error(self, action: str, exc: psycopg.Error, overrides: dict[str, type[DatastoreError]]) -> DatastoreError:
        state = exc.sqlstate
        text = exc.diag.message_primary if state else (str(exc).strip().splitlines() or [""])[0]
        message = f"cannot {action}: {self.redactor.redact(text or type(exc).__name__)}"
        if state is None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return NotReady(message)  # could not connect, or the connection broke
        if state is not None and state.startswith(("08", "57P")):
            return NotReady(message)
        cls = overrides.get(state or "") or _SQLSTATE_ERRORS.get(state or "")
        if cls is None:
            log.error("%s (SQLSTATE %s)", message, state or "-")
            return DatastoreError(message)
        return cls(message)

    def _verifier(self, conn: psycopg.Connection, name: str, password: str) -> str:
        """Hashed client-side (as psql's \\password): the server, its logs and pg_stat_activity
        only ever see the SCRAM verifier, never the password. SCRAM does not depend on the
        role name, so a renamed role keeps its password (MD5 would be cleared)."""
        return conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()

    def _check_database(self, name: str) -> str:
        _check_identifier("database", name)
        if self.is_reserved_database(name):
            raise InvalidRequest(f"database {name!r} is reserved")
        return name

    def is_reserved_user(self, name: str) -> bool:
        return super().is_reserved_user(name) or name.lower().startswith("pg_")

    def _check_user(self, name: str) -> str:
        _check_identifier("user", name)
        if self.is_reserved_user(name):
            raise InvalidRequest(f"user {name!r} is reserved")
        return name

    @staticmethod
    def _create_database_query(spec: DatabaseSpec) -> sql.Composed:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(spec.name))
        collate = spec.collate
        if spec.character_set:
            query += sql.SQL(" ENCODING {}").format(sql.Literal(spec.character_set))
            if collate is None and spec.character_set.replace("-", "").upper() not in ("UTF8", "UNICODE"):
                collate = "C"  # the default C.UTF-8 locale only fits UTF8; C fits every encoding
        if collate:
            query += sql.SQL(" LC_COLLATE {0} LC_CTYPE {0}").format(sql.Literal(collate))
        # template0: a different encoding/collation than template1's needs a pristine template.
        return query + sql.SQL(" TEMPLATE template0")

    @staticmethod
    def _close_to_public(conn: psycopg.Connection, name: str) -> None:
        """Only users granted the database may connect (PostgreSQL grants CONNECT to PUBLIC)."""
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))

    def create_database(self, state: AgentState, spec: DatabaseSpec) -> None:
        """At prepare time: idempotent (an interrupted prepare is resumed)."""
        _check_identifier("database", spec.name)
        try:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (spec.name,)).fetchone()
                if exists:
                    log.info("database %s exists already", spec.name)
                    return
                conn.execute(self._create_database_query(spec))
                self._close_to_public(conn, spec.name)
        except psycopg.Error as exc:
            raise DatastoreError(f"cannot create database {spec.name!r}: {self.redactor.redact(str(exc))}") from None
        log.info("created database %s", spec.name)

    def create_user(self, state: AgentState, spec: UserSpec) -> None:
        """At prepare time: idempotent (an existing role gets the requested password)."""
        _check_identifier("user", spec.name)
        for db in spec.databases:
            _check_identifier("database", db)
        role = sql.Identifier(spec.name)
        try:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (spec.name,)).fetchone()
                verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
                verifier = self._verifier(conn, spec.name, spec.password)
                conn.execute(sql.SQL("{} {} WITH LOGIN PASSWORD {}").format(verb, role, sql.Literal(verifier)))
                for db in spec.databases:
                    conn.execute(
                        sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(sql.Identifier(db), role)
                    )
            for db in spec.databases:
                self._grant_schema(db, spec.name)
        except psycopg.Error as exc:
            raise DatastoreError(f"cannot create user {spec.name!r}: {self.redactor.redact(str(exc))}") from None
        log.info("created user %s with access to %s", spec.name, ", ".join(spec.databases) or "no databases")

    # -- queries shared by the commands

    def _databases(self, conn: psycopg.Connection) -> list[DatabaseInfo]:
        rows = conn.execute(
            "SELECT datname, pg_encoding_to_char(encoding), datcollate FROM pg_database"
            " WHERE NOT datistemplate AND datallowconn AND datconnlimit <> -2"
        ).fetchall()
        return [
            DatabaseInfo(name=name, character_set=encoding, collate=collate)
            for name, encoding, collate in rows
            if not self.is_reserved_database(name)
        ]

    def _existing_databases(self, conn: psycopg.Connection, names: list[str]) -> set[str]:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s) AND NOT datistemplate", (names,)
        ).fetchall()
        return {name for (name,) in rows}

    def _require_databases(self, conn: psycopg.Connection, names: list[str]) -> None:
        missing = [n for n in names if n not in self._existing_databases(conn, names)]
        if missing:
            raise NotFound(f"database {missing[0]!r} does not exist")

    def _login_role_oid(self, conn: psycopg.Connection, name: str) -> int:
        row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s AND rolcanlogin", (name,)).fetchone()
        if row is None:
            raise NotFound(f"user {name!r} does not exist")
        return int(row[0])

    def _access(self, conn: psycopg.Connection, names: list[str]) -> dict[str, list[str]]:
        """The user databases each role may connect to (its grants, PUBLIC's, or superuser)."""
        rows = conn.execute(
            "SELECT r.rolname, d.datname FROM pg_roles r CROSS JOIN pg_database d"
            " WHERE r.rolname = ANY(%s) AND NOT d.datistemplate AND d.datallowconn AND d.datconnlimit <> -2"
            " AND has_database_privilege(r.oid, d.oid, 'CONNECT')",
            (names,),
        ).fetchall()
        access: dict[str, list[str]] = {name: [] for name in names}
        for role, db in rows:
            if not self.is_reserved_database(db):
                access[role].append(db)
        return {role: sorted(dbs) for role, dbs in access.items()}

    def _grant_schema(self, db: str, role: str) -> None:
        """PostgreSQL 15 no longer lets everyone create in schema public: grant it per database
        (as Trove does), connected to that database."""
        with self._connect(dbname=db) as conn:
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone():
                conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))

    @staticmethod
    def _terminate(conn: psycopg.Connection, role: str, db: str | None = None) -> None:
        """End the role's sessions (in one database), waiting up to 5 s for each to go."""
        query = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
        args: tuple[object, ...] = (role,)
        if db is not None:
            query += " AND datname = %s"
            args += (db,)
        conn.execute(query, args)

    def _drop_role(self, conn: psycopg.Connection, name: str, oid: int) -> None:
        """What the role owns goes to os_admin (data survives), its privileges go, then the role."""
        role = sql.Identifier(name)
        reassign = sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, sql.Identifier(ADMIN_USER))
        drop_owned = sql.SQL("DROP OWNED BY {}").format(role)
        dbs = conn.execute(
            "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s AND d.datallowconn"
            " AND d.datname <> current_database()",
            (oid,),
        ).fetchall()
        for (db,) in dbs:
            with self._connect(dbname=db) as other:
                other.execute(reassign)
                other.execute(drop_owned)
        # This database, and shared objects (grants on databases, databases it owns).
        conn.execute(reassign)
        conn.execute(drop_owned)
        conn.execute(sql.SQL("DROP ROLE {}").format(role))

    # -- the commands

    def list_databases(self, limit: int, marker: str | None) -> tuple[list[DatabaseInfo], str | None]:
        with self._session("list databases") as conn:
            databases = self._databases(conn)
        return paginate(databases, lambda d: d.name, limit, marker)

    def create_databases(self, specs: list[DatabaseSpec]) -> None:
        if not specs:
            raise InvalidRequest("no databases to create")
        names = [self._check_database(spec.name) for spec in specs]
        if len(set(names)) != len(names):
            raise InvalidRequest("a database appears more than once in the request")
        for spec in specs:
            for kind, value in (("character set", spec.character_set), ("collation", spec.collate)):
                if value is not None:
                    check_text(kind, value, 64)
        created: list[str] = []
        with self._session("create databases", **{"42704": InvalidRequest}) as conn:
            clash = {n for (n,) in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))}
            if clash:
                raise AlreadyExists(f"database {sorted(clash)[0]!r} exists already")
            for spec in specs:
                if spec.character_set and conn.execute(
                    "SELECT pg_char_to_encoding(%s)", (spec.character_set,)
                ).fetchone() == (-1,):
                    raise InvalidRequest(f"unknown character set {spec.character_set!r}")
            try:
                for spec in specs:
                    conn.execute(self._create_database_query(spec))
                    created.append(spec.name)
                    self._close_to_public(conn, spec.name)
            except psycopg.Error:
                for name in created:  # all or nothing
                    try:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                    except psycopg.Error as exc:
                        log.warning("could not drop database %s after a failed create: %s", name, exc)
                raise
        log.info("created databases %s", ", ".join(names))

    def delete_database(self, name: str) -> None:
        self._check_database(name)
        with self._session(f"delete database {name!r}") as conn:
            self._require_databases(conn, [name])
            # FORCE: its open connections are terminated first.
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        log.info("deleted database %s", name)

    def list_users(self, limit: int, marker: str | None) -> tuple[list[UserInfo], str | None]:
        with self._session("list users") as conn:
            names = [
                name for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolcanlogin").fetchall()
                if not self.is_reserved_user(name)
            ]
            page, last = paginate(
                [(name, "%") for name in names], lambda a: a, limit,
                split_user_marker(marker) if marker is not None else None,
            )
            access = self._access(conn, [name for name, _ in page])
        users = [UserInfo(name=name, host="%", databases=access[name]) for name, _ in page]
        return users, (f"{last[0]}@{last[1]}" if last else None)

    def get_user(self, name: str, host: str | None) -> UserInfo:
        self._check_user(name)
        with self._session(f"show user {name!r}") as conn:
            self._login_role_oid(conn, name)
            return UserInfo(name=name, host="%", databases=self._access(conn, [name])[name])

    def create_users(self, specs: list[UserSpec]) -> None:
        if not specs:
            raise InvalidRequest("no users to create")
        names = [self._check_user(spec.name) for spec in specs]
        if len(set(names)) != len(names):
            raise InvalidRequest("a user appears more than once in the request")
        for spec in specs:
            check_password(spec.password)
            for db in spec.databases:
                self._check_database(db)
        with self._session("create users") as conn:
            clash = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchall()
            if clash:
                raise AlreadyExists(f"user {clash[0][0]!r} exists already")
            self._require_databases(conn, sorted({db for spec in specs for db in spec.databases}))
            with conn.transaction():  # roles and database grants: all or nothing
                for spec in specs:
                    role = sql.Identifier(spec.name)
                    verifier = self._verifier(conn, spec.name, spec.password)
                    conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(verifier)))
                    for db in spec.databases:
                        conn.execute(
                            sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(sql.Identifier(db), role)
                        )
            try:
                for spec in specs:
                    for db in spec.databases:
                        self._grant_schema(db, spec.name)
            except psycopg.Error:
                for spec in specs:  # e.g. a database dropped meanwhile: undo the roles
                    try:
                        self._drop_role(conn, spec.name, self._login_role_oid(conn, spec.name))
                    except (psycopg.Error, DatastoreError) as exc:
                        log.warning("could not drop user %s after a failed create: %s", spec.name, exc)
                raise
        log.info("created users %s", ", ".join(names))

    def delete_user(self, ref: UserRef) -> None:
        self._check_user(ref.name)
        with self._session(f"delete user {ref.name!r}") as conn:
            oid = self._login_role_oid(conn, ref.name)
            self._terminate(conn, ref.name)
            self._drop_role(conn, ref.name, oid)
        log.info("deleted user %s", ref.name)

    def update_user(
        self, ref: UserRef, new_name: str | None, new_password: str | None, new_host: str | None
    ) -> None:
        self._check_user(ref.name)
        if new_host not in (None, "%"):
            raise InvalidRequest("PostgreSQL users have no host; use '%'")
        if new_name is not None:
            self._check_user(new_name)
        if new_password is not None:
            check_password(new_password)
        with self._session(f"update user {ref.name!r}") as conn, conn.transaction():
            self._login_role_oid(conn, ref.name)
            name = ref.name
            if new_name is not None and new_name != ref.name:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (new_name,)).fetchone():
                    raise AlreadyExists(f"user {new_name!r} exists already")
                conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(new_name)))
                name = new_name
            if new_password is not None:
                verifier = self._verifier(conn, name, new_password)
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier)))
        log.info("updated user %s", ref.name if name == ref.name else f"{ref.name} -> {name}")

    def change_passwords(self, changes: list[PasswordChange]) -> None:
        if not changes:
            raise InvalidRequest("no passwords to change")
        names = [self._check_user(change.name) for change in changes]
        if len(set(names)) != len(names):
            raise InvalidRequest("a user appears more than once in the request")
        for change in changes:
            check_password(change.password)
        with self._session("change passwords") as conn, conn.transaction():
            found = {n for (n,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin", (names,))}
            missing = [n for n in names if n not in found]
            if missing:
                raise NotFound(f"user {missing[0]!r} does not exist; no password was changed")
            for change in changes:
                verifier = self._verifier(conn, change.name, change.password)
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(change.name), sql.Literal(verifier)))
        log.info("changed the passwords of %s", ", ".join(names))

    def grant_access(self, ref: UserRef, databases: list[str]) -> None:
        self._check_user(ref.name)
        if not databases:
            raise InvalidRequest("no databases to grant")
        for db in databases:
            self._check_database(db)
        with self._session(f"grant access to {ref.name!r}") as conn:
            self._login_role_oid(conn, ref.name)
            self._require_databases(conn, databases)
            with conn.transaction():
                for db in databases:
                    conn.execute(sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                        sql.Identifier(db), sql.Identifier(ref.name)))
            for db in databases:
                self._grant_schema(db, ref.name)
        log.info("granted %s access to %s", ref.name, ", ".join(databases))

    def revoke_access(self, ref: UserRef, database: str) -> None:
        self._check_user(ref.name)
        self._check_database(database)
        role, db = sql.Identifier(ref.name), sql.Identifier(database)
        with self._session(f"revoke access of {ref.name!r} to {database!r}") as conn:
            self._login_role_oid(conn, ref.name)
            if database not in self._access(conn, [ref.name])[ref.name]:
                raise NotFound(f"user {ref.name!r} has no access to database {database!r}")
            with conn.transaction():
                conn.execute(sql.SQL("REVOKE ALL PRIVILEGES ON DATABASE {} FROM {}").format(db, role))
                self._close_to_public(conn, database)  # as Trove: no access through PUBLIC either
            with self._connect(dbname=database) as other:
                if other.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone():
                    other.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(role))
            self._terminate(conn, ref.name, database)
        log.info("revoked access of %s to %s", ref.name, database)

    def list_access(self, ref: UserRef) -> list[str]:
        self._check_user(ref.name)
        with self._session(f"list access of {ref.name!r}") as conn:
            self._login_role_oid(conn, ref.name)
            return self._access(conn, [ref.name])[ref.name]

    def enable_root(self, password: str) -> str:
        check_password(password)
        with self._session("enable root") as conn, conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROOT_ROLE,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            verifier = self._verifier(conn, ROOT_ROLE, password)
            conn.execute(sql.SQL("{} {} WITH SUPERUSER LOGIN PASSWORD {}").format(
                verb, sql.Identifier(ROOT_ROLE), sql.Literal(verifier)))
        log.info("root enabled")
        return ROOT_ROLE

    def disable_root(self) -> None:
        with self._session("disable root") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROOT_ROLE,)).fetchone():
                return
            verifier = self._verifier(conn, ROOT_ROLE, random_password())
            conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD {}").format(
                sql.Identifier(ROOT_ROLE), sql.Literal(verifier)))
            self._terminate(conn, ROOT_ROLE)
        log.info("root disabled")
