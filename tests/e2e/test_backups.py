"""Backups and restores end to end: the unmodified `openstack database backup ...` and
`instance create --backup` commands against `troveless up`, real PostgreSQL and MariaDB
servers, and both object stores (a directory, and moto's S3 server over real HTTP)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.platform import LocalPlatform, sql
from tests.infra.platform_helpers import wait_for

USER, PASSWORD, DB = "app", "app-pass-123", "shop"


# ---- the object stores ---------------------------------------------------------------------


class Store:
    """Reads and tampers with stored objects the way an operator (or an attacker) could."""

    def __init__(self, kind: str, env: dict[str, str], s3: Any = None) -> None:
        self.kind, self.env, self.s3 = kind, env, s3

    def object_names(self, container: str = "database-backups") -> list[str]:
        if self.kind == "file":
            root = Path(self.env["TROVELESS_BACKUP_DIR"]) / container
            return sorted(p.name for p in root.glob("*") if p.is_file() and not p.name.endswith(".meta.json")) \
                if root.exists() else []
        try:
            found = self.s3.list_objects_v2(Bucket=container).get("Contents", [])
        except self.s3.exceptions.NoSuchBucket:
            return []
        return sorted(o["Key"] for o in found)

    def pending_uploads(self, container: str = "database-backups") -> int:
        if self.kind == "file":
            return len(self.keys_with(".partial", container))
        try:
            return len(self.s3.list_multipart_uploads(Bucket=container).get("Uploads", []))
        except self.s3.exceptions.NoSuchBucket:
            return 0

    def keys_with(self, suffix: str, container: str) -> list[str]:
        return [k for k in self.object_names(container) if k.endswith(suffix)]

    def flip_byte(self, key: str, container: str = "database-backups") -> None:
        if self.kind == "file":
            path = Path(self.env["TROVELESS_BACKUP_DIR"]) / container / key
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
            return
        obj = self.s3.get_object(Bucket=container, Key=key)
        data = bytearray(obj["Body"].read())
        data[len(data) // 2] ^= 0x01
        self.s3.put_object(Bucket=container, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _store(kind: str, moto_url: str | None) -> Store:
    if kind == "file":
        directory = tempfile.mkdtemp(prefix="troveless-backups-", dir="/tmp")
        return Store("file", {"TROVELESS_BACKUP_STORE": "file", "TROVELESS_BACKUP_DIR": directory})
    import boto3
    from botocore.config import Config

    env = {
        "TROVELESS_BACKUP_STORE": "s3",
        "TROVELESS_S3_ENDPOINT_URL": moto_url or "",
        "TROVELESS_S3_PATH_STYLE": "1",
        "TROVELESS_S3_REGION": "us-east-1",
        "TROVELESS_S3_ACCESS_KEY_ID": "testing",
        "TROVELESS_S3_SECRET_ACCESS_KEY": "testing",
    }
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}))
    for bucket in client.list_buckets().get("Buckets", []):  # a fresh store per test
        for obj in client.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            client.delete_object(Bucket=bucket["Name"], Key=obj["Key"])
    return Store("s3", env, client)


@pytest.fixture
def platform_for(database_url: str, moto_s3: str) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    made: list[tuple[LocalPlatform, Store]] = []

    def start(store_kind: str, **env: str) -> tuple[LocalPlatform, Store]:
        store = _store(store_kind, moto_s3)
        p = LocalPlatform(database_url, extra_env={**store.env, **env})
        made.append((p, store))
        p.start()
        return p, store

    yield start
    for p, store in made:
        p.cleanup()
        if store.kind == "file":
            import shutil

            shutil.rmtree(store.env["TROVELESS_BACKUP_DIR"], ignore_errors=True)


# ---- helpers ---------------------------------------------------------------------------------


def create_instance(p: LocalPlatform, kind: str, name: str) -> dict[str, Any]:
    r = p.api("POST", "/instances", json={"instance": {
        "name": name, "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": kind},
        "databases": [{"name": DB}], "users": [{"name": USER, "password": PASSWORD, "databases": [{"name": DB}]}]}})
    assert r.status_code == 200, r.text
    return p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY", timeout_s=240)


def run_sql(kind: str, ip: str, statement: str) -> str:
    done = sql(kind, ip, USER, PASSWORD, DB, statement)
    assert done.returncode == 0, done.stderr
    return done.stdout


def insert_rows(kind: str, ip: str, first: int, last: int) -> None:
    # MariaDB's sequence engine (seq_1_to_N) stands in for generate_series.
    run_sql(kind, ip, f"INSERT INTO items (id, val) SELECT g, md5(g::text) FROM generate_series({first}, {last}) g"
            if kind == "postgresql" else
            f"INSERT INTO items (id, val) SELECT seq, md5(seq) FROM seq_{first}_to_{last}")


def rows(kind: str, ip: str) -> list[str]:
    return run_sql(kind, ip, "SELECT id, val FROM items ORDER BY id").splitlines()


def expected(first: int, last: int) -> list[str]:
    import hashlib

    sep = "|"  # psql -At; the mariadb client separates with a tab
    return [f"{i}{sep}{hashlib.md5(str(i).encode()).hexdigest()}" for i in range(first, last + 1)]


def normalise(kind: str, lines: list[str]) -> list[str]:
    return [line.replace("\t", "|") for line in lines] if kind == "mariadb" else lines


def wait_backup(p: LocalPlatform, backup_id: str, status: str = "COMPLETED", timeout_s: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = p.api("GET", f"/backups/{backup_id}")
        assert r.status_code == 200, r.text
        b = r.json()["backup"]
        if b["status"] == status:
            return b
        assert b["status"] not in ("FAILED", "COMPLETED"), f"backup {b['status']}: {b.get('fail_reason')}\n{p.log()}"
        return None

    return wait_for(done, timeout_s=timeout_s, interval_s=0.3, what=f"backup {backup_id} {status}")


def backup(p: LocalPlatform, instance_id: str, name: str, *extra: str) -> dict[str, Any]:
    created = p.osc("database", "backup", "create", name, "--instance", instance_id, *extra, "-f", "json")
    assert created["status"] == "NEW" and created["name"] == name
    wait_backup(p, created["id"])
    return p.osc("database", "backup", "show", created["id"], "-f", "json")


def restore(p: LocalPlatform, kind: str, name: str, backup_id: str) -> str:
    version = p.api("GET", f"/datastores/{kind}/versions").json()["versions"][0]["name"]
    created = p.osc("database", "instance", "create", name, "--flavor", "1", "--size", "1",
                    "--datastore", kind, "--datastore-version", version, "--backup", backup_id, "-f", "json")
    return created["id"]


# ---- the flows -------------------------------------------------------------------------------


# Each datastore with each store once; the shared database alternates between SQLite and
# PostgreSQL (overriding the conftest fixture's parameters: 4 runs instead of 8).
@pytest.mark.parametrize(
    ("kind", "store_kind", "database_url"),
    [("postgresql", "file", "sqlite"), ("postgresql", "s3", "postgresql"),
     ("mariadb", "file", "postgresql"), ("mariadb", "s3", "sqlite")],
    indirect=["database_url"],
)
def test_backup_restore_roundtrip(platform_for, kind: str, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    p, store = platform_for(store_kind)
    src = create_instance(p, kind, f"src-{kind}")
    ip = src["ip"][0]
    run_sql(kind, ip, "CREATE TABLE items (id int PRIMARY KEY, val varchar(64))")
    insert_rows(kind, ip, 1, 300)

    full = backup(p, src["id"], "full-1", "--description", "first")
    assert full["instance_id"] == src["id"] and full["description"] == "first"
    assert full["locationRef"].startswith("s3://" if store_kind == "s3" else "file://")
    insert_rows(kind, ip, 301, 450)
    # MariaDB: an incremental on top of the full one; PostgreSQL: a second full backup.
    second = backup(p, src["id"], "second", *(["--incremental"] if kind == "mariadb" else []))
    assert second["parent_id"] == (full["id"] if kind == "mariadb" else None)
    insert_rows(kind, ip, 451, 500)  # after every backup: must not appear in any restore

    listed = {b["ID"] for b in p.osc("database", "backup", "list", "-f", "json")}
    assert listed == {full["id"], second["id"]}
    per_instance = {b["ID"] for b in p.osc("database", "backup", "list", "--instance", src["id"], "-f", "json")}
    assert per_instance == listed
    assert sorted(store.object_names()) == sorted(
        [f"{full['id']}{'.tar.zst' if kind == 'postgresql' else '.xbstream.zst'}",
         f"{second['id']}{'.tar.zst' if kind == 'postgresql' else '.xbstream.zst'}"])

    first_copy = restore(p, kind, f"r1-{kind}", full["id"])
    second_copy = restore(p, kind, f"r2-{kind}", second["id"])
    r1 = p.wait_status(first_copy, "ACTIVE", "HEALTHY", timeout_s=240)
    r2 = p.wait_status(second_copy, "ACTIVE", "HEALTHY", timeout_s=240)
    assert normalise(kind, rows(kind, r1["ip"][0])) == expected(1, 300)
    assert normalise(kind, rows(kind, r2["ip"][0])) == expected(1, 450)
    assert normalise(kind, rows(kind, ip)) == expected(1, 500)  # the source is untouched
    # Restored instances take writes and can be backed up themselves.
    insert_rows(kind, r1["ip"][0], 1000, 1000)

    # Deleting the full backup takes its incremental with it (Trove), objects included.
    p.osc("database", "backup", "delete", full["id"])
    wait_for(lambda: store.object_names() == ([] if kind == "mariadb" else
                                      [f"{second['id']}.tar.zst"]), timeout_s=30, what="objects deleted")
    left = {b["ID"] for b in p.osc("database", "backup", "list", "-f", "json")}
    assert left == (set() if kind == "mariadb" else {second["id"]})


@pytest.mark.parametrize(("kind", "store_kind", "database_url"),
                         [("postgresql", "file", "postgresql"), ("mariadb", "s3", "sqlite")], indirect=["database_url"])
def test_a_flipped_byte_is_refused_and_the_source_is_untouched(platform_for, kind: str, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    p, store = platform_for(store_kind)
    src = create_instance(p, kind, "src")
    ip = src["ip"][0]
    run_sql(kind, ip, "CREATE TABLE items (id int PRIMARY KEY, val varchar(64))")
    insert_rows(kind, ip, 1, 200)
    good = backup(p, src["id"], "good")
    [key] = store.object_names()
    store.flip_byte(key)

    copy = restore(p, kind, "tampered", good["id"])
    failed = p.wait_status(copy, "ERROR", timeout_s=180)
    assert "checksum mismatch" in failed["fault"]["message"], failed
    # Never ACTIVE on bad data, and nothing of it left running.
    assert "ip" not in failed or not _answers(kind, failed["ip"][0])
    assert p.show(src["id"])["status"] == "ACTIVE"  # type: ignore[index]
    assert normalise(kind, rows(kind, ip)) == expected(1, 200)


def _answers(kind: str, ip: str) -> bool:
    return sql(kind, ip, USER, PASSWORD, DB, "SELECT 1").returncode == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_schedule_keep_last_two(platform_for) -> None:  # type: ignore[no-untyped-def]
    kind = "mariadb"
    p, store = platform_for("file")
    src = create_instance(p, kind, "scheduled")
    run_sql(kind, src["ip"][0], "CREATE TABLE items (id int PRIMARY KEY, val varchar(64))")
    r = p.api("POST", "/backup_schedules", json={"backup_schedule": {
        "name": "every-4s", "instance_id": src["id"], "cron": "* * * * * */4", "keep_last": 2}})
    assert r.status_code == 200, r.text
    schedule = r.json()["backup_schedule"]

    def three_runs_completed() -> bool:
        runs = [b for b in p.api("GET", "/backups?limit=100").json()["backups"] if b.get("schedule_id") == schedule["id"]]
        shown = p.api("GET", f"/backup_schedules/{schedule['id']}").json()["backup_schedule"]
        return shown["last_result"] is not None and _runs(p, schedule["id"]) >= 3 and all(
            b["status"] == "COMPLETED" for b in runs)

    wait_for(three_runs_completed, timeout_s=90, interval_s=0.5, what="three scheduled runs")
    assert p.api("DELETE", f"/backup_schedules/{schedule['id']}").status_code == 202
    # Let a run that started before the delete finish, then retention has had its say.
    wait_for(lambda: all(b["status"] == "COMPLETED" for b in p.api("GET", "/backups").json()["backups"]),
             timeout_s=60, what="last scheduled backup done")

    def two_left() -> bool:
        listed = p.api("GET", "/backups").json()["backups"]
        return len(listed) == 2 and len(store.object_names()) == 2

    wait_for(two_left, timeout_s=30, what="exactly two backups in the API and the store")
    listed = sorted(b["id"] for b in p.api("GET", "/backups").json()["backups"])
    assert sorted(k.split(".")[0] for k in store.object_names()) == listed
    assert _runs(p, schedule["id"]) >= 3


def _runs(p: LocalPlatform, schedule_id: str) -> int:
    """Scheduled backups made so far, deleted ones included (read from the shared database)."""
    from sqlalchemy import create_engine, func, select

    from functions.core.models.backup import Backup

    engine = create_engine(p.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Backup).where(Backup.schedule_id == schedule_id)).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_guest_killed_mid_backup_fails_it_and_leaves_nothing(platform_for) -> None:  # type: ignore[no-untyped-def]
    import signal

    kind = "postgresql"
    # Throttled so the backup is still streaming when the guest dies.
    p, store = platform_for("file", TROVELESS_BACKUP_STALL_TIMEOUT="8", TROVELESS_GUEST_BACKUP_MAX_RATE_MB="1")
    src = create_instance(p, kind, "victim")
    ip = src["ip"][0]
    run_sql(kind, ip, "CREATE TABLE items (id int PRIMARY KEY, val varchar(64))")
    insert_rows(kind, ip, 1, 20000)
    created = p.osc("database", "backup", "create", "doomed", "--instance", src["id"], "-f", "json")
    wait_for(lambda: p.api("GET", f"/backups/{created['id']}").json()["backup"]["bytes_done"] > 0,
             timeout_s=30, interval_s=0.1, what="backup streaming")
    agent_pid = int((p.data_dir / "instances" / src["id"] / "agent.pid").read_text())
    os.kill(agent_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    failed = wait_backup(p, created["id"], "FAILED", timeout_s=60)
    assert time.monotonic() - killed_at < 30
    assert failed["fail_reason"]
    wait_for(lambda: store.object_names() == [] and store.pending_uploads() == 0, timeout_s=20, what="partial object removed")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_backup_survives_a_platform_crash(platform_for) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the whole platform while a backup streams; the guest finishes and publishes
    its object while nothing listens. Back up, the platform gets the guest's result (the
    guest keeps it until delivered; were it lost, the complete object in the store would
    prove the backup: tests/functions/test_backups_api.py) and the backup is COMPLETED and
    restorable, not FAILED and not stuck."""
    kind = "postgresql"
    p, store = platform_for("file", TROVELESS_GUEST_BACKUP_MAX_RATE_MB="1")
    src = create_instance(p, kind, "chaos")
    ip = src["ip"][0]
    run_sql(kind, ip, "CREATE TABLE items (id int PRIMARY KEY, val varchar(64))")
    insert_rows(kind, ip, 1, 5000)
    created = p.osc("database", "backup", "create", "through-a-crash", "--instance", src["id"], "-f", "json")
    wait_for(lambda: p.api("GET", f"/backups/{created['id']}").json()["backup"]["status"] == "BUILDING",
             timeout_s=30, interval_s=0.1, what="backup streaming")
    p.kill()
    name = f"{created['id']}.tar.zst"
    wait_for(lambda: name in store.object_names(), timeout_s=120, interval_s=0.5, what="object published")
    time.sleep(5)  # the guest's first tries to report go nowhere
    p.start()
    done = wait_backup(p, created["id"], timeout_s=90)
    assert done["checksum"]["sha256"] and done["object_size"] > 0
    copy = p.wait_status(restore(p, kind, "after-crash", created["id"]), "ACTIVE", "HEALTHY", timeout_s=240)
    assert normalise(kind, rows(kind, copy["ip"][0])) == expected(1, 5000)
