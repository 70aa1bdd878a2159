"""Backups and restores through real agents, real servers and the real tools, into a FileStore.

Per datastore, one source agent (reads paced by --backup-max-rate-mb so a backup lasts a few
seconds and can be watched while it runs) is prepared and filled with known rows; backups
of it are restored into fresh agents with PrepareRequested.restore, and the rows compared
exactly. The tests of one datastore share the source agent and run in file order. One test
goes through S3 instead: moto's server on 127.0.0.1, credentials from the agents' environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pymysql
import pytest

from events.guest import (
    BackupObject,
    BackupRequested,
    DatabaseSpec,
    FlavorSpec,
    GuestBackupFinished,
    GuestBackupProgress,
    GuestHeartbeat,
    GuestStatus,
    ListDatabasesRequested,
    PrepareRequested,
    RestartRequested,
    RestoreSpec,
    StartRequested,
    StopRequested,
    StoreOptions,
    UserSpec,
)

from .helpers import Agent, pids_mentioning
from .test_agent_live import VERSIONS, status_of

pytestmark = pytest.mark.slow

DB = "shop"
USER, PASSWORD = "clerk", "cl3rk-" + os.urandom(4).hex()
# The source carries BALLAST_MB of random bytes besides its rows, so its backup tool writes
# ~35 MB (PostgreSQL: compressed by the server) to ~100 MB (MariaDB: raw xbstream, with the
# redo log that holds the ballast too); read at these rates (MB/s) a full backup takes
# ~3.5 s, and the tool outlives the agent's read-ahead buffers (~9 MiB) by ~2.5 s: long
# enough to watch it run, or to kill it.
BALLAST_MB = 30
SOURCE_RATE_MB = {"postgresql": "10", "mariadb": "25"}
TOOLS = {"postgresql": "pg_basebackup", "mariadb": "mariadb-backup"}
S3_KEY_ID, S3_SECRET = "AKIAGUESTTEST0001", "s3-secret-" + os.urandom(6).hex()
S3_ENV = {"TROVELESS_S3_ACCESS_KEY_ID": S3_KEY_ID, "TROVELESS_S3_SECRET_ACCESS_KEY": S3_SECRET}


# ------------------------------------------------------------------ helpers


def prepare(agent: Agent, *, restore: RestoreSpec | None = None, users: list[UserSpec] | None = None,
            ram_mb: int = 512) -> httpx.Response:
    return agent.send(PrepareRequested(
        instance_id=agent.instance_id, datastore=agent.datastore, version=VERSIONS[agent.datastore],
        flavor=FlavorSpec(ram_mb=ram_mb, vcpus=1), volume_size_gb=2,
        databases=[DatabaseSpec(name=DB)],
        users=users if users is not None else [UserSpec(name=USER, password=PASSWORD, databases=[DB])],
        restore=restore,
    ))


def sql(agent: Agent, statements: list[str], user: str = USER, password: str = PASSWORD) -> list[tuple]:  # type: ignore[type-arg]
    """Statements over TCP as a tenant user; the rows of the last query."""
    rows: list[tuple] = []  # type: ignore[type-arg]
    if agent.datastore == "postgresql":
        with psycopg.connect(host=agent.address, port=5432, user=user, password=password, dbname=DB,
                             connect_timeout=5, autocommit=True) as conn:
            for stmt in statements:
                cur = conn.execute(stmt)
                rows = [tuple(r) for r in cur.fetchall()] if cur.description else rows
        return rows
    conn = pymysql.connect(host=agent.address, port=3306, user=user, password=password, database=DB,
                           connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
                rows = [tuple(r) for r in cur.fetchall()] if cur.description else rows
        return rows
    finally:
        conn.close()


def rows(agent: Agent) -> list[tuple]:  # type: ignore[type-arg]
    return sql(agent, ["SELECT id, name, payload FROM items ORDER BY id"])


def insert_rows(agent: Agent, first: int, count: int) -> None:
    values = ", ".join(f"({i}, 'item-{i}', '{'x' * (i % 50)}')" for i in range(first, first + count))
    sql(agent, [f"INSERT INTO items VALUES {values}"])


def add_ballast(agent: Agent, rows: int) -> None:
    """`rows` KiB of random bytes in their own table: incompressible, so backups have a size."""
    if agent.datastore == "postgresql":
        random_kib = "decode(" + " || ".join(["md5(random()::text)"] * 64) + ", 'hex')"
        sql(agent, ["CREATE TABLE ballast (id INTEGER PRIMARY KEY, data BYTEA)",
                    f"INSERT INTO ballast SELECT g, {random_kib} FROM generate_series(1, {rows}) g"])
    else:
        numbers = f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows})"
        sql(agent, ["CREATE TABLE ballast (id INTEGER PRIMARY KEY, data BLOB)",
                    f"SET SESSION max_recursive_iterations = {rows}",
                    f"INSERT INTO ballast {numbers} SELECT n, RANDOM_BYTES(1024) FROM g"])


def backup(agent: Agent, backup_id: str, location: str, parent: BackupObject | None = None,
           store: StoreOptions | None = None) -> httpx.Response:
    return agent.send(BackupRequested(
        instance_id=agent.instance_id, backup_id=backup_id, location=location, parent=parent,
        metadata={"tenant": "t-1"}, store=store or StoreOptions(),
    ))


def finished(agent: Agent, backup_id: str, since: int = 0, timeout: float = 60.0) -> GuestBackupFinished:
    _, event = agent.broker.wait_event(
        agent.source, GuestBackupFinished, lambda e: e.backup_id == backup_id, since=since, timeout=timeout)
    return event


def as_object(result: GuestBackupFinished) -> BackupObject:
    assert result.success and result.location and result.checksum, result
    return BackupObject(backup_id=result.backup_id, location=result.location, checksum=result.checksum,
                        backup_type=result.backup_type, lsn=result.lsn)


def restored_agent(make_agent, datastore: str, chain: list[BackupObject], *extra: str,  # type: ignore[no-untyped-def]
                   store: StoreOptions | None = None, ram_mb: int = 512) -> Agent:
    agent: Agent = make_agent(datastore, start=False)
    agent.start(*extra, env=S3_ENV)
    response = prepare(agent, restore=RestoreSpec(chain=chain, store=store or StoreOptions()), users=[
        UserSpec(name=USER, password=PASSWORD, databases=[DB]),
        UserSpec(name="auditor", password="aud1tor-pw", databases=[DB]),
    ], ram_mb=ram_mb)
    assert response.status_code == 202, response.text
    return agent


def wait_status(agent: Agent, status: GuestStatus, timeout: float = 90.0) -> GuestHeartbeat:
    _, beat = agent.broker.wait_for(agent.source, lambda b: b.status in (status, GuestStatus.FAILED), timeout=timeout)
    assert beat.status == status, beat.description
    return beat


def objects_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def tool_pids(agent: Agent, datastore: str) -> list[int]:
    """The backup tool's processes for this agent (their argv names the instance dir)."""
    return [pid for pid in pids_mentioning(str(agent.instance_dir))
            if TOOLS[datastore] in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]


def admin_verifier(agent: Agent) -> str:
    """os_admin's stored SCRAM verifier, read over the agent's socket (we are root, as the
    agent is: peer authentication maps us to os_admin)."""
    with psycopg.connect(host=str(agent.instance_dir / "run"), port=5432, user="os_admin", dbname="postgres",
                         connect_timeout=5) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'os_admin'").fetchone()
    assert row and row[0].startswith("SCRAM-SHA-256$")
    return str(row[0])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def store_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tvga-store-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """An S3 API on 127.0.0.1 (moto's server); it accepts any credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def source(request: pytest.FixtureRequest, make_agent) -> Agent:  # type: ignore[no-untyped-def]
    agent: Agent = make_agent(request.param, start=False)
    agent.start("--backup-max-rate-mb", SOURCE_RATE_MB[request.param], env=S3_ENV)
    assert prepare(agent).status_code == 202
    wait_status(agent, GuestStatus.HEALTHY)
    sql(agent, ["CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, payload TEXT)"])
    insert_rows(agent, 1, 500)
    add_ballast(agent, BALLAST_MB * 1024)
    return agent


# Results shared by the tests of one datastore, in file order.
RESULTS: dict[tuple[str, str], GuestBackupFinished] = {}
EXPECTED: dict[tuple[str, str], list[tuple]] = {}  # type: ignore[type-arg]


# ------------------------------------------------------------------ tests


def test_backup_is_refused_before_prepare(make_agent, store_dir: Path) -> None:  # type: ignore[no-untyped-def]
    agent: Agent = make_agent("postgresql")
    response = backup(agent, "b-unprepared", f"file://{store_dir}/unprepared")
    assert response.status_code == 409 and "not prepared" in response.json()["error"]
    assert not (store_dir / "unprepared").exists()


def test_full_backup_runs_in_the_background(source: Agent, store_dir: Path) -> None:
    ds = source.datastore
    location = f"file://{store_dir}/{ds}-full"
    mark = source.broker.mark()
    started = time.monotonic()
    response = backup(source, f"{ds}-full", location)
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 2.0  # answered at once, not when done

    # While it runs: the same request is a no-op, another backup and operations are refused,
    # SQL commands and the database keep working, heartbeats carry the backup's id.
    again = backup(source, f"{ds}-full", location)
    assert again.status_code == 202 and "already in progress" in again.text
    other = backup(source, f"{ds}-other", f"file://{store_dir}/{ds}-other")
    assert other.status_code == 409 and f"{ds}-full" in other.json()["error"]
    for command in (RestartRequested, StopRequested, StartRequested):
        refused = source.send(command(instance_id=source.instance_id))
        assert refused.status_code == 409 and "backup" in refused.json()["error"], refused.text
    assert prepare(source).status_code == 409
    listed = source.send(ListDatabasesRequested(instance_id=source.instance_id))
    assert listed.status_code == 200, listed.text
    assert sql(source, ["SELECT count(*) FROM items"]) == [(500,)]
    source.broker.wait_for(source.source, lambda b: b.backup_id == f"{ds}-full" and b.status == GuestStatus.HEALTHY,
                           since=mark, timeout=10)
    assert tool_pids(source, ds), "the backup tool should be running now"

    result = finished(source, f"{ds}-full", since=mark)
    elapsed = time.monotonic() - started
    print(f"\n{ds}: full backup {result.object_size} bytes stored in {elapsed:.1f}s (paced)")
    assert result.success, result.error
    assert result.backup_type == "full" and result.location == location
    stored = store_dir / f"{ds}-full"
    assert result.object_size == stored.stat().st_size
    import hashlib

    assert result.checksum == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert result.size_gb is not None and 0 < result.size_gb < 1
    if ds == "mariadb":
        assert result.lsn and result.lsn.isdigit()
    else:
        assert result.lsn is None
    assert [n for n in objects_in(store_dir) if n.startswith(f"{ds}-")] == [stored.name, stored.name + ".meta.json"]
    import json

    meta = json.loads((store_dir / f"{stored.name}.meta.json").read_text())
    assert meta["backup_id"] == f"{ds}-full" and meta["backup_type"] == "full"
    assert meta["datastore"] == ds and meta["datastore_version"].startswith(VERSIONS[ds])
    assert meta["sha256"] == result.checksum and meta["tenant"] == "t-1"
    assert meta.get("lsn") == result.lsn

    # Progress: BUILDING at once and every ~2 s with growing byte counts, SAVING before the end.
    progress = [e for _, e in source.broker.events(source.source, GuestBackupProgress, since=mark)
                if e.backup_id == f"{ds}-full"]
    states = [p.state for p in progress]
    assert states[0] == "BUILDING" and states[-1] == "SAVING" and states.count("BUILDING") >= 2, states
    done = [p.bytes_done for p in progress]
    assert done == sorted(done) and done[-1] == result.object_size
    # The result precedes every heartbeat that no longer names the backup.
    items = [r for r in source.broker.received[mark:] if r.message.source == source.source]
    types = [(r.message.type, r.message.data.get("backup_id")) for r in items]
    end = types.index((GuestBackupFinished.TYPE, f"{ds}-full"))
    beats_before = [bid for t, bid in types[:end] if t == GuestHeartbeat.TYPE]
    first = beats_before.index(f"{ds}-full")  # earlier ones may predate the request
    assert set(beats_before[first:]) == {f"{ds}-full"}, beats_before
    source.broker.wait_for(source.source, lambda b: b.backup_id is None, since=mark + end, timeout=10)
    assert not tool_pids(source, ds)
    rss = peak_rss_mb(source.proc.pid)  # type: ignore[union-attr]
    print(f"{ds}: agent peak RSS {rss:.0f} MB")
    assert rss < 150

    RESULTS[(ds, "full")] = result
    EXPECTED[(ds, "full")] = rows(source)


def test_restore_of_the_full_backup_has_the_same_rows(source: Agent, make_agent) -> None:  # type: ignore[no-untyped-def]
    ds = source.datastore
    templates = Path(tempfile.mkdtemp(prefix="tvga-templates-", dir="/tmp"))
    try:
        agent = restored_agent(make_agent, ds, [as_object(RESULTS[(ds, "full")])], "--template-dir", str(templates))
        wait_status(agent, GuestStatus.HEALTHY)
        assert rows(agent) == EXPECTED[(ds, "full")]
        assert len(EXPECTED[(ds, "full")]) == 500
        # The prepare went on after the restore: the new user exists and may connect.
        assert sql(agent, ["SELECT 1"], user="auditor", password="aud1tor-pw") == [(1,)]
        assert list(templates.iterdir()) == [], "a restored data directory must never become a template"
        assert not (agent.instance_dir / "volume" / ".data-restore").exists()
        assert "restoring from backup" in agent.log_path.read_text()  # type: ignore[union-attr]
        if ds == "postgresql":  # os_admin got this instance's own password, not the source's
            assert admin_verifier(agent) != admin_verifier(source)
        agent.terminate()
    finally:
        shutil.rmtree(templates, ignore_errors=True)


def test_incremental_backup_and_chain_restore(source: Agent, store_dir: Path, make_agent) -> None:  # type: ignore[no-untyped-def]
    ds = source.datastore
    parent = as_object(RESULTS[(ds, "full")])
    insert_rows(source, 501, 300)
    sql(source, ["DELETE FROM items WHERE id <= 10", "UPDATE items SET name = 'changed' WHERE id = 42"])
    mark = source.broker.mark()
    assert backup(source, f"{ds}-inc", f"file://{store_dir}/{ds}-inc", parent=parent).status_code == 202
    result = finished(source, f"{ds}-inc", since=mark)
    assert result.backup_type == "incremental"
    if ds == "postgresql":
        assert not result.success
        assert result.error == "incremental backups are not supported for postgresql"
        assert not (store_dir / f"{ds}-inc").exists() and not (store_dir / f"{ds}-inc.partial").exists()
        return
    assert result.success, result.error
    assert result.lsn and int(result.lsn) >= int(parent.lsn or 0)
    import json

    meta = json.loads((store_dir / f"{ds}-inc.meta.json").read_text())
    assert meta["parent_backup_id"] == parent.backup_id and meta["parent_checksum"] == parent.checksum
    assert meta["backup_type"] == "incremental"
    expected = rows(source)
    assert len(expected) == 790

    # A bigger flavor than the source's: its own sizing (MariaDB: another redo log size) applies.
    agent = restored_agent(make_agent, ds, [parent, as_object(result)], ram_mb=2048)
    wait_status(agent, GuestStatus.HEALTHY)
    assert rows(agent) == expected
    agent.terminate()


def test_damaged_object_fails_the_restore_and_never_starts_the_server(source: Agent, store_dir: Path, make_agent) -> None:  # type: ignore[no-untyped-def]
    ds = source.datastore
    good = RESULTS[(ds, "full")]
    damaged = store_dir / f"{ds}-damaged"
    shutil.copyfile(store_dir / f"{ds}-full", damaged)
    with open(damaged, "r+b") as fh:
        fh.seek(damaged.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    chain = [BackupObject(backup_id=f"{ds}-full", location=f"file://{damaged}", checksum=good.checksum or "",
                          backup_type="full", lsn=good.lsn)]
    agent = restored_agent(make_agent, ds, chain)
    _, failed = agent.broker.wait_for(agent.source, lambda b: b.status in (GuestStatus.FAILED, GuestStatus.HEALTHY),
                                      timeout=60)
    assert failed.status == GuestStatus.FAILED
    assert "checksum mismatch" in failed.description and f"{ds}-full" in failed.description, failed.description
    assert failed.server_pid is None
    beats = agent.broker.heartbeats(agent.source)
    assert all(b.message.data.get("server_pid") is None for b in beats), "the server must never start"
    assert not (agent.instance_dir / "volume" / "data").exists()
    assert not (agent.instance_dir / "volume" / ".data-restore").exists()
    assert [p for p in pids_mentioning(str(agent.instance_dir)) if p != agent.proc.pid] == []  # type: ignore[union-attr]
    assert agent.state()["prepared"] is False
    agent.terminate()


def test_backup_to_s3_and_restore_from_it(source: Agent, moto_endpoint: str, make_agent) -> None:  # type: ignore[no-untyped-def]
    import boto3

    ds = source.datastore
    options = StoreOptions(endpoint_url=moto_endpoint, region="us-east-1", path_style=True)
    location = f"s3://guest-{ds}/backups/{ds}-s3"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
    s3.create_bucket(Bucket=f"guest-{ds}")
    mark = source.broker.mark()
    assert backup(source, f"{ds}-s3", location, store=options).status_code == 202
    result = finished(source, f"{ds}-s3", since=mark)
    assert result.success, result.error
    rss = peak_rss_mb(source.proc.pid)  # type: ignore[union-attr]
    print(f"\n{ds}: agent peak RSS {rss:.0f} MB after a backup to S3")
    assert rss < 150  # boto3 and the multipart buffers included
    head = s3.head_object(Bucket=f"guest-{ds}", Key=f"backups/{ds}-s3")
    assert head["ContentLength"] == result.object_size
    assert head["Metadata"]["sha256"] == result.checksum and head["Metadata"]["backup_id"] == f"{ds}-s3"
    expected = rows(source)

    agent = restored_agent(make_agent, ds, [as_object(result)], store=options)
    wait_status(agent, GuestStatus.HEALTHY)
    assert rows(agent) == expected
    agent.terminate()
    for path in [source.log_path, agent.log_path]:
        assert S3_SECRET not in path.read_text(errors="replace")  # type: ignore[union-attr]


def test_killed_backup_tool_fails_the_backup_and_leaves_nothing(source: Agent, store_dir: Path) -> None:
    ds = source.datastore
    mark = source.broker.mark()
    assert backup(source, f"{ds}-killed", f"file://{store_dir}/{ds}-killed").status_code == 202
    deadline = time.monotonic() + 10
    while not (pids := tool_pids(source, ds)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids, "the backup tool never showed up"
    time.sleep(0.5)  # let it write a part of the object first
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    result = finished(source, f"{ds}-killed", since=mark)
    assert not result.success and result.location is None and result.checksum is None
    assert "SIGKILL" in (result.error or ""), result.error
    assert not any(name.startswith(f"{ds}-killed") for name in objects_in(store_dir))
    for pid in pids:  # reaped: not even a zombie is left
        assert not Path(f"/proc/{pid}").exists()
    # The server was not disturbed, and the next backup is accepted.
    assert status_of(source).status == GuestStatus.HEALTHY
    assert status_of(source).backup_id is None


def test_backup_to_an_invalid_location_fails_cleanly(source: Agent) -> None:
    ds = source.datastore
    mark = source.broker.mark()
    assert backup(source, f"{ds}-bad", "ftp://example.invalid/x").status_code == 202
    result = finished(source, f"{ds}-bad", since=mark)
    assert not result.success and "unsupported location" in (result.error or "")


def test_agent_shutdown_fails_the_running_backup(source: Agent, store_dir: Path) -> None:
    ds = source.datastore
    mark = source.broker.mark()
    assert backup(source, f"{ds}-shutdown", f"file://{store_dir}/{ds}-shutdown").status_code == 202
    deadline = time.monotonic() + 10
    while not tool_pids(source, ds) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert source.terminate(timeout=60) == 0
    result = finished(source, f"{ds}-shutdown", since=mark, timeout=5)
    assert not result.success and result.error == "the guest agent is shutting down"
    assert not any(name.startswith(f"{ds}-shutdown") for name in objects_in(store_dir))
    assert pids_mentioning(str(source.instance_dir)) == []
    # The next agent reports no backup: the control plane fails one it still thinks runs.
    mark = source.broker.mark()
    source.start("--backup-max-rate-mb", SOURCE_RATE_MB[ds], env=S3_ENV)
    _, beat = source.broker.wait_for(source.source, lambda b: b.status == GuestStatus.HEALTHY, since=mark, timeout=60)
    assert beat.backup_id is None


def test_backup_of_a_stopped_server_is_refused(source: Agent, store_dir: Path) -> None:
    mark = source.broker.mark()
    assert source.send(StopRequested(instance_id=source.instance_id)).status_code == 202
    source.broker.wait_for(source.source, lambda b: b.status == GuestStatus.SHUTDOWN, since=mark, timeout=30)
    refused = backup(source, "b-stopped", f"file://{store_dir}/stopped")
    assert refused.status_code == 503 and refused.json()["reason"] == "not_ready", refused.text
    assert not (store_dir / "stopped").exists()
