"""Generate the configuration-parameter catalogs (functions/core/config_rules/*.json).

    .venv/bin/python infra/dev/config_rules.py [--out-dir DIR] [--datastore postgresql|mariadb]

The catalog of what a configuration group may set is not typed by hand: this script starts a
throwaway server of each datastore, reads the server's own description of its settings, stops
it and writes the JSON files the loader (functions.core.config_rules) reads:

- PostgreSQL: `initdb` into a temporary directory and `postgres` as the `postgres` OS user, on a
  unix socket in that directory and a free loopback port (never 5432); the catalog comes from
  `pg_settings`.
- MariaDB: `mariadb-install-db` and `mariadbd` as the `mysql` OS user, on a unix socket in a
  temporary directory, with networking off; the catalog comes from
  `INFORMATION_SCHEMA.SYSTEM_VARIABLES`.

Only the processes started here are stopped, by their PID; the temporary directories are
removed. The output is sorted by name and holds nothing run-dependent (no timestamps, no
defaults that depend on the machine), so re-running against the same server versions gives
byte-identical files: a test compares a fresh run with the committed ones.

What a DBaaS user may tune is narrower than what the server offers: settings that would take
the server out of the platform's control (file locations, ports and addresses, sockets, TLS
files, libraries, archive/restore commands...) are left out by the deny lists below, each with
its reason, and so is anything that cannot be set globally (PostgreSQL `internal` settings,
MariaDB SESSION ONLY variables and read-only variables without a server option).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
OUT_DIR = REPO / "functions" / "core" / "config_rules"
GENERATED_BY = "infra/dev/config_rules.py"

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADB_INSTALL_DB = "mariadb-install-db"
MARIADBD = "/usr/sbin/mariadbd"

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

# ---------------------------------------------------------------- deny lists
# Each entry: name (or prefix / category) -> why a configuration group must not set it.

PG_DENY: dict[str, str] = {
    # Where the server's files are: the guest agent decides, and writes them itself.
    "data_directory": "data directory location is the platform's",
    "config_file": "configuration file location is the platform's",
    "hba_file": "pg_hba.conf location is the platform's (the agent writes it)",
    "ident_file": "pg_ident.conf location is the platform's (the agent writes it)",
    "external_pid_file": "pid file location is the platform's",
    "krb_server_keyfile": "a file on the server's disk",
    # How the server is reached: the agent and the platform's networking depend on these.
    "listen_addresses": "listen address is set by the platform",
    "port": "port is set by the platform",
    "unix_socket_directories": "the agent's admin connection uses this socket",
    "unix_socket_group": "the agent's admin connection uses the socket",
    "unix_socket_permissions": "the agent's admin connection uses the socket",
    "bonjour": "service advertisement on the host network",
    "bonjour_name": "service advertisement on the host network",
    # Authentication: pg_hba uses scram-sha-256; md5-hashed passwords could no longer log in.
    "password_encryption": "pg_hba.conf requires scram-sha-256 password hashes",
    # user@db names: the agent's os_admin login would no longer match its role.
    "db_user_namespace": "changes how role names are resolved; breaks the agent's login",
    # Code loaded into the server: arbitrary shared libraries.
    "shared_preload_libraries": "loads arbitrary shared libraries into the server",
    "session_preload_libraries": "loads arbitrary shared libraries into the server",
    "local_preload_libraries": "loads arbitrary shared libraries into the server",
    "dynamic_library_path": "where shared libraries are loaded from",
    "jit_provider": "names a shared library to load",
    # Logging: the agent captures stderr into its own log file (logging_collector off).
    "logging_collector": "the agent captures the server's stderr",
    "log_destination": "the agent captures the server's stderr",
    "log_directory": "a log file path (the agent owns the log files)",
    "log_filename": "a log file path (the agent owns the log files)",
    "log_file_mode": "log file permissions (the agent owns the log files)",
    "log_rotation_age": "only with logging_collector, which the agent keeps off",
    "log_rotation_size": "only with logging_collector, which the agent keeps off",
    "log_truncate_on_rotation": "only with logging_collector, which the agent keeps off",
    "syslog_facility": "only with log_destination=syslog, which the agent does not use",
    "syslog_ident": "only with log_destination=syslog, which the agent does not use",
    "syslog_sequence_numbers": "only with log_destination=syslog, which the agent does not use",
    "syslog_split_messages": "only with log_destination=syslog, which the agent does not use",
    "event_source": "Windows event log only",
    # Backups, WAL archiving, recovery and replication are driven by the platform.
    "wal_level": "backups (pg_basebackup) need wal_level >= replica",
    "max_wal_senders": "backups (pg_basebackup) need a WAL sender",
    "archive_mode": "WAL archiving is the platform's",
    "archive_command": "runs a shell command as the server's OS user",
    "archive_library": "loads a shared library",
    "restore_command": "runs a shell command; recovery is the platform's",
    "archive_cleanup_command": "runs a shell command; recovery is the platform's",
    "recovery_end_command": "runs a shell command; recovery is the platform's",
    "recovery_target": "recovery is the platform's",
    "recovery_target_action": "recovery is the platform's",
    "recovery_target_inclusive": "recovery is the platform's",
    "recovery_target_lsn": "recovery is the platform's",
    "recovery_target_name": "recovery is the platform's",
    "recovery_target_time": "recovery is the platform's",
    "recovery_target_timeline": "recovery is the platform's",
    "recovery_target_xid": "recovery is the platform's",
    "primary_conninfo": "replication is the platform's (and holds a password)",
    "primary_slot_name": "replication is the platform's",
    "promote_trigger_file": "a file path; promotion is the platform's",
    # Not settable in a configuration file (GUC_DISALLOW_IN_FILE): per-session only.
    "transaction_isolation": "per transaction only; use default_transaction_isolation",
    "transaction_read_only": "per transaction only; use default_transaction_read_only",
    "transaction_deferrable": "per transaction only; use default_transaction_deferrable",
}
PG_DENY_PREFIXES: dict[str, str] = {
    "ssl": "TLS certificates, keys and protocol are the platform's",
}
PG_DENY_CATEGORIES: dict[str, str] = {
    # allow_system_table_mods, zero_damaged_pages, ignore_checksum_failure, trace_*, ...
    "Developer Options": "debugging switches that can corrupt data or crash the server",
}

MARIADB_DENY: dict[str, str] = {
    # Where the server's files are: the guest agent decides.
    "datadir": "data directory location is the platform's",
    "basedir": "installation directory",
    "tmpdir": "temporary directory location is the platform's",
    "pid_file": "pid file location is the platform's",
    "plugin_dir": "where plugins (shared libraries) are loaded from",
    "plugin_maturity": "which plugins may be loaded",
    "character_sets_dir": "a directory on the server's disk",
    "lc_messages_dir": "a directory on the server's disk",
    "log_basename": "base name of every log file path",
    "log_error": "a log file path (the agent owns the log files)",
    "general_log_file": "a log file path (the agent owns the log files)",
    "slow_query_log_file": "a log file path (the agent owns the log files)",
    "log_bin_basename": "a log file path",
    "log_bin_index": "a log file path",
    "log_tc": "a file path",
    "relay_log": "a log file path; replication is the platform's",
    "relay_log_basename": "a log file path; replication is the platform's",
    "relay_log_index": "a log file path; replication is the platform's",
    "relay_log_info_file": "a file path; replication is the platform's",
    "master_info_file": "a file path; replication is the platform's",
    "innodb_data_home_dir": "a directory on the server's disk",
    "innodb_log_group_home_dir": "a directory on the server's disk",
    "innodb_undo_directory": "a directory on the server's disk",
    "innodb_tmpdir": "a directory on the server's disk",
    "innodb_buffer_pool_filename": "a file path",
    "innodb_data_file_path": "the system tablespace layout; a change breaks the data directory",
    "innodb_temp_data_file_path": "a file path and layout",
    "aria_log_dir_path": "a directory on the server's disk",
    "ft_stopword_file": "a file path",
    "secure_file_priv": "where LOAD DATA / SELECT INTO OUTFILE may touch the server's disk",
    "init_file": "SQL run with full privileges at every start",
    "local_infile": "the platform turns LOAD DATA LOCAL off",
    "slave_load_tmpdir": "a directory on the server's disk",
    "allow_suspicious_udfs": "loads functions from arbitrary shared libraries",
    "innodb_read_only": "the agent must be able to write (users, databases, backups)",
    # Fixed when the data directory is created; a change makes the server refuse it.
    "innodb_page_size": "fixed when the data directory is created",
    "lower_case_table_names": "fixed when the data directory is created",
    # How the server is reached: the agent and the platform's networking depend on these.
    "port": "port is set by the platform",
    "bind_address": "listen address is set by the platform",
    "socket": "the agent's admin connection uses this socket",
    "skip_networking": "the platform decides whether the server listens",
    "extra_port": "a second listening port",
    "extra_max_connections": "only with extra_port",
    "named_pipe": "Windows only",
    "shared_memory": "Windows only",
    "shared_memory_base_name": "Windows only",
    "proxy_protocol_networks": "who may spoof client addresses",
    "skip_name_resolve": "grants by host name are not supported: the platform turns it on",
    "report_host": "replication is the platform's",
    "report_port": "replication is the platform's",
    "report_user": "replication is the platform's",
    "report_password": "replication is the platform's (and a password)",
    # Authentication and privileges: the agent logs in as root over unix_socket.
    "skip_grant_tables": "disables authentication",
    # Not system variables in 10.11 (server options only); listed so that a version that
    # reports them cannot slip them into the catalog.
    "user": "the OS user the server runs as",
    # Crash recovery modes are an operator's tools.
    "innodb_force_recovery": "an operator's crash recovery tool; can lose data",
    "tc_heuristic_recover": "an operator's crash recovery tool",
    # Debugging.
    "core_file": "writes core dumps to the data directory",
    "debug_no_thread_alarm": "debugging",
}
MARIADB_DENY_PREFIXES: dict[str, str] = {
    "ssl_": "TLS certificates, keys and ciphers are the platform's",
    "tls_": "TLS protocol versions are the platform's",
    "wsrep_": "Galera cluster settings (not used; wsrep_provider loads a library)",
    "unix_socket_": "the agent's admin login uses unix_socket authentication (plugin variables)",
    "encrypt_": "needs a key management plugin the platform does not load",
    "innodb_encrypt": "needs a key management plugin the platform does not load",
    "debug": "debugging",
}


def denied(name: str, deny: dict[str, str], prefixes: dict[str, str]) -> str | None:
    if name in deny:
        return deny[name]
    for prefix, reason in prefixes.items():
        if name.startswith(prefix):
            return reason
    return None


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if port in (5432, 3306):  # pragma: no cover - the kernel does not hand these out in practice
        return free_port()
    return port


def as_user(name: str) -> dict[str, Any]:
    """subprocess arguments that run the child as `name` (when we are root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def chown_to(path: Path, name: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(name)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Stop a server this script started, by its PID: the polite signal, then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def workdir(prefix: str, owner: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        chown_to(path, owner)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- PostgreSQL

PG_QUERY = """
SELECT name, vartype, context, category, unit, min_val, max_val, enumvals, short_desc
FROM pg_settings ORDER BY name
"""


@contextmanager
def postgresql_server() -> Iterator[Any]:
    """A throwaway PostgreSQL; yields an open psycopg connection to it as the superuser."""
    import psycopg

    with workdir("troveless-rules-pg-", "postgres") as tmp:
        data, run, log = tmp / "data", tmp / "run", tmp / "server.log"
        run.mkdir()
        chown_to(run, "postgres")
        ids = as_user("postgres")
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, cwd=tmp, **ids,
        )
        port = free_port()
        with open(log, "wb") as log_file:
            server = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={run}",
                 "-c", "fsync=off", "-c", "logging_collector=off"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=tmp, **ids,
            )
        try:
            wait_for(lambda: (run / f".s.PGSQL.{port}").exists(), server, "postgres", log)
            conn = None
            deadline = time.monotonic() + START_TIMEOUT_S
            while conn is None:
                try:
                    conn = psycopg.connect(host=str(run), port=port, user="postgres", dbname="postgres",
                                           autocommit=True)
                except psycopg.OperationalError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.05)
            try:
                yield conn
            finally:
                conn.close()
        finally:
            stop(server, signal.SIGINT)  # fast shutdown


PG_TYPES = {"bool": "boolean", "integer": "integer", "real": "float", "string": "string", "enum": "string"}
# context -> restart_required. `internal` settings are read-only and never reach this table.
PG_RESTART = {
    "postmaster": True,
    "sighup": False,
    "superuser": False,
    "user": False,
    "superuser-backend": False,
    "backend": False,
}
# Changed on reload, but a session keeps the value it started with.
PG_NEW_SESSIONS_ONLY = {"backend", "superuser-backend"}


def _number(text: str | None, kind: str) -> int | float | None:
    if text is None or text == "":
        return None
    return int(text) if kind == "integer" else float(text)


def postgresql_catalog(conn: Any) -> dict[str, Any]:
    version = conn.execute("SHOW server_version").fetchone()[0]
    parameters = []
    for name, vartype, context, category, unit, min_val, max_val, enumvals, short_desc in conn.execute(PG_QUERY):
        if context == "internal":
            continue  # read-only: reports a build or initdb property
        if category in PG_DENY_CATEGORIES or denied(name, PG_DENY, PG_DENY_PREFIXES):
            continue
        kind = PG_TYPES[vartype]
        entry: dict[str, Any] = {"name": name, "type": kind, "restart_required": PG_RESTART[context]}
        if kind in ("integer", "float"):
            entry["min"] = _number(min_val, kind)
            entry["max"] = _number(max_val, kind)
        if unit:
            entry["unit"] = unit
        if vartype == "enum":
            entry["enum_values"] = list(enumvals)
        if context in PG_NEW_SESSIONS_ONLY:
            entry["new_sessions_only"] = True
        entry["context"] = context
        entry["description"] = short_desc
        parameters.append(entry)
    return {"datastore": "postgresql", "version": version, "source": "pg_settings", "parameters": parameters}


# ---------------------------------------------------------------- MariaDB

MARIADB_QUERY = """
SELECT VARIABLE_NAME, VARIABLE_SCOPE, VARIABLE_TYPE, VARIABLE_COMMENT, NUMERIC_MIN_VALUE,
       NUMERIC_MAX_VALUE, ENUM_VALUE_LIST, READ_ONLY, COMMAND_LINE_ARGUMENT
FROM INFORMATION_SCHEMA.SYSTEM_VARIABLES ORDER BY VARIABLE_NAME
"""


@contextmanager
def mariadb_server() -> Iterator[Any]:
    """A throwaway MariaDB with networking off; yields an open PyMySQL connection as root."""
    import pymysql

    with workdir("troveless-rules-mariadb-", "mysql") as tmp:
        data, run, log = tmp / "data", tmp / "run", tmp / "server.log"
        run.mkdir()
        chown_to(run, "mysql")
        sock = run / "mysqld.sock"
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        subprocess.run(
            [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={data}", *user,
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            check=True, capture_output=True, cwd=tmp,
        )
        with open(log, "wb") as log_file:
            server = subprocess.Popen(
                [MARIADBD, "--no-defaults", f"--datadir={data}", *user, "--skip-networking",
                 f"--socket={sock}", f"--pid-file={run}/mysqld.pid", f"--tmpdir={run}",
                 f"--log-error={log}", "--innodb-buffer-pool-size=32M", "--skip-log-bin"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=tmp,
            )
        try:
            conn = None
            deadline = time.monotonic() + START_TIMEOUT_S
            while conn is None:
                try:
                    conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True,
                                           connect_timeout=5, charset="utf8mb4")
                except pymysql.err.OperationalError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"mariadbd did not start:\n{_tail(log)}") from None
                    time.sleep(0.05)
            try:
                yield conn
            finally:
                conn.close()
        finally:
            stop(server, signal.SIGTERM)


MARIADB_TYPES = {
    "BOOLEAN": "boolean",
    "INT": "integer",
    "INT UNSIGNED": "integer",
    "BIGINT": "integer",
    "BIGINT UNSIGNED": "integer",
    "DOUBLE": "float",
    "VARCHAR": "string",
    "ENUM": "string",
    "SET": "string",
    "FLAGSET": "string",
}


def mariadb_catalog(conn: Any) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
        cur.execute(MARIADB_QUERY)
        rows = cur.fetchall()
    parameters = []
    for name, scope, vtype, comment, min_v, max_v, enum_list, read_only, cmdline in rows:
        name = name.lower()
        if scope == "SESSION ONLY":
            continue  # no global value to configure
        if read_only == "YES" and cmdline is None:
            continue  # not settable at all: reports a build or runtime property
        if denied(name, MARIADB_DENY, MARIADB_DENY_PREFIXES):
            continue
        kind = MARIADB_TYPES[vtype]
        entry: dict[str, Any] = {"name": name, "type": kind, "restart_required": read_only == "YES"}
        if kind in ("integer", "float"):
            entry["min"] = _number(min_v, kind)
            entry["max"] = _number(max_v, kind)
        if vtype == "ENUM" and enum_list:
            # (character sets, collations and locales are ENUMs without a list: free strings)
            entry["enum_values"] = enum_list.split(",")
        if scope == "SESSION" and read_only != "YES":
            # SET GLOBAL sets the default that new sessions start with.
            entry["new_sessions_only"] = True
        entry["scope"] = scope
        entry["description"] = comment or ""
        parameters.append(entry)
    return {"datastore": "mariadb", "version": version, "source": "INFORMATION_SCHEMA.SYSTEM_VARIABLES",
            "parameters": parameters}


# ---------------------------------------------------------------- output


def render(catalog: dict[str, Any]) -> str:
    """One parameter per line: stable, and a changed parameter is a one-line diff."""
    params = sorted(catalog["parameters"], key=lambda p: (p["name"].lower(), p["name"]))
    head = {k: v for k, v in catalog.items() if k != "parameters"}
    head["generated_by"] = GENERATED_BY
    lines = ["{"]
    for key in ("datastore", "version", "source", "generated_by"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(head[key])},")
    lines.append('  "parameters": [')
    body = [f"    {json.dumps(p, ensure_ascii=False)}" for p in params]
    lines.append(",\n".join(body))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, tuple[Callable[[], Any], Callable[[Any], dict[str, Any]]]] = {
    "postgresql": (postgresql_server, postgresql_catalog),
    "mariadb": (mariadb_server, mariadb_catalog),
}


def generate(datastore: str) -> str:
    server, read = GENERATORS[datastore]
    with server() as conn:
        return render(read(conn))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--datastore", choices=sorted(GENERATORS), action="append",
                        help="only this datastore (repeatable; default: all)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for datastore in args.datastore or sorted(GENERATORS):
        text = generate(datastore)
        path = args.out_dir / f"{datastore}.json"
        path.write_text(text)
        count = text.count('{"name": ')
        print(f"{path}: {count} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
