"""The configuration-parameter catalogs (functions/core/config_rules/*.json) and validation.

Most tests read the committed JSON only. The two `slow` ones start real servers: one runs the
generator (infra/dev/config_rules.py) and checks that its output equals the committed files,
the other checks the PostgreSQL unit conversion against what the server itself makes of the
same strings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from functions.core import config_rules
from functions.core.config_rules import Parameter, catalog, restart_required, validate
from functions.core.errors import BadRequest, UnprocessableEntity

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "functions" / "core" / "config_rules"


def _generator():  # type: ignore[no-untyped-def]
    """infra/dev is scripts, not a package: load the generator from its path."""
    path = REPO / "infra" / "dev" / "config_rules.py"
    spec = importlib.util.spec_from_file_location("troveless_config_rules_generator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def names(datastore: str) -> set[str]:
    return {p.name for p in catalog(datastore)}


def bad(datastore: str, values: dict) -> str:  # type: ignore[type-arg]
    with pytest.raises(BadRequest) as err:
        validate(datastore, values)
    return err.value.message


# ---------------------------------------------------------------- the catalogs


PG_TUNED = [
    "shared_buffers", "work_mem", "maintenance_work_mem", "max_connections", "effective_cache_size",
    "statement_timeout", "log_min_duration_statement", "autovacuum", "autovacuum_naptime",
    "autovacuum_vacuum_scale_factor", "autovacuum_analyze_scale_factor", "autovacuum_max_workers",
    "autovacuum_vacuum_cost_limit", "random_page_cost", "seq_page_cost", "effective_io_concurrency",
    "checkpoint_timeout", "max_wal_size", "min_wal_size", "wal_buffers", "default_statistics_target",
    "idle_in_transaction_session_timeout", "lock_timeout", "log_statement", "synchronous_commit",
    "max_worker_processes", "max_parallel_workers", "temp_buffers", "TimeZone", "DateStyle",
]
MARIADB_TUNED = [
    "innodb_buffer_pool_size", "max_connections", "wait_timeout", "interactive_timeout",
    "slow_query_log", "long_query_time", "innodb_log_file_size", "innodb_flush_log_at_trx_commit",
    "sort_buffer_size", "join_buffer_size", "tmp_table_size", "max_heap_table_size",
    "max_allowed_packet", "table_open_cache", "thread_cache_size", "innodb_io_capacity",
    "innodb_flush_method", "innodb_file_per_table", "character_set_server", "collation_server",
    "sql_mode", "tx_isolation", "binlog_format", "log_queries_not_using_indexes",
    "connect_timeout", "innodb_lock_wait_timeout", "query_cache_type", "query_cache_size",
]


@pytest.mark.parametrize("datastore", ["postgresql", "mariadb"])
def test_catalog_file_shape(datastore: str) -> None:
    data = json.loads((RULES_DIR / f"{datastore}.json").read_text())
    assert data["datastore"] == datastore
    assert data["generated_by"] == "infra/dev/config_rules.py"
    assert data["version"].startswith("15." if datastore == "postgresql" else "10.11.")
    params = data["parameters"]
    assert [p["name"] for p in params] == sorted((p["name"] for p in params), key=lambda n: (n.lower(), n))
    assert len({p["name"].lower() for p in params}) == len(params)
    for p in params:
        assert p["type"] in ("integer", "float", "boolean", "string"), p
        assert isinstance(p["restart_required"], bool), p
        if p["type"] in ("integer", "float"):
            assert p["min"] <= p["max"], p
        if p["type"] == "integer":
            assert isinstance(p["min"], int) and isinstance(p["max"], int), p
        if "enum_values" in p:
            assert p["type"] == "string" and p["enum_values"], p
    loaded = config_rules.load(datastore)
    assert loaded.version == data["version"]
    assert len(catalog(datastore)) == len(params)
    assert all(isinstance(p, Parameter) for p in catalog(datastore))


def test_postgresql_catalog_has_what_people_tune() -> None:
    assert set(PG_TUNED) <= names("postgresql")
    assert {n for n in names("postgresql") if n.startswith("autovacuum_")} >= {
        "autovacuum_vacuum_threshold", "autovacuum_analyze_threshold", "autovacuum_freeze_max_age",
        "autovacuum_vacuum_cost_delay", "autovacuum_work_mem", "autovacuum_vacuum_insert_threshold",
    }
    assert len(catalog("postgresql")) > 200


def test_mariadb_catalog_has_what_people_tune() -> None:
    assert set(MARIADB_TUNED) <= names("mariadb")
    assert len(catalog("mariadb")) > 300


def test_postgresql_parameters_as_the_server_describes_them() -> None:
    pg = config_rules.load("postgresql").parameters
    assert pg["shared_buffers"] == Parameter(
        name="shared_buffers", type="integer", restart_required=True, min=16, max=1073741823, unit="8kB",
        context="postmaster", description=pg["shared_buffers"].description)
    assert (pg["work_mem"].unit, pg["work_mem"].min, pg["work_mem"].restart_required) == ("kB", 64, False)
    assert (pg["max_connections"].type, pg["max_connections"].restart_required) == ("integer", True)
    assert pg["statement_timeout"].unit == "ms"
    assert pg["max_wal_size"].unit == "MB"
    assert pg["autovacuum_naptime"].unit == "s"
    assert pg["autovacuum"].type == "boolean" and not pg["autovacuum"].restart_required
    assert pg["random_page_cost"].type == "float"
    assert pg["vacuum_cost_delay"].type == "float" and pg["vacuum_cost_delay"].unit == "ms"
    assert pg["log_statement"].enum_values == ("none", "ddl", "mod", "all")
    assert pg["synchronous_commit"].type == "string"
    # backend contexts: reloadable, but only new sessions see the change
    assert pg["log_connections"].new_sessions_only and not pg["log_connections"].restart_required
    assert not pg["work_mem"].new_sessions_only
    assert restart_required("postgresql", "shared_buffers")
    assert restart_required("postgresql", "max_connections")
    assert not restart_required("postgresql", "work_mem")
    assert not restart_required("postgresql", "log_min_duration_statement")
    # internal (read-only) settings are not in the catalog
    assert not {"block_size", "server_version", "data_checksums", "wal_segment_size"} & names("postgresql")


def test_mariadb_parameters_as_the_server_describes_them() -> None:
    m = config_rules.load("mariadb").parameters
    assert m["innodb_buffer_pool_size"].type == "integer" and not m["innodb_buffer_pool_size"].restart_required
    assert m["max_connections"].type == "integer" and not m["max_connections"].restart_required
    # 10.11 resizes the redo log online (SET GLOBAL innodb_log_file_size): the server says dynamic
    assert not restart_required("mariadb", "innodb_log_file_size")
    assert m["slow_query_log"].type == "boolean"
    assert m["long_query_time"].type == "float"
    assert m["innodb_flush_log_at_trx_commit"].min == 0 and m["innodb_flush_log_at_trx_commit"].max == 3
    assert m["binlog_format"].enum_values == ("MIXED", "STATEMENT", "ROW")
    assert m["wait_timeout"].new_sessions_only  # SESSION scope: SET GLOBAL is the default of new ones
    # read-only variables settable in the option file need a restart
    assert restart_required("mariadb", "innodb_flush_method")
    assert restart_required("mariadb", "performance_schema")
    # not settable at all (no option) or session-only: absent
    assert not {"version", "hostname", "have_ssl", "log_bin", "timestamp", "insert_id", "error_count"} & names("mariadb")


@pytest.mark.parametrize("name", [
    "port", "listen_addresses", "data_directory", "config_file", "hba_file", "ident_file",
    "external_pid_file", "unix_socket_directories", "unix_socket_permissions", "unix_socket_group",
    "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "shared_preload_libraries",
    "session_preload_libraries", "local_preload_libraries", "dynamic_library_path",
    "archive_command", "restore_command", "archive_mode", "log_directory", "log_filename",
    "logging_collector", "primary_conninfo", "wal_level", "password_encryption",
    "allow_system_table_mods", "zero_damaged_pages", "ignore_checksum_failure", "transaction_isolation",
])
def test_postgresql_denied_parameters_are_absent(name: str) -> None:
    assert name not in names("postgresql")
    assert "is not supported" in bad("postgresql", {name: "x"})


@pytest.mark.parametrize("name", [
    "port", "datadir", "socket", "bind_address", "basedir", "tmpdir", "pid_file", "plugin_dir",
    "log_error", "general_log_file", "slow_query_log_file", "secure_file_priv", "skip_grant_tables",
    "skip_networking", "init_file", "ssl_cert", "ssl_key", "ssl_ca", "tls_version", "wsrep_provider",
    "innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_force_recovery", "local_infile",
    "lower_case_table_names", "innodb_page_size", "character_sets_dir",
])
def test_mariadb_denied_parameters_are_absent(name: str) -> None:
    assert name not in names("mariadb")
    assert "is not supported" in bad("mariadb", {name: "x"})


def test_deny_lists_give_reasons() -> None:
    gen = _generator()
    for deny in (gen.PG_DENY, gen.PG_DENY_PREFIXES, gen.MARIADB_DENY, gen.MARIADB_DENY_PREFIXES):
        assert all(isinstance(reason, str) and reason for reason in deny.values())
    assert gen.denied("ssl_ciphers", gen.PG_DENY, gen.PG_DENY_PREFIXES)
    assert gen.denied("wsrep_on", gen.MARIADB_DENY, gen.MARIADB_DENY_PREFIXES)
    assert gen.denied("work_mem", gen.PG_DENY, gen.PG_DENY_PREFIXES) is None


def test_api_view() -> None:
    view = config_rules.get("postgresql", "log_min_duration_statement").to_api("dsv-1")
    assert view == {"name": "log_min_duration_statement", "datastore_version_id": "dsv-1",
                    "restart_required": False, "type": "integer", "min": -1, "max": 2147483647}
    assert "min" not in config_rules.get("postgresql", "autovacuum").to_api("dsv-1")
    assert config_rules.get("mariadb", "innodb_flush_log_at_trx_commit").to_api("x")["min"] == 0


# ---------------------------------------------------------------- validation


def test_unknown_datastore() -> None:
    with pytest.raises(UnprocessableEntity):
        validate("mongodb", {"x": 1})
    with pytest.raises(UnprocessableEntity):
        catalog("mysql")


def test_unknown_parameter() -> None:
    assert bad("postgresql", {"foo": 1}) == "The configuration parameter 'foo' is not supported for this datastore."
    assert bad("mariadb", {"innodb_buffer_pool_size": 1 << 30, "nope": 1}) == (
        "The configuration parameter 'nope' is not supported for this datastore.")
    with pytest.raises(BadRequest):
        restart_required("postgresql", "foo")


def test_values_must_be_an_object() -> None:
    assert "object" in bad("postgresql", ["work_mem"])  # type: ignore[arg-type]


def test_names_are_case_insensitive_and_canonicalised() -> None:
    assert validate("postgresql", {"WORK_MEM": 1024, "timezone": "UTC"}) == {"work_mem": 1024, "TimeZone": "UTC"}
    assert validate("mariadb", {"Max_Connections": 50, "slow-query-log": "on"}) == {
        "max_connections": 50, "slow_query_log": True}
    assert "more than once" in bad("postgresql", {"work_mem": 1024, "Work_Mem": 2048})


def test_empty_values() -> None:
    assert validate("postgresql", {}) == {}


def test_wrong_types() -> None:
    assert bad("postgresql", {"max_connections": "lots"}) == "The value of 'max_connections' must be of type integer."
    assert bad("postgresql", {"max_connections": 100.0}) == "The value of 'max_connections' must be of type integer."
    assert bad("postgresql", {"max_connections": True}) == "The value of 'max_connections' must be of type integer."
    assert bad("postgresql", {"max_connections": None}) == "The value of 'max_connections' must be of type integer."
    assert bad("mariadb", {"max_connections": 1.5}) == "The value of 'max_connections' must be of type integer."
    assert bad("mariadb", {"max_connections": False}) == "The value of 'max_connections' must be of type integer."
    assert bad("mariadb", {"max_connections": "100 connections"}).startswith("The value of 'max_connections'")
    assert bad("postgresql", {"random_page_cost": "cheap"}) == "The value of 'random_page_cost' must be of type float."
    assert bad("postgresql", {"random_page_cost": True}).endswith("must be of type float.")
    assert bad("postgresql", {"random_page_cost": "nan"}).endswith("must be of type float.")
    assert bad("mariadb", {"long_query_time": "nan"}).endswith("must be of type float.")
    assert bad("postgresql", {"search_path": 5}) == "The value of 'search_path' must be of type string."
    assert "control characters" in bad("postgresql", {"search_path": "public\nshared_buffers = 1"})
    assert "control characters" in bad("mariadb", {"init_connect": "SET x=1\n[mysqld]"})


def test_postgresql_booleans() -> None:
    for value, expected in [(True, True), (False, False), ("on", True), ("OFF", False), ("true", True),
                            ("f", False), ("yes", True), ("no", False), ("1", True), ("0", False)]:
        assert validate("postgresql", {"autovacuum": value}) == {"autovacuum": expected}, value
    for value in ["o", "maybe", "", 1, 0, None, "2"]:
        assert bad("postgresql", {"autovacuum": value}) == "The value of 'autovacuum' must be of type boolean."


def test_mariadb_booleans() -> None:
    for value, expected in [(True, True), (False, False), ("ON", True), ("off", False), ("1", True),
                            ("0", False), (1, True), (0, False), ("TRUE", True), ("false", False)]:
        assert validate("mariadb", {"slow_query_log": value}) == {"slow_query_log": expected}, value
    for value in ["yes", "maybe", 2, "", None, 1.0]:
        assert bad("mariadb", {"slow_query_log": value}) == "The value of 'slow_query_log' must be of type boolean."


def test_out_of_range() -> None:
    assert bad("postgresql", {"log_min_duration_statement": -2}) == (
        "The value provided for the configuration parameter log_min_duration_statement is not within "
        "the allowed range of -1..2147483647.")
    assert bad("postgresql", {"max_connections": 0}).endswith("allowed range of 1..262143.")
    assert bad("postgresql", {"random_page_cost": -1}).startswith(
        "The value provided for the configuration parameter random_page_cost is not within")
    assert bad("mariadb", {"innodb_flush_log_at_trx_commit": 4}) == (
        "The value provided for the configuration parameter innodb_flush_log_at_trx_commit is not within "
        "the allowed range of 0..3.")
    assert "allowed range of 10..100000" in bad("mariadb", {"max_connections": 5})
    assert "allowed range of 0..31536000" in bad("mariadb", {"long_query_time": -0.5})
    assert validate("mariadb", {"long_query_time": 2}) == {"long_query_time": 2.0}


def test_enums() -> None:
    assert validate("postgresql", {"log_statement": "DDL", "synchronous_commit": "Off"}) == {
        "log_statement": "ddl", "synchronous_commit": "off"}
    assert bad("postgresql", {"log_statement": "everything"}) == (
        "The value 'everything' is not allowed for the configuration parameter 'log_statement'. "
        "Allowed values: none, ddl, mod, all.")
    assert validate("mariadb", {"binlog_format": "row"}) == {"binlog_format": "ROW"}
    assert "not allowed" in bad("mariadb", {"binlog_format": "json"})
    assert bad("postgresql", {"log_statement": True}) == "The value of 'log_statement' must be of type string."


def test_postgresql_units() -> None:
    def one(name: str, value: object) -> object:
        return validate("postgresql", {name: value})[name]

    # memory: shared_buffers is in 8kB blocks, work_mem in kB, max_wal_size in MB
    assert one("shared_buffers", "128MB") == 16384
    assert one("shared_buffers", "1GB") == 131072
    assert one("shared_buffers", "1TB") == 134217728  # its max is 8 TB - 8 kB (1073741823 blocks)
    assert one("shared_buffers", 16384) == 16384  # a bare number is in the setting's unit
    assert one("shared_buffers", "16384") == 16384
    assert one("work_mem", "4MB") == 4096
    assert one("work_mem", " 64 kB ") == 64
    assert one("work_mem", "1.5MB") == 1536
    assert one("work_mem", "0.5GB") == 524288
    assert one("work_mem", "65537B") == 64  # rounded like the server: 64.0009 kB -> 64
    assert one("max_wal_size", "2GB") == 2048
    assert one("max_wal_size", "1TB") == 1048576
    assert one("effective_cache_size", "4GB") == 524288
    # time: statement_timeout in ms, autovacuum_naptime in s, checkpoint_timeout in s
    assert one("statement_timeout", "30s") == 30000
    assert one("statement_timeout", "1.5s") == 1500
    assert one("statement_timeout", "2min") == 120000
    assert one("statement_timeout", "1h") == 3600000
    assert one("statement_timeout", "1d") == 86400000
    assert one("statement_timeout", "1500us") == 2  # 1.5 ms, rounded half to even
    assert one("statement_timeout", "2500us") == 2
    assert one("autovacuum_naptime", "1min") == 60
    assert one("checkpoint_timeout", "0.5h") == 1800
    assert one("log_min_duration_statement", "-1") == -1
    # floats with a unit (vacuum_cost_delay: real, ms)
    assert one("vacuum_cost_delay", "500us") == 0.5
    assert one("vacuum_cost_delay", 2) == 2.0
    assert one("vacuum_cost_delay", "20ms") == 20.0
    # what the server reads as C numbers: hex, octal, exponent
    assert one("work_mem", "0x100") == 256
    assert one("work_mem", "0100") == 64
    assert one("work_mem", "1e3") == 1000
    assert one("statement_timeout", "2.5") == 2  # rint(): half to even
    assert one("statement_timeout", "3.5") == 4


def test_postgresql_unit_errors() -> None:
    memory_hint = 'Valid units for this parameter are "B", "kB", "MB", "GB", and "TB".'
    time_hint = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'
    assert bad("postgresql", {"shared_buffers": "128mb"}) == (
        f"The value of 'shared_buffers' must be of type integer. {memory_hint}")  # units are case-sensitive
    assert bad("postgresql", {"shared_buffers": "128 KB"}).endswith(memory_hint)
    assert bad("postgresql", {"shared_buffers": "128MBs"}).endswith(memory_hint)
    assert bad("postgresql", {"shared_buffers": "128 MB x"}).endswith(memory_hint)
    assert bad("postgresql", {"shared_buffers": "10s"}).endswith(memory_hint)
    assert bad("postgresql", {"statement_timeout": "5 mins"}).endswith(time_hint)
    assert bad("postgresql", {"statement_timeout": "1MB"}).endswith(time_hint)
    assert bad("postgresql", {"max_connections": "100kB"}) == (
        "The value of 'max_connections' must be of type integer. This parameter takes no unit.")
    assert bad("postgresql", {"shared_buffers": "MB"}) == "The value of 'shared_buffers' must be of type integer."
    assert bad("postgresql", {"shared_buffers": "inf"}) == "The value of 'shared_buffers' must be of type integer."
    assert bad("postgresql", {"shared_buffers": "08"}).endswith(memory_hint)  # octal stops at 8
    # range is checked after the conversion
    assert bad("postgresql", {"shared_buffers": "16TB"}) == (
        "The value provided for the configuration parameter shared_buffers is not within the allowed "
        "range of 16..1073741823.")
    assert "allowed range of 16..1073741823" in bad("postgresql", {"shared_buffers": "64kB"})
    assert "allowed range of 64..2147483647" in bad("postgresql", {"work_mem": "3TB"})
    assert "allowed range of 64..2147483647" in bad("postgresql", {"work_mem": "63"})
    assert "allowed range" in bad("postgresql", {"vacuum_cost_delay": "1s"})
    assert "allowed range" in bad("postgresql", {"random_page_cost": "inf"})


def test_mariadb_integer_suffixes() -> None:
    assert validate("mariadb", {"innodb_buffer_pool_size": "128M"}) == {"innodb_buffer_pool_size": 134217728}
    assert validate("mariadb", {"innodb_buffer_pool_size": "1g"}) == {"innodb_buffer_pool_size": 1 << 30}
    assert validate("mariadb", {"sort_buffer_size": "256K"}) == {"sort_buffer_size": 262144}
    assert validate("mariadb", {"max_connections": "500"}) == {"max_connections": 500}
    assert bad("mariadb", {"innodb_buffer_pool_size": "128MB"}).endswith("must be of type integer.")
    assert "allowed range" in bad("mariadb", {"innodb_buffer_pool_size": "1K"})


# ---------------------------------------------------------------- real servers


@pytest.mark.slow
def test_generator_output_equals_committed_files(tmp_path: Path) -> None:
    """Regenerating from real servers gives the committed files byte for byte: the catalog is
    the servers' own, and a server upgrade that changes it shows up here."""
    gen = _generator()
    assert gen.main(["--out-dir", str(tmp_path)]) == 0
    for datastore in ("postgresql", "mariadb"):
        fresh = (tmp_path / f"{datastore}.json").read_text()
        committed = (RULES_DIR / f"{datastore}.json").read_text()
        assert fresh == committed, f"{datastore}.json is stale: run .venv/bin/python infra/dev/config_rules.py"


# (setting, value) pairs the server converts in a session (SET); compared with validate().
PG_CROSS_CHECK = [
    ("work_mem", v) for v in ["4MB", "1.5MB", "100", "1GB", "1e3", "0x100", "0100", " 64 kB ", "65537B",
                              "1.3333MB", "2.5MB", "1TB", "2TB", "3TB", "64kb", "12 M", "63", "0.0625MB"]
] + [
    ("statement_timeout", v) for v in ["30s", "1.5s", "1500us", "2500us", "1.5min", "1h", "1d", "0.001",
                                       "5 mins", "1MB", "-1", "1e2ms", "25d", "24.9d"]
] + [
    ("effective_cache_size", v) for v in ["4GB", "1.5GB", "12345", "100kB", "0.1MB", "8TB", "16TB", "7kB"]
] + [
    ("vacuum_cost_delay", v) for v in ["500us", "0.5", "1s", "2ms", "1.25", "99.9ms", "100.1", "-1", "7 us"]
] + [
    ("log_min_duration_statement", v) for v in ["-1", "-2", "250ms", "0.5s"]
] + [
    ("temp_file_limit", v) for v in ["-1", "10GB", "1.5TB"]
]


@pytest.mark.slow
def test_postgresql_conversion_matches_the_server() -> None:
    import psycopg

    gen = _generator()
    with gen.postgresql_server() as conn:
        for name, value in PG_CROSS_CHECK:
            try:
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
                server = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()[0]
            except psycopg.Error:
                server = None
            try:
                ours = validate("postgresql", {name: value})[name]
            except BadRequest:
                ours = None
            assert (ours is None) == (server is None), (name, value, server, ours)
            if server is not None:
                assert float(ours) == float(server), (name, value, server, ours)
                assert isinstance(ours, float if "." in server or name == "vacuum_cost_delay" else int)
