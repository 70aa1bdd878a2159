"""Fast checks of the agent's pieces that need no running database server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from werkzeug.test import Client

from events.envelope import decode_http, encode_structured
from events.guest import (
    GuestStatus,
    PrepareRequested,
    StatusRequested,
    control_source,
    instance_key,
)
from events.publisher import HttpPublisher
from events.replay import SequenceCounter, format_sequence, parse_sequence
from events.signing import Keyring, sign, verify
from guest_agent.datastores import REGISTRY, DatastoreError
from guest_agent.datastores.base import memory_settings_mb, parse_version
from guest_agent.datastores.mariadb import _for_format, native_password_hash, quote_ident
from guest_agent.datastores.postgresql import _conf_str
from guest_agent.heartbeat import EventFactory, Heartbeater
from guest_agent.process import ProcessError, Redactor, resolve_db_user
from guest_agent.server import CommandApp
from guest_agent.settings import SettingsError, parse_settings
from guest_agent.state import StateStore
from guest_agent.supervisor import Busy, NotPrepared, Snapshot, Supervisor

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"k" * 32


def _settings(tmp_path: Path, datastore: str = "postgresql", **env: str):  # type: ignore[no-untyped-def]
    key = tmp_path / "key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    base = {
        "TROVELESS_GUEST_INSTANCE_ID": "inst-1",
        "TROVELESS_GUEST_DATASTORE": datastore,
        "TROVELESS_GUEST_INSTANCE_DIR": str(tmp_path / "inst"),
        "TROVELESS_GUEST_ADDRESS": "127.0.0.9",
        "TROVELESS_GUEST_KEY_FILE": str(key),
    }
    base.update(env)
    return parse_settings([], env=base)


def test_settings_come_from_the_environment_and_the_command_line_wins(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TROVELESS_GUEST_HEARTBEAT_INTERVAL="2.5")
    assert settings.db_port == 5432 and settings.agent_port == 8799 and settings.heartbeat_interval == 2.5
    assert settings.data_dir == tmp_path / "inst" / "volume" / "data"
    assert _settings(tmp_path, "mariadb").db_port == 3306
    env = {"TROVELESS_GUEST_DATASTORE": "mariadb"}
    cli = parse_settings(
        ["--instance-id", "i", "--datastore", "postgresql", "--instance-dir", str(tmp_path), "--address",
         "127.0.0.5", "--key-file", "k"],
        env=env,
    )
    assert cli.datastore == "postgresql"
    with pytest.raises(SettingsError):
        _settings(tmp_path, TROVELESS_GUEST_ADDRESS="not-an-ip")
    with pytest.raises(SettingsError):
        _settings(tmp_path, TROVELESS_GUEST_DATASTORE="oracle")


def test_key_file_must_be_private(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.read_secret() == SECRET
    settings.key_file.chmod(0o644)
    with pytest.raises(SettingsError, match="0600"):
        settings.read_secret()


def test_database_servers_never_run_as_root() -> None:
    with pytest.raises(ProcessError, match="root"):
        resolve_db_user("postgresql", "root")
    if os.geteuid() == 0:
        assert resolve_db_user("postgresql", None).name == "postgres"
        assert resolve_db_user("mariadb", None).name == "mysql"


@pytest.mark.parametrize(
    ("argv_extra", "message"),
    [(["--db-user", "root"], "root"), (["--address", "0.0.0.0"], "0.0.0.0")],
)
def test_cli_refuses_unsafe_configurations(tmp_path: Path, argv_extra: list[str], message: str) -> None:
    key = tmp_path / "key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    argv = [sys.executable, "-m", "guest_agent", "--instance-id", "i1", "--datastore", "postgresql",
            "--instance-dir", str(tmp_path / "inst"), "--address", "127.0.0.9", "--key-file", str(key), *argv_extra]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr


def test_mariadb_identifier_quoting() -> None:
    assert quote_ident("plain") == "`plain`"
    assert quote_ident("we`ird") == "`we``ird`"
    assert _for_format(quote_ident("50%")) == "`50%%`"
    for bad in ["", "x" * 65, "trailing ", "nul\0", "line\nbreak"]:
        with pytest.raises(DatastoreError):
            quote_ident(bad)
    # The well-known mysql_native_password hash of "password".
    assert native_password_hash("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"


def test_postgresql_config_strings_and_sizing(tmp_path: Path) -> None:
    assert _conf_str("/a/it's") == "'/a/it''s'"
    mem = memory_settings_mb(512)
    assert (mem["quarter"], mem["three_quarters"], mem["half"], mem["max_connections"]) == (128, 384, 256, 32)
    assert memory_settings_mb(64 * 1024)["max_connections"] == 500
    assert memory_settings_mb(128)["max_connections"] == 20
    assert parse_version("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == "15.20"
    assert parse_version("10.11.19-MariaDB-0+deb12u1") == "10.11.19"


def test_redactor_masks_registered_secrets() -> None:
    redactor = Redactor()
    redactor.add(["s3cret-pass", None, "ab"])
    assert redactor.redact("password s3cret-pass here") == "password *** here"
    assert redactor.redact("ab stays") == "ab stays"  # too short to mask safely


def test_heartbeats_are_signed_and_sequenced_and_survive_a_dead_broker(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "inst" / "volume").mkdir(parents=True)
    (tmp_path / "inst" / "volume" / "f").write_bytes(b"x" * 1000)
    factory = EventFactory(settings, SECRET, lambda: 3)
    snap = Snapshot(GuestStatus.HEALTHY, "", 42, 0, "15.20")
    first, second = factory.heartbeat(snap), factory.status_report(snap)
    keyring = Keyring([instance_key("inst-1", SECRET)])
    for msg in (first, second):
        verify(msg, keyring)
        assert msg.get("partitionkey") == "inst-1" and msg.subject == "inst-1"
    assert parse_sequence(first.get("sequence")) < parse_sequence(second.get("sequence"))  # type: ignore[operator]
    assert first.data["volume_used_bytes"] == 1000 and first.data["volume_size_bytes"] == 3 * 1024**3

    dead = HttpPublisher("http://127.0.0.1:9/", timeout_s=0.5)  # nothing listens on port 9
    beats = Heartbeater(factory, dead, lambda: snap, interval=0.05)
    beats.start()
    beats.status_changed(snap)
    time.sleep(0.3)
    beats.stop()
    assert beats._failures >= 2  # kept trying, never raised


@pytest.fixture
def app_and_supervisor(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path)
    settings.instance_dir.mkdir(parents=True)
    user = resolve_db_user("postgresql", None)
    ds = REGISTRY["postgresql"](settings, user, Redactor())
    store = StateStore(settings.state_file, settings.instance_id, settings.datastore)
    supervisor = Supervisor(settings, ds, store)  # not booted: no server is started
    return CommandApp(settings, SECRET, supervisor, EventFactory(settings, SECRET)), supervisor


def test_one_operation_at_a_time(app_and_supervisor) -> None:  # type: ignore[no-untyped-def]
    _, supervisor = app_and_supervisor
    with pytest.raises(NotPrepared):
        supervisor._claim("restart")
    assert supervisor._claim("prepare") is True
    assert supervisor._claim("prepare") is False  # a repeated prepare is a no-op
    with pytest.raises(Busy, match="prepare"):
        supervisor._claim("stop")


def test_structured_mode_status_request(app_and_supervisor) -> None:  # type: ignore[no-untyped-def]
    app, _ = app_and_supervisor
    client = Client(app)
    msg = StatusRequested(instance_id="inst-1").to_message(
        control_source("inst-1"), subject="inst-1",
        extensions={"partitionkey": "inst-1", "sequence": format_sequence(SequenceCounter().next())},
    )
    headers, body = encode_structured(sign(msg, instance_key("inst-1", SECRET)))
    response = client.post("/commands", data=body, headers=headers)
    assert response.status_code == 200
    reply = decode_http(dict(response.headers), response.get_data())
    verify(reply, Keyring([instance_key("inst-1", SECRET)]))
    assert reply.data["status"] == "NEW"
    assert client.get("/healthz").get_data() == b"ok"
    assert client.get("/commands").status_code == 405
    assert client.post("/commands", data=b"garbage", headers={"content-type": "text/plain"}).status_code == 400
    assert client.post("/commands", data=b"x" * (2 * 1024 * 1024)).status_code == 413
    assert PrepareRequested.TYPE  # (the long commands are exercised by the live tests)
