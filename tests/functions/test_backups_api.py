"""The backup API, the conductor's backup rules, retention and schedules, without guests
(the end-to-end tests in tests/e2e/test_backups.py run them with real servers)."""

from __future__ import annotations

import datetime as dt

import pytest
from functions_framework import create_app
from sqlalchemy import select

from events import registry
from events.envelope import encode_binary
from events.guest import (
    GuestBackupFinished,
    GuestBackupProgress,
    GuestHeartbeat,
    guest_source,
    instance_key,
)
from events.replay import format_sequence
from events.signing import sign
from functions.core import backup_schedules, backups
from functions.core import workflow as runner
from functions.core.backup_flow import BACKUP
from functions.core.models.backup import Backup, BackupSchedule
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.runtime import runtime
from tests.functions.test_instances_api import body

CONDUCTOR = "functions/conductor.py"


@pytest.fixture
def active(api, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Two ACTIVE instances of p1 (PostgreSQL and MariaDB) as a finished build leaves them."""
    monkeypatch.setenv("TROVELESS_BACKUP_DIR", str(tmp_path / "backups"))
    from functions.runtime import reset_runtime

    reset_runtime()
    ids = {}
    for kind in ("postgresql", "mariadb"):
        r = api("POST", "/instances", json=body(name=kind, datastore={"type": kind}))
        assert r.status_code == 200, r.get_json()
        ids[kind] = r.get_json()["instance"]["id"]
    with runtime().transaction() as s:
        for inst in s.execute(select(Instance)).scalars():
            inst.task_id, inst.server_status = Task.NONE, "ACTIVE"
        for svc in s.execute(select(ServiceStatus)).scalars():
            svc.status_id, svc.heartbeat_at = SS.HEALTHY.code, utcnow()
        for run in s.execute(select(WorkflowRun)).scalars():
            run.status = runner.RunStatus.SUCCEEDED
    return ids


def create(api, instance_id: str, name: str = "b1", **extra):  # type: ignore[no-untyped-def]
    return api("POST", "/backups", json={"backup": {"name": name, "instance": instance_id, "incremental": 0, **extra}})


def finish(backup_id: str, *, checksum: str = "ab" * 32, lsn: str | None = None) -> None:
    """What the conductor records for a guest's successful GuestBackupFinished."""
    with runtime().transaction() as s:
        b = s.get(Backup, backup_id)
        assert b is not None
        b.state, b.checksum, b.lsn, b.size, b.object_size = "COMPLETED", checksum, lsn, 0.01, 1234


def test_create_show_list_and_instance_status(api, active) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    r = create(api, pg, description="first")
    assert r.status_code == 202, r.get_json()
    b = r.get_json()["backup"]
    assert b["status"] == "NEW" and b["instance_id"] == pg and b["parent_id"] is None
    assert b["datastore"]["type"] == "postgresql" and b["datastore"]["version"] == "15.19"
    assert b["locationRef"].startswith("file://") and b["locationRef"].endswith(f"/database-backups/{b['id']}.tar.zst")
    assert b["description"] == "first" and b["backup_type"] == "full" and b["project_id"] == "p1"
    # The instance shows BACKUP while it runs, and refuses another backup or a restart.
    assert api("GET", f"/instances/{pg}").get_json()["instance"]["status"] == "BACKUP"
    assert [i["status"] for i in api("GET", "/instances").get_json()["instances"] if i["id"] == pg] == ["BACKUP"]
    second = create(api, pg, name="b2")
    assert second.status_code == 422 and "BACKUP" in second.get_json()["unprocessableEntity"]["message"]
    assert api("POST", f"/instances/{pg}/action", json={"restart": {}}).status_code == 422
    with runtime().sessions() as s:
        [run] = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == b["id"])).scalars()
        assert run.workflow == "backup" and run.step == "start_backup"
    shown = api("GET", f"/backups/{b['id']}").get_json()["backup"]
    assert shown["id"] == b["id"] and shown["name"] == "b1"
    assert [x["id"] for x in api("GET", "/backups").get_json()["backups"]] == [b["id"]]
    assert [x["id"] for x in api("GET", f"/instances/{pg}/backups").get_json()["backups"]] == [b["id"]]
    assert api("GET", f"/backups?instance_id={active['mariadb']}").get_json()["backups"] == []
    # Another project sees nothing.
    assert api("GET", f"/backups/{b['id']}", project="p2").status_code == 404
    assert api("GET", "/backups", project="p2").get_json()["backups"] == []
    assert api("POST", "/backups", project="p2", json={"backup": {"name": "x", "instance": pg}}).status_code == 404


def test_validation(api, active) -> None:  # type: ignore[no-untyped-def]
    pg, maria = active["postgresql"], active["mariadb"]
    assert api("POST", "/backups", json={"backup": {"instance": pg}}).status_code == 400
    assert api("POST", "/backups", json={"nope": {}}).status_code == 400
    r = api("POST", "/backups", json={"backup": {"name": "x"}})
    assert r.status_code == 400 and "instance" in r.get_json()["badRequest"]["message"]
    assert create(api, "missing").status_code == 404
    r = create(api, pg, incremental=1, parent_id=None)
    assert r.status_code == 202  # no completed backup yet: a full backup (Trove)
    assert r.get_json()["backup"]["backup_type"] == "full"
    finish(r.get_json()["backup"]["id"])
    r = create(api, pg, name="inc", incremental=1)
    assert r.status_code == 501 and "Incremental" in r.get_json()["notImplemented"]["message"]
    r = create(api, maria, swift_container="Bad Name!")
    assert r.status_code == 400 and "Container name" in r.get_json()["badRequest"]["message"]
    r = create(api, maria, incremental=2)
    assert r.status_code == 400


def test_incremental_chain_delete_and_restore_checks(api, active) -> None:  # type: ignore[no-untyped-def]
    maria = active["mariadb"]
    full = create(api, maria).get_json()["backup"]["id"]
    finish(full, lsn="100")
    inc = create(api, maria, name="inc", incremental=1).get_json()["backup"]
    assert inc["parent_id"] == full and inc["backup_type"] == "incremental"
    # Restoring from a running backup is refused; deleting it too.
    r = api("POST", "/instances", json=body(name="r", datastore={"type": "mariadb"}, restorePoint={"backupRef": inc["id"]}))
    assert r.status_code == 409, r.get_json()
    assert api("DELETE", f"/backups/{inc['id']}").status_code == 422
    finish(inc["id"], checksum="cd" * 32, lsn="200")
    with runtime().transaction() as s:
        chain = backups.restore_chain(s, "p1", inc["id"])
        assert [b.id for b in chain] == [full, inc["id"]]
    # A backup of another datastore cannot restore onto PostgreSQL; too big for the volume: 403.
    r = api("POST", "/instances", json=body(name="r", datastore={"type": "postgresql"}, restorePoint={"backupRef": inc["id"]}))
    assert r.status_code == 400 and "datastore" in r.get_json()["badRequest"]["message"]
    with runtime().transaction() as s:
        s.get(Backup, inc["id"]).size = 5.0  # type: ignore[union-attr]
    r = api("POST", "/instances", json=body(name="r", datastore={"type": "mariadb"}, restorePoint={"backupRef": inc["id"]}))
    assert r.status_code == 403 and "too large" in r.get_json()["forbidden"]["message"]
    with runtime().transaction() as s:
        s.get(Backup, inc["id"]).size = 0.01  # type: ignore[union-attr]
    # Without a datastore in the request the backup's own is used; the chain goes to the guest.
    r = api("POST", "/instances", json=body(name="r", datastore=None, restorePoint={"backupRef": inc["id"]}))
    assert r.status_code == 200, r.get_json()
    new_id = r.get_json()["instance"]["id"]
    assert r.get_json()["instance"]["datastore"]["type"] == "mariadb"
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == new_id)).scalar_one()
        assert [b["backup_id"] for b in run.context["restore"]] == [full, inc["id"]]
        assert run.context["restore"][1] == {"backup_id": inc["id"], "location": chain[1].location,
                                             "checksum": "cd" * 32, "backup_type": "incremental", "lsn": "200"}
    # Deleting the full backup deletes its incremental too, in one workflow.
    assert api("DELETE", f"/backups/{full}").status_code == 202
    assert api("GET", f"/backups/{inc['id']}").status_code == 404
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.workflow == "backup_delete")).scalar_one()
        assert run.context["backup_ids"] == [inc["id"], full]
    r = api("POST", "/instances", json=body(name="r2", datastore=None, restorePoint={"backupRef": full}))
    assert r.status_code == 404


def test_paging_newest_first(api, active) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    ids = []
    for i in range(3):
        b = create(api, pg, name=f"b{i}").get_json()["backup"]["id"]
        finish(b)
        ids.append(b)
    first = api("GET", "/backups?limit=2").get_json()
    assert [b["id"] for b in first["backups"]] == ids[::-1][:2]
    marker = first["links"][0]["href"].split("marker=")[1]
    rest = api("GET", f"/backups?limit=2&marker={marker}").get_json()
    assert [b["id"] for b in rest["backups"]] == [ids[0]] and "links" not in rest


def test_strategies(api, active) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    r = api("POST", "/backup_strategies", json={"backup_strategy": {"swift_container": "project-wide"}})
    assert r.status_code == 202 and r.get_json()["backup_strategy"]["instance_id"] == ""
    api("POST", "/backup_strategies", json={"backup_strategy": {"instance_id": pg, "swift_container": "mine"}})
    b = create(api, pg).get_json()["backup"]
    assert "/mine/" in b["locationRef"]
    b2 = create(api, active["mariadb"]).get_json()["backup"]
    assert "/project-wide/" in b2["locationRef"]
    assert len(api("GET", "/backup_strategies").get_json()["backup_strategies"]) == 2
    assert api("DELETE", f"/backup_strategies?instance_id={pg}").status_code == 202
    assert len(api("GET", "/backup_strategies").get_json()["backup_strategies"]) == 1
    assert api("POST", "/backup_strategies", json={"backup_strategy": {"swift_container": "x", "other": 1}}).status_code == 400


# ---- conductor ----------------------------------------------------------------------------


def _signed(event, instance_id: str, key: bytes, sequence: int):  # type: ignore[no-untyped-def]
    message = event.to_message(guest_source(instance_id), subject=instance_id,
                               extensions={"sequence": format_sequence(sequence), "partitionkey": instance_id})
    return sign(message, instance_key(instance_id, key))


def _post(fn: str, message):  # type: ignore[no-untyped-def]
    headers, data = encode_binary(message)
    return create_app(fn, CONDUCTOR).test_client().post("/", headers=headers, data=data)


def _wait_started(backup_id: str) -> None:
    """As if start_backup ran: the run waits at wait_backup."""
    with runtime().transaction() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == backup_id)).scalar_one()
        run.step, run.status = "wait_backup", runner.RunStatus.WAITING
        run.deadline_at = utcnow() + dt.timedelta(seconds=60)
        run.context = {**run.context, "requested_at": (utcnow() - dt.timedelta(seconds=5)).isoformat() + "Z"}


def test_conductor_applies_progress_in_order_and_results_once(api, active) -> None:  # type: ignore[no-untyped-def]
    maria = active["mariadb"]
    b = create(api, maria).get_json()["backup"]["id"]
    _wait_started(b)
    with runtime().sessions() as s:
        key = bytes.fromhex(s.get(Instance, maria).encrypted_key)  # type: ignore[union-attr]
    p = lambda seq, n, state="BUILDING": _signed(
        GuestBackupProgress(instance_id=maria, backup_id=b, state=state, bytes_done=n), maria, key, seq)
    assert _post("on_guest_backup_progress", p(10, 100)).status_code == 202
    assert _post("on_guest_backup_progress", p(5, 50)).status_code == 202  # late: ignored
    assert _post("on_guest_backup_progress", p(11, 200, "SAVING")).status_code == 202
    shown = api("GET", f"/backups/{b}").get_json()["backup"]
    assert (shown["status"], shown["bytes_done"]) == ("SAVING", 200)
    done = GuestBackupFinished(instance_id=maria, backup_id=b, success=True, location="file:///x", checksum="ee" * 32,
                               object_size=300, size_gb=0.02, lsn="4242", backup_type="full")
    assert _post("on_guest_backup_finished", _signed(done, maria, key, 12)).status_code == 202
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == b)).scalar_one()
        assert (run.step, run.status) == ("finish_backup", runner.RunStatus.RUNNING)  # resumed; event in the outbox
    # A late progress event cannot reopen a completed backup; a repeated result changes nothing.
    assert _post("on_guest_backup_progress", p(13, 999)).status_code == 202
    assert _post("on_guest_backup_finished", _signed(done, maria, key, 12)).status_code == 202
    shown = api("GET", f"/backups/{b}").get_json()["backup"]
    assert shown["status"] == "COMPLETED" and shown["checksum"] == {"sha256": "ee" * 32}
    assert shown["object_size"] == 300 and shown["size"] == 0.02
    assert api("GET", f"/instances/{maria}").get_json()["instance"]["status"] == "ACTIVE"
    # Another instance's key cannot report for this one's backup.
    other = active["postgresql"]
    with runtime().sessions() as s:
        other_key = bytes.fromhex(s.get(Instance, other).encrypted_key)  # type: ignore[union-attr]
    forged = _signed(GuestBackupFinished(instance_id=maria, backup_id=b, success=False, error="x"), maria, other_key, 20)
    assert _post("on_guest_backup_finished", forged).status_code == 400


def test_failure_result_and_a_restarted_guest_fail_the_backup(api, active) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    with runtime().sessions() as s:
        key = bytes.fromhex(s.get(Instance, pg).encrypted_key)  # type: ignore[union-attr]
    b = create(api, pg).get_json()["backup"]["id"]
    _wait_started(b)
    failed = GuestBackupFinished(instance_id=pg, backup_id=b, success=False, error="pg_basebackup exited with 1")
    assert _post("on_guest_backup_finished", _signed(failed, pg, key, 10)).status_code == 202
    shown = api("GET", f"/backups/{b}").get_json()["backup"]
    assert shown["status"] == "FAILED" and shown["fail_reason"] == "pg_basebackup exited with 1"
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == b)).scalar_one()
        assert run.deadline_at is not None and run.deadline_at <= utcnow()  # the sweeper fails it now
    # A heartbeat (sent after the request) naming no backup cuts the wait to a short grace.
    b2 = create(api, pg, name="b2").get_json()["backup"]["id"]
    _wait_started(b2)
    hb = GuestHeartbeat(instance_id=pg, status="HEALTHY", datastore="postgresql", backup_id=None)
    assert _post("on_guest_heartbeat", _signed(hb, pg, key, 30)).status_code == 202
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == b2)).scalar_one()
        assert run.deadline_at <= utcnow() + dt.timedelta(seconds=11)
    # Past the grace the sweeper compensates the wait; the workflow's hook fails the backup.
    with runtime().transaction() as s:
        [message] = [m for m in runner.sweep(s, now=utcnow() + dt.timedelta(seconds=12))
                     if m.subject in _run_ids(s, b2)]
    with runtime().transaction() as s:
        runner.execute(s, BACKUP, message, registry.parse(message))
    shown = api("GET", f"/backups/{b2}").get_json()["backup"]
    assert shown["status"] == "FAILED" and "timed out" in shown["fail_reason"]


def _run_ids(session, backup_id: str) -> set[str]:  # type: ignore[no-untyped-def]
    return set(session.execute(select(WorkflowRun.id).where(WorkflowRun.resource_id == backup_id)).scalars())


# ---- retention and schedules ------------------------------------------------------------------


def _row(id_: str, created: dt.datetime, parent: str | None = None) -> Backup:
    return Backup(id=id_, name=id_, tenant_id="p1", state="COMPLETED", created=created, parent_id=parent)


def test_expired_backups_by_count_and_age() -> None:
    now = dt.datetime(2026, 11, 22)
    rows = [_row(f"b{i}", now - dt.timedelta(days=i)) for i in range(5)]
    assert backup_schedules.expired_backups(rows, 2, None, now) == {"b2", "b3", "b4"}
    assert backup_schedules.expired_backups(rows, None, 2.5, now) == {"b3", "b4"}
    assert backup_schedules.expired_backups(rows, 4, 1.5, now) == {"b2", "b3", "b4"}
    assert backup_schedules.expired_backups(rows, None, None, now) == set()


def test_schedule_runs_prunes_and_keeps_what_incrementals_need(api, active) -> None:  # type: ignore[no-untyped-def]
    maria = active["mariadb"]
    bad = api("POST", "/backup_schedules", json={"backup_schedule": {"name": "s", "instance_id": maria, "cron": "every day"}})
    assert bad.status_code == 400 and "cron" in bad.get_json()["badRequest"]["message"]
    pg_inc = api("POST", "/backup_schedules", json={"backup_schedule": {
        "name": "s", "instance_id": active["postgresql"], "cron": "0 3 * * *", "incremental": True}})
    assert pg_inc.status_code == 501
    r = api("POST", "/backup_schedules", json={"backup_schedule": {
        "name": "nightly", "instance_id": maria, "cron": "0 3 * * *", "keep_last": 2, "incremental": True, "full_every": 3}})
    assert r.status_code == 200, r.get_json()
    sched = r.get_json()["backup_schedule"]
    assert sched["next_run"].endswith("03:00:00") and sched["keep_last"] == 2
    assert [s["id"] for s in api("GET", f"/backup_schedules?instance_id={maria}").get_json()["backup_schedules"]] == [sched["id"]]
    rt = runtime()
    when = dt.datetime.fromisoformat(sched["next_run"])
    made = []
    for day in range(4):
        now = when + dt.timedelta(days=day)
        with rt.transaction() as s:
            events = backup_schedules.run_due(s, rt.storage, "database-backups", now=now)
            assert len(events) == 1
        with rt.sessions() as s:
            b = s.execute(select(Backup).where(Backup.schedule_id == sched["id"]).order_by(Backup.created.desc())).scalars().first()
            made.append((b.id, b.backup_type, b.parent_id))
        # A second tick at the same moment starts nothing (not due; and a backup runs).
        with rt.transaction() as s:
            assert backup_schedules.run_due(s, rt.storage, "database-backups", now=now) == []
        with rt.transaction() as s:
            row = s.get(Backup, made[-1][0])
            row.state, row.checksum, row.lsn, row.created = "COMPLETED", "aa" * 32, str(day), now
            backup_schedules.apply_retention(s, sched["id"], now)
    # Runs 0 and 3 are full (full_every 3), 1 and 2 incremental on the previous one.
    assert [t for _i, t, _p in made] == ["full", "incremental", "incremental", "full"]
    assert made[1][2] == made[0][0] and made[2][2] == made[1][0]
    alive = {b["id"] for b in api("GET", "/backups").get_json()["backups"]}
    # keep_last 2 keeps runs 2 and 3; run 2 needs 1 and 0, so nothing could go yet.
    assert alive == {m[0] for m in made}
    with rt.transaction() as s:
        now = when + dt.timedelta(days=4)
        events = backup_schedules.run_due(s, rt.storage, "database-backups", now=now)
        new = s.execute(select(Backup).where(Backup.schedule_id == sched["id"]).order_by(Backup.created.desc())).scalars().first()
        new.state, new.checksum, new.lsn, new.created = "COMPLETED", "aa" * 32, "4", now
        backup_schedules.apply_retention(s, sched["id"], now)
    # Now runs 3 (full) and 4 (incremental on 3) are kept: the whole first chain goes.
    alive = {b["id"] for b in api("GET", "/backups").get_json()["backups"]}
    assert alive == {made[3][0], new.id}
    with rt.sessions() as s:
        sched_row = s.get(BackupSchedule, sched["id"])
        assert sched_row.runs == 5 and sched_row.last_result.startswith("backup ")
    assert api("DELETE", f"/backup_schedules/{sched['id']}").status_code == 202
    assert api("GET", f"/backup_schedules/{sched['id']}").status_code == 404


def _fail_by_deadline(backup_id: str) -> None:
    """What the sweeper does at the wait's deadline: compensate, then the workflow's hook."""
    with runtime().transaction() as s:
        [message] = [m for m in runner.sweep(s, now=utcnow() + dt.timedelta(seconds=120))
                     if m.subject in _run_ids(s, backup_id)]
    with runtime().transaction() as s:
        runner.execute(s, BACKUP, message, registry.parse(message))


def test_a_lost_result_is_recovered_from_a_complete_object(api, active) -> None:  # type: ignore[no-untyped-def]
    from objectstore import open_location

    maria = active["mariadb"]
    b = create(api, maria).get_json()["backup"]
    _wait_started(b["id"])
    # The guest published its object whole, but its GuestBackupFinished never arrived.
    store, key = open_location(b["locationRef"])
    with store.writer(key, {"backup_id": b["id"], "backup_type": "full", "lsn": "777"}) as w:
        w.write(b"zstd bytes")
        info = w.commit()
    _fail_by_deadline(b["id"])
    shown = api("GET", f"/backups/{b['id']}").get_json()["backup"]
    assert shown["status"] == "COMPLETED" and shown["checksum"] == {"sha256": info.metadata["sha256"]}
    assert shown["object_size"] == len(b"zstd bytes") and "fail_reason" not in shown
    assert store.exists(key)

    # An object that is not this backup's (or a partial one) is no proof: FAILED, and removed.
    b2 = create(api, maria, name="b2").get_json()["backup"]
    _wait_started(b2["id"])
    store, key = open_location(b2["locationRef"])
    with store.writer(key, {"backup_id": "someone-else"}) as w:
        w.write(b"x")
        w.commit()
    partial = store.writer(key + ".next")  # an upload in flight elsewhere stays untouched
    partial.write(b"y")
    _fail_by_deadline(b2["id"])
    assert api("GET", f"/backups/{b2['id']}").get_json()["backup"]["status"] == "FAILED"
    assert not store.exists(key)
    partial.abort()
