"""MariaDB: mariadb-install-db, my.cnf sized for the flavor, admin connection, databases and users.

Admin access: the cluster is initialised with `--auth-root-authentication-method=socket
--auth-root-socket-user=<agent OS user>`, so the account named like the agent's OS user
(`root`@`localhost` when the agent is root) authenticates with `unix_socket`: the server checks
the peer uid of the socket connection. No admin password exists anywhere, and the socket
lives in DIR/run (0700, owned by the db user), which only root and the db user can enter.

Quoting: values (user names, hosts, passwords) are bound with PyMySQL's parameter escaping;
identifiers (database names) are validated and backtick-quoted with embedded backticks doubled.
Character sets and collations are checked against a strict pattern (they are names, not data).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

import pymysql

from events.guest import DatabaseSpec, UserSpec
from guest_agent.datastores.base import Datastore, DatastoreError, memory_settings_mb, parse_version
from guest_agent.process import (
    DbUser,
    Redactor,
    agent_os_user,
    chown_tree,
    ensure_dir,
    running_as_root,
    run_as,
    write_private,
)
from guest_agent.settings import Settings
from guest_agent.state import AgentState

log = logging.getLogger(__name__)

DEFAULT_MARIADBD = Path("/usr/sbin/mariadbd")
MAX_DB_NAME = 64
MAX_USER_NAME = 80  # MariaDB >= 10.0 (MySQL 5.7+ allows only 32)
MAX_HOST_NAME = 255
_CHARSET = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def quote_ident(name: str) -> str:
    """Backtick-quote an identifier after validating it (MariaDB's own rules for names)."""
    if not name or len(name) > MAX_DB_NAME:
        raise DatastoreError(f"invalid name {name!r}: 1 to {MAX_DB_NAME} characters")
    if "\0" in name or name != name.rstrip(" ") or any(ord(c) < 32 for c in name):
        raise DatastoreError(f"invalid name {name!r}: control characters or trailing spaces")
    return "`" + name.replace("`", "``") + "`"


def native_password_hash(password: str) -> str:
    """mysql_native_password's stored form: '*' + upper hex SHA1(SHA1(password))."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def _for_format(fragment: str) -> str:
    """PyMySQL applies `query % args`: a literal % inside a quoted identifier must be doubled."""
    return fragment.replace("%", "%%")


def _check_charset(kind: str, value: str) -> str:
    if not _CHARSET.match(value):
        raise DatastoreError(f"invalid {kind} {value!r}")
    return value


def _check_account(name: str, host: str) -> None:
    if not name or len(name) > MAX_USER_NAME or "\0" in name:
        raise DatastoreError(f"invalid user name {name!r}")
    if not host or len(host) > MAX_HOST_NAME or "\0" in host:
        raise DatastoreError(f"invalid host {host!r}")


class MariaDB(Datastore):
    name = "mariadb"
    reserved_databases = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
    process_marker = "mariadbd"

    def __init__(self, settings: Settings, user: DbUser, redactor: Redactor) -> None:
        super().__init__(settings, user, redactor)
        self.mariadbd = settings.mariadb_bin or DEFAULT_MARIADBD
        if not self.mariadbd.exists():
            raise DatastoreError(f"{self.mariadbd} not found")
        # The installer normally sits in bin/ next to an sbin/ server; fall back to PATH.
        sibling = self.mariadbd.parent.parent / "bin" / "mariadb-install-db"
        found = sibling if sibling.exists() else shutil.which("mariadb-install-db")
        if not found:
            raise DatastoreError("mariadb-install-db not found")
        self.install_db = Path(found)
        self.admin_user = agent_os_user()
        self.reserved_users = frozenset({"root", "mariadb.sys", "mysql", "os_admin", self.admin_user})
        self._version: str | None = None

    # ------------------------------------------------------------ files and processes

    @property
    def config_file(self) -> Path:
        return self.settings.instance_dir / "mariadb.cnf"

    @property
    def socket(self) -> Path:
        return self.settings.run_dir / "mysqld.sock"

    def server_pid_file(self) -> Path:
        return self.settings.run_dir / "mysqld.pid"

    def version(self) -> str:
        if self._version is None:
            out = run_as(self.user, [str(self.mariadbd), "--version"], timeout=30)
            self._version = parse_version(out.split("Ver", 1)[-1])
        return self._version

    def is_initialized(self) -> bool:
        return (self.data_dir / "mysql" / "global_priv.frm").exists() or (
            self.data_dir / "mysql" / "user.frm"
        ).exists()

    def initialize(self, state: AgentState) -> None:
        ensure_dir(self.data_dir, 0o700, self.user)
        self.write_config(state)
        run_as(
            self.user,
            [
                str(self.install_db),
                f"--defaults-file={self.config_file}",  # must be the first option
                f"--datadir={self.data_dir}",
                f"--user={self.user.name}",
                "--auth-root-authentication-method=socket",
                f"--auth-root-socket-user={self.admin_user}",
                "--skip-test-db",
            ],
            log_file=self.settings.log_dir / "install-db.log",
            redactor=self.redactor,
        )

    def config_values(self, state: AgentState) -> dict[str, str | None]:
        mem = memory_settings_mb(state.ram_mb)
        ram_mb = max(state.ram_mb, 64)
        run = self.settings.run_dir
        return {
            "datadir": str(self.data_dir),
            "bind-address": self.settings.address,
            "port": str(self.settings.db_port),
            "socket": str(self.socket),
            "pid-file": str(self.server_pid_file()),
            "tmpdir": str(run),
            "skip-name-resolve": None,
            "innodb_buffer_pool_size": f"{mem['half']}M",
            # Threads are cheaper than PostgreSQL backends: one connection per 8 MB.
            "max_connections": str(min(1000, max(20, ram_mb // 8))),
            "innodb_log_file_size": f"{min(512, max(16, mem['half'] // 4))}M",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "local-infile": "0",
            "symbolic-links": "0",
        }

    def write_config(self, state: AgentState) -> None:
        lines = ["# Written by the Troveless guest agent; changes are overwritten.", "[mysqld]"]
        for key, value in self.config_values(state).items():
            if value is not None and ("\n" in value or '"' in value):
                raise DatastoreError(f"unsafe value for {key}: {value!r}")
            if value is None:
                lines.append(key)  # a flag such as skip-name-resolve
            else:
                lines.append(f'{key} = "{value}"' if " " in value else f"{key} = {value}")
        # Owned by the db user, who must read it; it holds no secrets.
        write_private(self.config_file, "\n".join(lines) + "\n", owner=self.user)
        chown_tree(self.data_dir, self.user)

    def server_argv(self) -> list[str]:
        argv = [str(self.mariadbd), f"--defaults-file={self.config_file}"]
        if running_as_root():
            # We already setuid in the child; --user makes mariadbd itself insist on it too.
            argv.append(f"--user={self.user.name}")
        return argv

    # ------------------------------------------------------------ SQL

    def _connect(self, timeout: float = 5.0) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=str(self.socket),
            user=self.admin_user,
            connect_timeout=max(1, int(timeout)),
            read_timeout=30,
            write_timeout=30,
            autocommit=True,
            charset="utf8mb4",
        )

    def ping(self, state: AgentState, timeout: float = 2.0) -> bool:
        try:
            conn = self._connect(timeout)
        except (pymysql.MySQLError, OSError):
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except (pymysql.MySQLError, OSError):
            return False
        finally:
            conn.close()

    def server_version(self, state: AgentState) -> str | None:
        try:
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT VERSION()")
                    row = cur.fetchone()
            finally:
                conn.close()
        except (pymysql.MySQLError, OSError):
            return None
        return parse_version(row[0]) if row else None

    def _run(self, action: str, statements: list[tuple[str, tuple[object, ...] | None]]) -> None:
        try:
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    for query, args in statements:
                        cur.execute(query, args)
            finally:
                conn.close()
        except (pymysql.MySQLError, OSError) as exc:
            raise DatastoreError(f"cannot {action}: {self.redactor.redact(str(exc))}") from None

    def create_database(self, state: AgentState, spec: DatabaseSpec) -> None:
        query = f"CREATE DATABASE IF NOT EXISTS {quote_ident(spec.name)}"
        if spec.character_set:
            query += f" CHARACTER SET {_check_charset('character set', spec.character_set)}"
        if spec.collate:
            query += f" COLLATE {_check_charset('collation', spec.collate)}"
        self._run(f"create database {spec.name!r}", [(query, None)])
        log.info("created database %s", spec.name)

    def create_user(self, state: AgentState, spec: UserSpec) -> None:
        host = spec.host or "%"
        _check_account(spec.name, host)
        account = (spec.name, host)
        # Hash client-side: the server (and any log of statements) only sees the hash.
        hashed = native_password_hash(spec.password)
        statements: list[tuple[str, tuple[object, ...] | None]] = [
            ("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY PASSWORD %s", (*account, hashed)),
            # The user may exist from an earlier, interrupted prepare: make the password current.
            ("ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", (*account, hashed)),
        ]
        for db in spec.databases:
            target = _for_format(quote_ident(db))
            statements.append((f"GRANT ALL PRIVILEGES ON {target}.* TO %s@%s", account))
        self._run(f"create user {spec.name!r}", statements)
        log.info("created user %s@%s with access to %s", spec.name, host, ", ".join(spec.databases) or "no databases")
