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
from pathlib import Path

import psycopg
from psycopg import sql

from events.guest import DatabaseSpec, UserSpec
from guest_agent.datastores.base import Datastore, DatastoreError, memory_settings_mb, parse_version
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


def _check_identifier(kind: str, name: str) -> None:
    if not name or "\0" in name:
        raise DatastoreError(f"invalid {kind} name {name!r}")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise DatastoreError(f"{kind} name {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")


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

    def write_config(self, state: AgentState) -> None:
        """Rewritten before every start, so a changed address/port/flavor always applies."""
        values = self.config_values(state)
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

    def create_database(self, state: AgentState, spec: DatabaseSpec) -> None:
        _check_identifier("database", spec.name)
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(spec.name))
        if spec.character_set:
            query += sql.SQL(" ENCODING {}").format(sql.Literal(spec.character_set))
        if spec.collate:
            query += sql.SQL(" LC_COLLATE {}").format(sql.Literal(spec.collate))
        # template0: a different encoding/collation than template1's needs a pristine template.
        query += sql.SQL(" TEMPLATE template0")
        try:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (spec.name,)).fetchone()
                if exists:
                    log.info("database %s exists already", spec.name)
                    return
                conn.execute(query)
        except psycopg.Error as exc:
            raise DatastoreError(f"cannot create database {spec.name!r}: {self.redactor.redact(str(exc))}") from None
        log.info("created database %s", spec.name)

    def create_user(self, state: AgentState, spec: UserSpec) -> None:
        _check_identifier("user", spec.name)
        for db in spec.databases:
            _check_identifier("database", db)
        role = sql.Identifier(spec.name)
        try:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (spec.name,)).fetchone()
                verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
                # Hash client-side (as psql's \password does): the server, its logs and
                # pg_stat_activity only ever see the SCRAM verifier, never the password.
                verifier = conn.pgconn.encrypt_password(
                    spec.password.encode(), spec.name.encode(), b"scram-sha-256"
                ).decode()
                conn.execute(sql.SQL("{} {} WITH LOGIN PASSWORD {}").format(verb, role, sql.Literal(verifier)))
                for db in spec.databases:
                    conn.execute(
                        sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(sql.Identifier(db), role)
                    )
            # PostgreSQL 15 no longer lets everyone create in schema public: grant it per
            # database (as Trove does), connected to that database.
            for db in spec.databases:
                with self._connect(dbname=db) as conn:
                    conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(role))
        except psycopg.Error as exc:
            raise DatastoreError(f"cannot create user {spec.name!r}: {self.redactor.redact(str(exc))}") from None
        log.info("created user %s with access to %s", spec.name, ", ".join(spec.databases) or "no databases")
