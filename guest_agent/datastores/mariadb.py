"""MariaDB: mariadb-install-db, my.cnf sized for the flavor, admin connection, databases and users.

Admin access: the cluster is initialised with `--auth-root-authentication-method=socket
--auth-root-socket-user=<agent OS user>`, so the account named like the agent's OS user
(`root`@`localhost` when the agent is root) authenticates with `unix_socket`: the server checks
the peer uid of the socket connection. No admin password exists anywhere, and the socket
lives in DIR/run (0700, owned by the db user), which only root and the db user can enter.

Quoting: values (user names, hosts, password hashes) are bound with PyMySQL's parameter
escaping (account names are string literals in CREATE/ALTER/RENAME/DROP USER, GRANT and REVOKE);
identifiers (database names) are validated and backtick-quoted with embedded backticks doubled.
In GRANT/REVOKE a database name is a LIKE pattern: `_` and `%` are escaped with a backslash
there, so a grant on `my_db` does not also open `myXdb` (mysql.db keeps the escaped form).
Character sets and collations are looked up in information_schema and used in their
canonical spelling (they are names, not data). Passwords reach the server only as
mysql_native_password hashes, so no statement or log line ever holds one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql

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
    running_as_root,
    write_private,
)
from guest_agent.settings import Settings
from guest_agent.state import AgentState

log = logging.getLogger(__name__)

DEFAULT_MARIADBD = Path("/usr/sbin/mariadbd")
_SIZE = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _render(value: bool | int | float | str) -> str:
    """A configuration-group value as an option-file value."""
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    if isinstance(value, (int, float)):
        return repr(value)
    if "\n" in value or '"' in value:
        raise InvalidRequest("option values may not contain double quotes or line breaks")
    return value


def _sql_value(text: str | None) -> object:
    """An option-file value as SET GLOBAL takes it: sizes with a suffix ("512M") as numbers
    (SET does not take suffixes), numbers unquoted, anything else as a string."""
    if text is None:
        return "ON"  # a bare flag
    match = _SIZE.match(text)
    if match:
        return int(match.group(1)) * _SIZE_FACTOR[match.group(2).upper()]
    try:
        return float(text) if any(ch in text for ch in ".eE") else text
    except ValueError:
        return text
MAX_DB_NAME = 64
MAX_USER_NAME = 80  # MariaDB >= 10.0 (MySQL 5.7+ allows only 32)
MAX_HOST_NAME = 255
_CHARSET = re.compile(r"^[A-Za-z0-9_]{1,64}$")


ROOT_USER = "root"
ROOT_HOST = "%"  # root@localhost is the agent's own socket admin: never touched


def _check_bmp(kind: str, value: str) -> None:
    """MariaDB keeps names in utf8mb3: it refuses (databases) or silently turns into '?'
    (user names, hosts) any character outside the Basic Multilingual Plane."""
    if any(ord(c) > 0xFFFF for c in value):
        raise InvalidRequest(f"invalid {kind} {value!r}: characters beyond U+FFFF (such as emoji) are not supported")


def quote_ident(name: str) -> str:
    """Backtick-quote an identifier after validating it (MariaDB's own rules for names)."""
    check_text("name", name)
    if len(name) > MAX_DB_NAME:
        raise InvalidRequest(f"invalid name {name[:80]!r}: 1 to {MAX_DB_NAME} characters")
    if name != name.rstrip(" ") or any(ord(c) < 32 for c in name):
        raise InvalidRequest(f"invalid name {name!r}: control characters or trailing spaces")
    _check_bmp("name", name)
    return "`" + name.replace("`", "``") + "`"


def grant_pattern(name: str) -> str:
    """A database name as GRANT/REVOKE match it: LIKE wildcards escaped (see the module doc)."""
    return name.replace("_", "\\_").replace("%", "\\%")


def unescape_pattern(pattern: str) -> str:
    """mysql.db's Db column back to a name (`\\_` -> `_`); unescaped wildcards stay as they are."""
    out, chars = [], iter(pattern)
    for c in chars:
        out.append(next(chars, "\\") if c == "\\" else c)
    return "".join(out)


def quote_pattern(pattern: str) -> str:
    """A grant pattern (already escaped) as a backtick-quoted identifier."""
    if len(pattern) > MAX_DB_NAME:
        raise InvalidRequest(
            f"cannot grant access to {unescape_pattern(pattern)!r}: with its _ and % escaped the name is "
            f"longer than MariaDB's {MAX_DB_NAME} characters for a grant"
        )
    return "`" + pattern.replace("`", "``") + "`"


# MariaDB error numbers -> the wire's reasons.
_ERRNO_ERRORS: dict[int, type[DatastoreError]] = {
    1007: AlreadyExists,  # ER_DB_CREATE_EXISTS
    1008: NotFound,  # ER_DB_DROP_EXISTS
    1049: NotFound,  # ER_BAD_DB_ERROR
    1141: NotFound,  # ER_NONEXISTING_GRANT
    1133: NotFound,  # ER_PASSWORD_NO_MATCH
    1102: InvalidRequest,  # ER_WRONG_DB_NAME
    1103: InvalidRequest,  # ER_WRONG_TABLE_NAME
    1059: InvalidRequest,  # ER_TOO_LONG_IDENT
    1115: InvalidRequest,  # ER_UNKNOWN_CHARACTER_SET
    1273: InvalidRequest,  # ER_UNKNOWN_COLLATION
    1253: InvalidRequest,  # ER_COLLATION_CHARSET_MISMATCH
    1300: InvalidRequest,  # ER_INVALID_CHARACTER_STRING
    1366: InvalidRequest,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    1470: InvalidRequest,  # ER_WRONG_STRING_LENGTH (user or host name too long)
    1105: InvalidRequest,  # ER_UNKNOWN_ERROR (e.g. malformed host name)
}
# Cannot connect, lost the connection, server shutting down, too many connections.
_NOT_READY_ERRNOS = {1040, 1053, 2002, 2003, 2006, 2013, 2026, 2055}


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
    check_text("user name", name, MAX_USER_NAME)
    check_text("host", host, MAX_HOST_NAME)
    _check_bmp("user name", name)
    _check_bmp("host", host)
    if "@" in host:
        raise InvalidRequest(f"invalid host {host!r}: it contains '@'")
    # The privilege tables are CHAR columns: trailing spaces would be lost on the way back.
    for kind, value in (("user name", name), ("host", host)):
        if value != value.rstrip(" "):
            raise InvalidRequest(f"invalid {kind} {value!r}: trailing spaces")


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
        # PUBLIC: MariaDB 10.11's pseudo-role for grants to everyone.
        self.reserved_users = frozenset({"root", "mariadb.sys", "mysql", "os_admin", "public", self.admin_user.lower()})
        self._version: str | None = None

    def binaries(self) -> str:
        return str(self.mariadbd.parent)

    def binaries_version(self, location: str) -> str:
        binary = Path(location) / "mariadbd"
        if not binary.is_file():
            raise InvalidRequest(f"no mariadbd in {location}")
        return parse_version(run_as(self.user, [str(binary), "--version"], timeout=30).split("Ver", 1)[-1])

    def use_binaries(self, location: str) -> None:
        if not (Path(location) / "mariadbd").is_file():
            raise InvalidRequest(f"no mariadbd in {location}")
        self.mariadbd = Path(location) / "mariadbd"
        self._version = None

    def major(self, version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", version))[:2]  # 10.11

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

    protected_settings = frozenset({
        "datadir", "bind_address", "port", "socket", "pid_file", "tmpdir", "skip_name_resolve",
        "local_infile", "symbolic_links", "user", "basedir", "plugin_dir", "log_error",
        "secure_file_priv", "skip_networking", "skip_grant_tables", "init_file", "general_log_file",
        "slow_query_log_file", "log_bin", "log_bin_basename",
    })

    def effective_config(self, state: AgentState) -> dict[str, str | None]:
        """The platform's settings, then the group's (replacing the same option, whichever
        of '-' or '_' it is spelled with)."""
        values = {key.replace("-", "_"): value for key, value in self.config_values(state).items()}
        values.update({name: _render(value) for name, value in state.overrides.items()})
        return values

    def write_config(self, state: AgentState) -> None:
        lines = ["# Written by the Troveless guest agent; changes are overwritten.", "[mysqld]"]
        for key, value in self.effective_config(state).items():
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

    def template_values(self, state: AgentState) -> dict[str, str]:
        return {key: "ON" if value is None else value for key, value in self.config_values(state).items()}

    def apply_overrides(self, before: AgentState, after: AgentState, restart_required: set[str]) -> tuple[list[str], list[str]]:
        """SET GLOBAL every changed setting the server can change live (a removed one goes
        back to the platform's value, else the server's default); the server's own
        read-only answer (1238) marks a setting as waiting for the restart."""
        old, new = self.effective_config(before), self.effective_config(after)
        changed = sorted(name for name in before.overrides.keys() | after.overrides.keys()
                         if old.get(name) != new.get(name))
        applied: list[str] = []
        pending: list[str] = []
        undo: list[tuple[str, object]] = []
        try:
            conn = self._connect()
        except (pymysql.MySQLError, OSError) as exc:
            raise NotReady(f"the server does not answer: {exc}") from exc
        try:
            with conn.cursor() as cur:
                for name in changed:
                    if name in restart_required:
                        pending.append(name)
                        continue
                    try:
                        cur.execute(f"SELECT @@GLOBAL.{name}")  # the name matched _SETTING_NAME
                        previous = cur.fetchone()[0]
                        if name in new:
                            cur.execute(f"SET GLOBAL {name} = %s", (_sql_value(new[name]),))
                        else:
                            cur.execute(f"SET GLOBAL {name} = DEFAULT")
                    except pymysql.MySQLError as exc:
                        if exc.args and exc.args[0] == 1238:  # read-only: a startup option
                            pending.append(name)
                            continue
                        self._undo(cur, undo)
                        raise InvalidRequest(f"{name}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
                    undo.append((name, previous))
                    applied.append(name)
        finally:
            conn.close()
        return applied, pending

    @staticmethod
    def _undo(cur: pymysql.cursors.Cursor, undo: list[tuple[str, object]]) -> None:
        for name, previous in reversed(undo):
            try:
                cur.execute(f"SET GLOBAL {name} = %s", (previous,))
            except pymysql.MySQLError as exc:
                log.warning("could not restore %s: %s", name, exc)

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

    def stats(self, timeout: float = 2.0) -> tuple[int, int] | None:
        try:
            conn = self._connect(timeout)
        except (pymysql.MySQLError, OSError):
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                row = cur.fetchone()
                connections = int(row[1]) if row else 0
                cur.execute(
                    f"SET STATEMENT max_statement_time={max(0.1, timeout):g} FOR "
                    "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
                )
                size = cur.fetchone()
        except (pymysql.MySQLError, OSError, ValueError):
            return None
        finally:
            conn.close()
        return connections, int(size[0] if size else 0)

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
        """At prepare time: idempotent (an interrupted prepare is resumed)."""
        query = f"CREATE DATABASE IF NOT EXISTS {quote_ident(spec.name)}"
        if spec.character_set:
            query += f" CHARACTER SET {_check_charset('character set', spec.character_set)}"
        if spec.collate:
            query += f" COLLATE {_check_charset('collation', spec.collate)}"
        self._run(f"create database {spec.name!r}", [(query, None)])
        log.info("created database %s", spec.name)

    def create_user(self, state: AgentState, spec: UserSpec) -> None:
        """At prepare time: idempotent (an existing user gets the requested password)."""
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
            quote_ident(db)
            target = _for_format(quote_pattern(grant_pattern(db)))
            statements.append((f"GRANT ALL PRIVILEGES ON {target}.* TO %s@%s", account))
        self._run(f"create user {spec.name!r}", statements)
        log.info("created user %s@%s with access to %s", spec.name, host, ", ".join(spec.databases) or "no databases")

    # ------------------------------------------------------------ databases and users

    @contextmanager
    def _session(self, action: str, **overrides: type[DatastoreError]) -> Iterator[_Cursor]:
        """An admin cursor whose errors become the wire's reasons (see _ERRNO_ERRORS);
        `overrides` maps an errno (as "e1396") to another reason for this command."""
        try:
            conn = self._connect()
        except (pymysql.MySQLError, OSError) as exc:
            raise NotReady(f"cannot {action}: the server is not reachable: {exc}") from None
        try:
            with conn.cursor() as cur:
                yield _Cursor(cur)
        except DatastoreError:
            raise
        except pymysql.MySQLError as exc:
            raise self._error(action, exc, overrides) from None
        except OSError as exc:
            raise NotReady(f"cannot {action}: {exc}") from None
        finally:
            try:
                conn.close()
            except (pymysql.MySQLError, OSError):
                pass

    def _error(self, action: str, exc: pymysql.MySQLError, overrides: dict[str, type[DatastoreError]]) -> DatastoreError:
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        message = f"cannot {action}: {self.redactor.redact(str(text))}"
        if errno in _NOT_READY_ERRNOS or isinstance(exc, pymysql.err.InterfaceError):
            return NotReady(message)
        cls = overrides.get(f"e{errno}") or _ERRNO_ERRORS.get(errno)
        if cls is None:
            log.error("%s (error %s)", message, errno)
            return DatastoreError(message)
        return cls(message)

    def _check_database(self, name: str) -> str:
        quote_ident(name)
        if "\\" in name:
            raise InvalidRequest(f"invalid database name {name!r}: backslashes are not supported")
        if self.is_reserved_database(name):
            raise InvalidRequest(f"database {name!r} is reserved")
        return name

    def _account(self, name: str, host: str | None) -> tuple[str, str]:
        host = host or "%"
        _check_account(name, host)
        if self.is_reserved_user(name):
            raise InvalidRequest(f"user {name!r} is reserved")
        return name, host

    def _databases(self, cur: _Cursor) -> list[DatabaseInfo]:
        rows = cur.all(
            "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
        )
        return [
            DatabaseInfo(name=name, character_set=charset, collate=collation)
            for name, charset, collation in rows
            if not self.is_reserved_database(name)
        ]

    def _database_names(self, cur: _Cursor) -> set[str]:
        return {name for (name,) in cur.all("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")}

    def _require_databases(self, cur: _Cursor, names: list[str]) -> None:
        existing = self._database_names(cur)
        missing = [n for n in names if n not in existing]
        if missing:
            raise NotFound(f"database {missing[0]!r} does not exist")

    def _accounts(self, cur: _Cursor) -> set[tuple[str, str]]:
        """Every account and role (names compared exactly, in Python: MariaDB's are case-sensitive)."""
        return {(user, host) for user, host in cur.all("SELECT User, Host FROM mysql.user")}

    def _require_account(self, cur: _Cursor, account: tuple[str, str]) -> None:
        if account not in self._accounts(cur):
            raise NotFound(f"user {account[0]!r}@{account[1]!r} does not exist")

    def _grants(self, cur: _Cursor) -> list[tuple[str, str, str]]:
        """Database-level grants: (user, host, stored pattern)."""
        return [(u, h, db) for u, h, db in cur.all("SELECT User, Host, Db FROM mysql.db")]

    def _access(self, cur: _Cursor, accounts: list[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """The existing user databases each account has a grant on (read from mysql.db)."""
        existing = self._database_names(cur)
        wanted = set(accounts)
        access: dict[tuple[str, str], set[str]] = {a: set() for a in accounts}
        for user, host, pattern in self._grants(cur):
            name = unescape_pattern(pattern)
            if (user, host) in wanted and name in existing and not self.is_reserved_database(name):
                access[(user, host)].add(name)
        return {a: sorted(dbs) for a, dbs in access.items()}

    def _grant(self, cur: _Cursor, account: tuple[str, str], db: str) -> None:
        target = _for_format(quote_pattern(grant_pattern(db)))
        cur.run(f"GRANT ALL PRIVILEGES ON {target}.* TO %s@%s", account)

    def _revoke_patterns(self, cur: _Cursor, database: str, account: tuple[str, str] | None = None) -> int:
        """Revoke every database-level grant naming exactly `database` (escaped or not)."""
        count = 0
        for user, host, pattern in self._grants(cur):
            if unescape_pattern(pattern) == database and (account is None or (user, host) == account):
                target = _for_format("`" + pattern.replace("`", "``") + "`")
                cur.run(f"REVOKE ALL PRIVILEGES ON {target}.* FROM %s@%s", (user, host))
                count += 1
        return count

    # -- the commands

    def list_databases(self, limit: int, marker: str | None) -> tuple[list[DatabaseInfo], str | None]:
        with self._session("list databases") as cur:
            databases = self._databases(cur)
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
        with self._session("create databases") as cur:
            clauses = [self._charset_clause(cur, spec) for spec in specs]
            clash = sorted(set(names) & self._database_names(cur))
            if clash:
                raise AlreadyExists(f"database {clash[0]!r} exists already")
            try:
                for spec, clause in zip(specs, clauses):
                    cur.run(f"CREATE DATABASE {_for_format(quote_ident(spec.name))}{clause}")
                    created.append(spec.name)
            except pymysql.MySQLError:
                for name in created:  # all or nothing
                    try:
                        cur.run(f"DROP DATABASE IF EXISTS {_for_format(quote_ident(name))}")
                    except pymysql.MySQLError as exc:
                        log.warning("could not drop database %s after a failed create: %s", name, exc)
                raise
        log.info("created databases %s", ", ".join(names))

    def _charset_clause(self, cur: _Cursor, spec: DatabaseSpec) -> str:
        """CHARACTER SET / COLLATE in their canonical names, after checking that they exist."""
        clause, charset = "", None
        if spec.character_set is not None:
            row = cur.one(
                "SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME = %s",
                (spec.character_set,),
            )
            if row is None:
                raise InvalidRequest(f"unknown character set {spec.character_set!r}")
            charset = row[0]
            clause += f" CHARACTER SET {_check_charset('character set', charset)}"
        if spec.collate is not None:
            row = cur.one(
                "SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME = %s",
                (spec.collate,),
            )
            if row is None:
                raise InvalidRequest(f"unknown collation {spec.collate!r}")
            if charset is not None and row[1] != charset:
                raise InvalidRequest(f"collation {row[0]!r} is not valid for character set {charset!r}")
            clause += f" COLLATE {_check_charset('collation', row[0])}"
        return clause

    def delete_database(self, name: str) -> None:
        self._check_database(name)
        quoted = _for_format(quote_ident(name))
        with self._session(f"delete database {name!r}") as cur:
            self._require_databases(cur, [name])
            # MariaDB keeps grants on dropped databases: a new database of that name would
            # open to the old users again. They go first.
            self._revoke_patterns(cur, name)
            cur.run(f"DROP DATABASE {quoted}")
        log.info("deleted database %s", name)

    def list_users(self, limit: int, marker: str | None) -> tuple[list[UserInfo], str | None]:
        with self._session("list users") as cur:
            accounts = [
                (user, host)
                for user, host in cur.all("SELECT User, Host FROM mysql.user WHERE is_role = 'N'")
                if user and not self.is_reserved_user(user)
            ]
            page, last = paginate(
                accounts, lambda a: a, limit, split_user_marker(marker) if marker is not None else None
            )
            access = self._access(cur, page)
        users = [UserInfo(name=u, host=h, databases=access[(u, h)]) for u, h in page]
        return users, (f"{last[0]}@{last[1]}" if last else None)

    def get_user(self, name: str, host: str | None) -> UserInfo:
        account = self._account(name, host)
        with self._session(f"show user {name!r}") as cur:
            self._require_account(cur, account)
            return UserInfo(name=account[0], host=account[1], databases=self._access(cur, [account])[account])

    def create_users(self, specs: list[UserSpec]) -> None:
        if not specs:
            raise InvalidRequest("no users to create")
        accounts = [self._account(spec.name, spec.host) for spec in specs]
        if len(set(accounts)) != len(accounts):
            raise InvalidRequest("a user appears more than once in the request")
        for spec in specs:
            check_password(spec.password)
            for db in spec.databases:
                self._check_database(db)
                quote_pattern(grant_pattern(db))
        created: list[tuple[str, str]] = []
        with self._session("create users", e1396=AlreadyExists) as cur:
            clash = [a for a in accounts if a in self._accounts(cur)]
            if clash:
                raise AlreadyExists(f"user {clash[0][0]!r}@{clash[0][1]!r} exists already")
            self._require_databases(cur, sorted({db for spec in specs for db in spec.databases}))
            try:
                for spec, account in zip(specs, accounts):
                    cur.run("CREATE USER %s@%s IDENTIFIED BY PASSWORD %s", (*account, native_password_hash(spec.password)))
                    created.append(account)
                    for db in spec.databases:
                        self._grant(cur, account, db)
            except pymysql.MySQLError:
                for account in created:  # all or nothing
                    try:
                        cur.run("DROP USER IF EXISTS %s@%s", account)
                    except pymysql.MySQLError as exc:
                        log.warning("could not drop user %s after a failed create: %s", account[0], exc)
                raise
        log.info("created users %s", ", ".join(f"{u}@{h}" for u, h in accounts))

    def delete_user(self, ref: UserRef) -> None:
        account = self._account(ref.name, ref.host)
        with self._session(f"delete user {ref.name!r}", e1396=NotFound) as cur:
            self._require_account(cur, account)
            cur.run("DROP USER %s@%s", account)
        log.info("deleted user %s@%s", *account)

    def update_user(
        self, ref: UserRef, new_name: str | None, new_password: str | None, new_host: str | None
    ) -> None:
        account = self._account(ref.name, ref.host)
        target = self._account(new_name if new_name is not None else account[0], new_host or account[1])
        if new_password is not None:
            check_password(new_password)
        with self._session(f"update user {ref.name!r}", e1396=AlreadyExists) as cur:
            accounts = self._accounts(cur)
            if account not in accounts:
                raise NotFound(f"user {account[0]!r}@{account[1]!r} does not exist")
            if target != account:
                if target in accounts:
                    raise AlreadyExists(f"user {target[0]!r}@{target[1]!r} exists already")
                # Grants follow: RENAME USER rewrites mysql.db and the other privilege tables.
                cur.run("RENAME USER %s@%s TO %s@%s", (*account, *target))
            if new_password is not None:
                cur.run("ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", (*target, native_password_hash(new_password)))
        log.info("updated user %s@%s%s", *account, "" if target == account else f" -> {target[0]}@{target[1]}")

    def change_passwords(self, changes: list[PasswordChange]) -> None:
        if not changes:
            raise InvalidRequest("no passwords to change")
        accounts = [self._account(change.name, change.host) for change in changes]
        if len(set(accounts)) != len(accounts):
            raise InvalidRequest("a user appears more than once in the request")
        for change in changes:
            check_password(change.password)
        with self._session("change passwords", e1396=NotFound) as cur:
            existing = self._accounts(cur)
            missing = [a for a in accounts if a not in existing]
            if missing:
                raise NotFound(f"user {missing[0][0]!r}@{missing[0][1]!r} does not exist; no password was changed")
            # One statement for all of them.
            specs = ", ".join(["%s@%s IDENTIFIED BY PASSWORD %s"] * len(changes))
            args = tuple(v for a, c in zip(accounts, changes) for v in (*a, native_password_hash(c.password)))
            cur.run(f"ALTER USER {specs}", args)
        log.info("changed the passwords of %s", ", ".join(f"{u}@{h}" for u, h in accounts))

    def grant_access(self, ref: UserRef, databases: list[str]) -> None:
        account = self._account(ref.name, ref.host)
        if not databases:
            raise InvalidRequest("no databases to grant")
        for db in databases:
            self._check_database(db)
            quote_pattern(grant_pattern(db))
        with self._session(f"grant access to {ref.name!r}") as cur:
            self._require_account(cur, account)
            self._require_databases(cur, databases)
            for db in databases:
                self._grant(cur, account, db)
        log.info("granted %s@%s access to %s", *account, ", ".join(databases))

    def revoke_access(self, ref: UserRef, database: str) -> None:
        account = self._account(ref.name, ref.host)
        self._check_database(database)
        with self._session(f"revoke access of {ref.name!r} to {database!r}", e1141=NotFound) as cur:
            self._require_account(cur, account)
            if not self._revoke_patterns(cur, database, account):
                raise NotFound(f"user {account[0]!r}@{account[1]!r} has no access to database {database!r}")
        log.info("revoked access of %s@%s to %s", *account, database)

    def list_access(self, ref: UserRef) -> list[str]:
        account = self._account(ref.name, ref.host)
        with self._session(f"list access of {ref.name!r}") as cur:
            self._require_account(cur, account)
            return self._access(cur, [account])[account]

    def enable_root(self, password: str) -> str:
        check_password(password)
        account = (ROOT_USER, ROOT_HOST)
        hashed = native_password_hash(password)
        with self._session("enable root") as cur:
            verb = "ALTER" if account in self._accounts(cur) else "CREATE"
            cur.run(f"{verb} USER %s@%s IDENTIFIED BY PASSWORD %s", (*account, hashed))
            cur.run("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", account)
        log.info("root enabled")
        return ROOT_USER

    def disable_root(self) -> None:
        """A new random password (the account and its grants stay, as Trove), and its network
        sessions end. root@localhost, the agent's own unix_socket admin, is not touched."""
        account = (ROOT_USER, ROOT_HOST)
        with self._session("disable root") as cur:
            if account not in self._accounts(cur):
                return
            cur.run("ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", (*account, native_password_hash(random_password())))
            # Only root@'%' can log in over TCP (root@localhost is unix_socket only), and the
            # agent's own sessions come over the socket ('localhost').
            for (pid,) in cur.all(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND HOST <> 'localhost'"
                " AND ID <> CONNECTION_ID()",
                (ROOT_USER,),
            ):
                try:
                    cur.run("KILL CONNECTION %s", (int(pid),))
                except pymysql.MySQLError as exc:  # it may have gone meanwhile
                    log.info("could not end root session %s: %s", pid, exc)
        log.info("root disabled")


class _Cursor:
    """A PyMySQL cursor that always formats (so a `%` in a quoted identifier is always `%%`)."""

    def __init__(self, cur: pymysql.cursors.Cursor) -> None:
        self.cur = cur

    def run(self, query: str, args: tuple[object, ...] = ()) -> None:
        self.cur.execute(query, args)

    def all(self, query: str, args: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
        self.cur.execute(query, args)
        return list(self.cur.fetchall())

    def one(self, query: str, args: tuple[object, ...] = ()) -> tuple | None:  # type: ignore[type-arg]
        self.cur.execute(query, args)
        return self.cur.fetchone()
