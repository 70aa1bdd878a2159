"""The guest agent end to end: real agent process, real PostgreSQL 15 / MariaDB 10.11 servers.

The tests of one datastore share one agent and run in file order, each step starting from
the state the previous one left (prepared -> crashed and recovered -> restarted -> stopped
and started -> agent killed and restarted -> SIGTERM).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import time

import psycopg
import pymysql
import pytest

from events.envelope import decode_http
from events.guest import (
    DatabaseSpec,
    FlavorSpec,
    GuestHeartbeat,
    GuestStatus,
    GuestStatusReported,
    PrepareRequested,
    RestartRequested,
    StartRequested,
    StatusRequested,
    StopRequested,
    UserSpec,
    control_source,
    guest_source,
)
from events.registry import parse
from events.replay import parse_sequence
from events.signing import SigningKey

from .helpers import HEARTBEAT_S, Agent, accepts_connections, group_members, pid_alive, pids_mentioning, uid_of

pytestmark = pytest.mark.slow

# Names and password chosen to break any string formatting of SQL.
DB_NAME = "app-db'%`x"
USER_NAME = "app'user"
PASSWORD = "pa\"ss'w%rd`-" + os.urandom(4).hex()
DB_USERS = {"postgresql": "postgres", "mariadb": "mysql"}
VERSIONS = {"postgresql": "15", "mariadb": "10.11"}
CHARSETS = {"postgresql": ("UTF8", "C.UTF-8"), "mariadb": ("utf8mb4", "utf8mb4_unicode_ci")}


def prepare_event(agent: Agent, **overrides: object) -> PrepareRequested:
    charset, collate = CHARSETS[agent.datastore]
    fields: dict[str, object] = {
        "instance_id": agent.instance_id,
        "datastore": agent.datastore,
        "version": VERSIONS[agent.datastore],
        "flavor": FlavorSpec(ram_mb=512, vcpus=1),
        "volume_size_gb": 2,
        "databases": [DatabaseSpec(name=DB_NAME, character_set=charset, collate=collate)],
        "users": [UserSpec(name=USER_NAME, password=PASSWORD, databases=[DB_NAME])],
    }
    fields.update(overrides)
    return PrepareRequested(**fields)  # type: ignore[arg-type]


def status_of(agent: Agent) -> GuestStatusReported:
    response = agent.send(StatusRequested(instance_id=agent.instance_id))
    assert response.status_code == 200, response.text
    message = decode_http(dict(response.headers), response.content)
    agent.verify(message)
    event = parse(message)
    assert isinstance(event, GuestStatusReported)
    return event


def user_sql(agent: Agent, statements: list[str]) -> list[tuple]:  # type: ignore[type-arg]
    """Run statements over TCP on <address>:<standard port> as the created user."""
    if agent.datastore == "postgresql":
        with psycopg.connect(
            host=agent.address, port=5432, user=USER_NAME, password=PASSWORD, dbname=DB_NAME,
            connect_timeout=5, autocommit=True,
        ) as conn:
            rows = []
            for stmt in statements:
                cur = conn.execute(stmt)
                rows = cur.fetchall() if cur.description else rows
            return rows
    conn = pymysql.connect(
        host=agent.address, port=3306, user=USER_NAME, password=PASSWORD, database=DB_NAME,
        connect_timeout=5, autocommit=True,
    )
    try:
        rows = []
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
                rows = list(cur.fetchall()) if cur.description else rows
        return rows
    finally:
        conn.close()


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def agent(request: pytest.FixtureRequest, make_agent) -> Agent:  # type: ignore[no-untyped-def]
    return make_agent(request.param)


def test_prepare_reports_building_then_healthy(agent: Agent) -> None:
    started = time.monotonic()
    first = agent.send(prepare_event(agent))
    assert first.status_code == 202, first.text
    again = agent.send(prepare_event(agent))
    assert again.status_code == 202 and "already in progress" in again.text

    _, healthy = agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.HEALTHY, timeout=60)
    print(f"\n{agent.datastore}: prepare took {time.monotonic() - started:.1f}s")

    beats = agent.broker.heartbeats(agent.source)
    statuses = [b.message.data["status"] for b in beats]
    assert statuses[0] == "NEW"
    assert "BUILDING" in statuses and statuses.index("BUILDING") < statuses.index("HEALTHY"), statuses
    sequences = [parse_sequence(b.message.get("sequence")) for b in beats]
    assert all(a < b for a, b in zip(sequences, sequences[1:])), sequences
    for item in beats:
        agent.verify(item.message)  # signed with the instance key, from guest_source
        assert item.message.type == GuestHeartbeat.TYPE
        assert item.message.subject == agent.instance_id
        assert item.message.get("partitionkey") == agent.instance_id
        assert item.message.time
    assert healthy.datastore == agent.datastore
    assert re.match(r"^\d+\.\d+", healthy.datastore_version or ""), healthy.datastore_version
    assert healthy.datastore_version.startswith(VERSIONS[agent.datastore])  # type: ignore[union-attr]
    assert healthy.volume_used_bytes > 1_000_000
    assert healthy.volume_size_bytes == 2 * 1024**3
    assert healthy.server_pid and pid_alive(healthy.server_pid)
    state = agent.state()
    assert state["prepared"] is True and state["server_pid"] == healthy.server_pid
    assert (agent.instance_dir / "agent.json").stat().st_mode & 0o777 == 0o600
    assert int((agent.instance_dir / "agent.pid").read_text()) == agent.proc.pid  # type: ignore[union-attr]


def test_created_user_can_create_tables_over_tcp(agent: Agent) -> None:
    rows = user_sql(agent, [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(20))",
        "INSERT INTO items VALUES (1, 'one')",
        "SELECT name FROM items",
    ])
    assert [tuple(r) for r in rows] == [("one",)]
    charset, collate = CHARSETS[agent.datastore]
    if agent.datastore == "postgresql":
        query = "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = current_database()"
    else:
        query = (
            "SELECT default_character_set_name, default_collation_name FROM information_schema.schemata "
            "WHERE schema_name = DATABASE()"
        )
    assert [tuple(r) for r in user_sql(agent, [query])] == [(charset, collate)]


def test_heartbeats_carry_the_datastores_own_figures(agent: Agent) -> None:
    """Connections and the databases' total size, from each server's own statistics."""
    _, beat = agent.broker.wait_for(
        agent.source, lambda b: b.connections is not None and b.database_size_bytes is not None, timeout=30
    )
    assert beat.connections >= 1  # the agent's own sampling connection at least
    assert beat.database_size_bytes > 100_000, beat.database_size_bytes  # PostgreSQL's, MariaDB's system tables


def test_admin_account_is_not_reachable_over_tcp(agent: Agent) -> None:
    if agent.datastore == "postgresql":
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host=agent.address, port=5432, user="os_admin", password="x", dbname="postgres",
                            connect_timeout=5).close()
    else:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(host=agent.address, port=3306, user="root", password="", connect_timeout=5).close()


def test_status_request_gets_a_signed_report(agent: Agent) -> None:
    report = status_of(agent)
    assert report.status == GuestStatus.HEALTHY
    assert report.instance_id == agent.instance_id
    assert report.server_pid == agent.state()["server_pid"]


def test_refuses_unauthenticated_or_foreign_commands(agent: Agent) -> None:
    status = StatusRequested(instance_id=agent.instance_id)
    other_secret = os.urandom(32)

    assert agent.post(agent.message(status, signed=False)).status_code == 401
    # Another instance's key, even one claiming our control source.
    foreign = SigningKey("inst-other", other_secret, (control_source(agent.instance_id),))
    assert agent.post(agent.message(status, key=foreign)).status_code == 401
    # Our key id with the wrong secret.
    forged = SigningKey(agent.instance_id, other_secret, (control_source(agent.instance_id),))
    assert agent.post(agent.message(status, key=forged)).status_code == 401
    # Signed by our key but speaking as the guest, not the control plane.
    assert agent.post(agent.message(status, source=guest_source(agent.instance_id))).status_code == 401
    # Replay: the same signed command twice.
    once = agent.message(status)
    assert agent.post(once).status_code == 200
    assert agent.post(once).status_code == 401
    # An older sequence than the last accepted one.
    assert agent.post(agent.message(status, sequence=1)).status_code == 401
    # A validly signed command for another instance.
    assert agent.send(StatusRequested(instance_id="inst-other")).status_code == 403
    # Malformed and unknown.
    import httpx

    assert httpx.post(agent.url, content=b"{}", headers={"content-type": "application/json"}).status_code == 400
    heartbeat = GuestHeartbeat(instance_id=agent.instance_id, status=GuestStatus.HEALTHY, datastore=agent.datastore)
    assert agent.send(heartbeat).status_code == 400
    wrong_store = prepare_event(agent, datastore="mariadb" if agent.datastore == "postgresql" else "postgresql")
    assert agent.send(wrong_store).status_code == 400
    health = httpx.get(f"http://{agent.address}:8799/healthz")
    assert health.status_code == 200 and health.text == "ok"


def test_server_runs_as_the_unprivileged_user(agent: Agent) -> None:
    pid = status_of(agent).server_pid
    assert pid
    expected = pwd.getpwnam(DB_USERS[agent.datastore]).pw_uid
    members = group_members(pid)  # the postmaster and its backends / mariadbd
    assert pid in members
    for member in members:
        assert uid_of(member) == expected, f"pid {member} runs as uid {uid_of(member)}"
    assert uid_of(agent.proc.pid) == 0  # type: ignore[union-attr]


def test_killed_server_is_reported_crashed_and_restarted(agent: Agent) -> None:
    old_pid = status_of(agent).server_pid
    assert old_pid
    mark = agent.broker.mark()
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    crashed_item, crashed = agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.CRASHED, since=mark, timeout=10)
    item, healthy = agent.broker.wait_for(
        agent.source, lambda b: b.status == GuestStatus.HEALTHY, since=mark, timeout=20
    )
    print(
        f"\n{agent.datastore}: CRASHED reported after {crashed_item.at - killed_at:.2f}s, "
        f"HEALTHY after {item.at - killed_at:.2f}s"
    )
    assert "SIGKILL" in crashed.description
    assert crashed_item.at - killed_at < HEARTBEAT_S + 0.5  # immediate, not the next periodic beat
    assert item.at - killed_at < 2 * HEARTBEAT_S + 3.0
    assert healthy.restarts == 1
    assert healthy.server_pid and healthy.server_pid != old_pid
    assert not group_members(old_pid), "processes of the killed server were left behind"
    assert user_sql(agent, ["SELECT name FROM items"])


def test_restart_reports_restarting_then_healthy(agent: Agent) -> None:
    old_pid = status_of(agent).server_pid
    mark = agent.broker.mark()
    assert agent.send(RestartRequested(instance_id=agent.instance_id)).status_code == 202
    busy = agent.send(StopRequested(instance_id=agent.instance_id))
    assert busy.status_code == 409 and "restart" in busy.json()["error"]
    agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.RESTARTING, since=mark, timeout=10)
    _, healthy = agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.HEALTHY, since=mark, timeout=30)
    assert healthy.server_pid != old_pid
    assert not pid_alive(old_pid)


def test_stop_keeps_the_server_down_until_start(agent: Agent) -> None:
    old_pid = status_of(agent).server_pid
    mark = agent.broker.mark()
    assert agent.send(StopRequested(instance_id=agent.instance_id)).status_code == 202
    agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.SHUTDOWN, since=mark, timeout=30)
    assert not accepts_connections(agent.address, agent.db_port)
    assert not pid_alive(old_pid)
    # Periodic heartbeats keep saying SHUTDOWN: nobody restarts a server stopped on purpose.
    time.sleep(2 * HEARTBEAT_S + 0.2)
    later = [b.message.data["status"] for b in agent.broker.heartbeats(agent.source, since=mark)]
    assert later[-1] == "SHUTDOWN" and "HEALTHY" not in later[later.index("SHUTDOWN"):]
    assert agent.state()["want_running"] is False

    mark = agent.broker.mark()
    assert agent.send(StartRequested(instance_id=agent.instance_id)).status_code == 202
    agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.HEALTHY, since=mark, timeout=30)
    assert [tuple(r) for r in user_sql(agent, ["SELECT name FROM items"])] == [("one",)]


def test_new_agent_replaces_the_server_of_a_killed_agent(agent: Agent) -> None:
    old_server = status_of(agent).server_pid
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    assert pid_alive(old_server)  # the server outlives its agent...
    mark = agent.broker.mark()
    agent.start()
    _, healthy = agent.broker.wait_for(
        agent.source, lambda b: b.status == GuestStatus.HEALTHY, since=mark, timeout=60
    )
    # ...and the new agent stopped it and runs exactly one fresh server.
    assert not pid_alive(old_server)
    servers = [p for p in pids_mentioning(str(agent.instance_dir)) if p != agent.proc.pid]
    assert servers == [healthy.server_pid]
    # The new agent answers commands with the same key (its replay guard starts empty, but
    # our sequences are time-based and keep rising).
    assert status_of(agent).status == GuestStatus.HEALTHY


def test_sigterm_stops_the_server_and_exits_zero(agent: Agent) -> None:
    server = status_of(agent).server_pid
    mark = agent.broker.mark()
    started = time.monotonic()
    assert agent.terminate(timeout=60) == 0
    print(f"\n{agent.datastore}: SIGTERM shutdown took {time.monotonic() - started:.1f}s")
    assert not pid_alive(server)
    assert not group_members(server)
    assert pids_mentioning(str(agent.instance_dir)) == []
    final = agent.broker.heartbeats(agent.source, since=mark)
    assert final and final[-1].message.data["status"] == "SHUTDOWN"
    assert not (agent.instance_dir / "agent.pid").exists()
    # No password in any log: the agent's, the servers', the init tools'.
    for path in [agent.log_path, *(agent.instance_dir / "logs").iterdir()]:
        assert PASSWORD not in path.read_text(errors="replace"), path


def test_failed_prepare_is_reported_and_the_agent_stays_up(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent: Agent = make_agent("postgresql")
    assert agent.send(RestartRequested(instance_id=agent.instance_id)).status_code == 409  # not prepared
    bad = prepare_event(agent, databases=[DatabaseSpec(name="db1", collate="xx_XX.no-such-locale")], users=[])
    assert agent.send(bad).status_code == 202
    _, failed = agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.FAILED, timeout=60)
    assert "xx_XX.no-such-locale" in failed.description
    report = status_of(agent)  # still answering
    assert report.status == GuestStatus.FAILED
    assert agent.terminate() == 0
    assert pids_mentioning(str(agent.instance_dir)) == []
