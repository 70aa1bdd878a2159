"""Quotas: Trove's mgmt quota API, and usage that is reserved atomically and never drifts
(create, failed builds, delete, resize, backups; 50 concurrent creates against a quota of 10)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from werkzeug.test import Client

from events import registry
from events.envelope import Message, from_json
from functions.core import provisioning, quotas
from functions.core import workflow as runner
from functions.core.backup_flow import BACKUP
from functions.core.models.backup import Backup
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import OutboxEvent, WorkflowRun
from functions.core.models.quota import QuotaHold, QuotaUsage
from functions.core.resizing import RESIZE
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.runtime import reset_runtime, runtime
from tests.functions.test_backups_api import active, create, finish  # noqa: F401 - the fixture
from tests.functions.test_instances_api import body

WORKFLOWS = {**provisioning.WORKFLOWS, "resize": RESIZE, "backup": BACKUP}
FF = str(Path(sys.executable).parent / "functions-framework")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(api, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Workflow steps run against a compute driver rooted in the test's own directory."""
    monkeypatch.setenv("TROVELESS_DATA_DIR", str(tmp_path / "data"))
    reset_runtime()
    return api


def usage(project: str = "p1") -> dict[str, int]:
    """The counters, checked against what the holds say they should be (no drift)."""
    with runtime().sessions() as s:
        counters = dict(s.execute(select(QuotaUsage.resource, QuotaUsage.in_use).where(QuotaUsage.tenant_id == project)).all())
        held = dict(s.execute(
            select(QuotaHold.resource, func.sum(QuotaHold.amount)).where(QuotaHold.tenant_id == project)
            .group_by(QuotaHold.resource)
        ).all())
    out = {r: counters.get(r, 0) for r in quotas.RESOURCES}
    assert out == {r: int(held.get(r) or 0) for r in quotas.RESOURCES}, f"counters {out} drifted from holds {held}"
    return out


def set_quotas(api, project: str = "p1", **limits: int) -> None:  # type: ignore[no-untyped-def]
    r = api("PUT", f"/mgmt/quotas/{project}", token="admin", json={"quotas": limits})
    assert r.status_code == 200, r.get_json()


def make_active(iid: str) -> None:
    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        inst.task_id, inst.server_status = Task.NONE, "ACTIVE"  # type: ignore[union-attr]
        svc = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == iid)).scalar_one()
        svc.status_id = SS.HEALTHY.code
        for run in s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == iid)).scalars():
            run.status = runner.RunStatus.SUCCEEDED


def take_step_events(workflow: str) -> list[Message]:
    """The first step events waiting in the outbox for `workflow` (as the relay would send)."""
    with runtime().transaction() as s:
        out = []
        for row in s.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars():
            message = from_json(row.event)
            if message.type.startswith(f"troveless.step.{workflow}."):
                out.append(message)
                s.delete(row)
        return out


def deliver(message: Message) -> Message | None:
    event = registry.parse(message)
    with runtime().transaction() as s:
        return runner.execute(s, WORKFLOWS[event.workflow], message, event)  # type: ignore[attr-defined]


def drive(workflow: str) -> list[Message]:
    """Deliver each waiting event of `workflow` and every reply, as the broker would."""
    delivered = []
    for message in take_step_events(workflow):
        current: Message | None = message
        while current is not None:
            delivered.append(current)
            current = deliver(current)
    return delivered


def create_instance(api, name: str = "i", project: str = "p1", **fields):  # type: ignore[no-untyped-def]
    return api("POST", "/instances", project=project, json=body(name=name, **fields))


# ---- the API ------------------------------------------------------------------------------


def test_show_update_and_who_may(api) -> None:  # type: ignore[no-untyped-def]
    r = api("GET", "/mgmt/quotas/p1")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"quotas": [
        {"resource": "instances", "in_use": 0, "reserved": 0, "limit": 10},
        {"resource": "ram", "in_use": 0, "reserved": 0, "limit": -1},
        {"resource": "volumes", "in_use": 0, "reserved": 0, "limit": 40},
        {"resource": "backups", "in_use": 0, "reserved": 0, "limit": 50},
    ]}
    # A member reads only their own project's; an administrator reads anyone's.
    assert api("GET", "/mgmt/quotas/p2").status_code == 403
    assert api("GET", "/mgmt/quotas/p1", project="p2", token="p2").status_code == 403  # p1's via p2's URL
    assert api("GET", "/mgmt/quotas/p2", token="admin").status_code == 200
    assert api("GET", "/mgmt/quotas/p1", project="p2").status_code == 403  # p2's token on p1's URL
    # Only administrators change them.
    r = api("PUT", "/mgmt/quotas/p1", json={"quotas": {"instances": 100}})
    assert r.status_code == 403 and "forbidden" in r.get_json()

    r = api("PUT", "/mgmt/quotas/p2", token="admin", json={"quotas": {"instances": 3, "backups": 30}})
    assert r.status_code == 200 and r.get_json() == {"quotas": {"instances": 3, "backups": 30}}
    r = api("PUT", "/mgmt/quotas/p2", token="admin", json={"quotas": {"instances": 4, "ram": -1, "volumes": None}})
    assert r.status_code == 200 and r.get_json() == {"quotas": {"instances": 4, "ram": -1}}
    limits = {q["resource"]: q["limit"] for q in api("GET", "/mgmt/quotas/p2", project="p2").get_json()["quotas"]}
    assert limits == {"instances": 4, "ram": -1, "volumes": 40, "backups": 30}
    absolute = api("GET", "/limits", project="p2").get_json()["limits"][0]
    assert absolute == {"verb": "ABSOLUTE", "max_instances": 4, "max_ram": -1, "max_volumes": 40, "max_backups": 30}
    assert api("GET", "/limits").get_json()["limits"][0]["max_instances"] == 10  # p1 untouched

    for payload, status, text in [
        ({"quotas": {"instances": -2}}, 400, "quotas['instances']: Input should be greater than or equal to -1"),
        ({"quotas": {"instances": 2**31}}, 400, "quotas['instances']: Input should be less than or equal to"),
        ({"quotas": {"instances": "many"}}, 400, "quotas['instances']: Input should be a valid integer"),
        ({"quotas": {"instances": True}}, 400, "quotas['instances']: Input should be a valid integer"),
        ({"quotas": {"instances": 1.5}}, 400, "quotas['instances']: Input should be a valid integer"),
        ({"quotas": {"bananas": 1, "instances": 1}}, 404, "Unknown quota resources ['bananas']"),
        ({"quotas": [1]}, 400, "Input should be a valid dictionary"),
        ({}, 400, "'quotas' is a required property"),
    ]:
        r = api("PUT", "/mgmt/quotas/p2", token="admin", json=payload)
        assert r.status_code == status and text in str(r.get_json()), (payload, r.get_json())
    assert api("GET", "/limits", project="p2").get_json()["limits"][0]["max_instances"] == 4  # nothing changed


# ---- instances ----------------------------------------------------------------------------


def test_create_over_the_quota_is_413_and_changes_nothing(api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    set_quotas(api, instances=2, ram=1536, volumes=3)
    assert create_instance(api, "a").status_code == 200
    assert usage() == {"instances": 1, "ram": 512, "volumes": 1, "backups": 0}
    r = create_instance(api, "b", flavorRef=3)  # 2048 MB
    assert r.status_code == 413 and r.get_json() == {
        "overLimit": {"code": 413, "message": "Quota exceeded for resources: ['ram']."}}
    r = create_instance(api, "b", flavorRef=3, volume={"size": 3})
    assert r.status_code == 413
    assert r.get_json()["overLimit"]["message"] == "Quota exceeded for resources: ['ram', 'volumes']."
    assert create_instance(api, "b", flavorRef=2, volume={"size": 2}).status_code == 200
    r = create_instance(api, "c")
    assert r.status_code == 413 and "['instances', 'ram', 'volumes']" in r.get_json()["overLimit"]["message"]
    assert usage() == {"instances": 2, "ram": 1536, "volumes": 3, "backups": 0}
    # Another project has its own counters.
    assert create_instance(api, "other", project="p2").status_code == 200
    assert usage("p2")["instances"] == 1
    with runtime().sessions() as s:
        names = s.execute(select(Instance.name).where(Instance.tenant_id == "p1").order_by(Instance.name)).scalars().all()
        assert names == ["a", "b"]
        assert s.execute(select(func.count()).select_from(WorkflowRun)).scalar_one() == 3

    # A create that fails after its reservation (here: starting the workflow) takes nothing:
    # the reservation is in the transaction that rolls back.
    set_quotas(api, instances=10, ram=-1, volumes=-1)

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("the workflow could not start")

    monkeypatch.setattr(provisioning.PROVISION, "start", boom)
    assert create_instance(api, "d").status_code == 500
    assert usage() == {"instances": 2, "ram": 1536, "volumes": 3, "backups": 0}


def test_delete_releases_once_when_the_teardown_finishes(local) -> None:  # type: ignore[no-untyped-def]
    api = local
    keep = create_instance(api, "keep").get_json()["instance"]["id"]
    gone = create_instance(api, "gone", flavorRef=2, volume={"size": 2}).get_json()["instance"]["id"]
    take_step_events("provision")  # the builds never run here
    assert usage() == {"instances": 2, "ram": 1536, "volumes": 3, "backups": 0}
    assert api("DELETE", f"/instances/{gone}").status_code == 202
    # Until the teardown is done, the server and volume may still exist: still held.
    assert usage()["instances"] == 2
    delivered = drive("teardown")
    assert [registry.parse(m).step for m in delivered] == ["cancel_work", "stop_server", "remove_volume", "finish_delete"]  # type: ignore[attr-defined]
    assert api("GET", f"/instances/{gone}").status_code == 404
    assert usage() == {"instances": 1, "ram": 512, "volumes": 1, "backups": 0}
    # A redelivered last step, or the step's effect run again, releases nothing more.
    assert deliver(delivered[-1]) is None
    with runtime().transaction() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == gone, WorkflowRun.workflow == "teardown")).scalar_one()
        ctx = runner.StepContext(session=s, run_id=run.id, workflow="teardown", step="finish_delete", attempt=2,
                                 resource_id=gone, context={}, now=run.finished_at)  # type: ignore[arg-type]
        provisioning.finish_delete(ctx)
        assert quotas.release(s, gone) == {}
    assert usage() == {"instances": 1, "ram": 512, "volumes": 1, "backups": 0}
    assert keep


def test_a_failed_build_releases_and_its_delete_releases_nothing(local) -> None:  # type: ignore[no-untyped-def]
    api = local
    create_instance(api, "keep")
    failed = create_instance(api, "failed", flavorRef=2, volume={"size": 3}).get_json()["instance"]["id"]
    take_step_events("provision")
    with runtime().transaction() as s:  # only the second build runs
        first = provisioning.PROVISION.step("reserve")
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == failed)).scalar_one()
        message = runner.step_message(run, first.name, 1, "forward")
    current: Message | None = message
    while current is not None:  # reserve, allocate_volume, create_server fails (no broker), compensations
        current = deliver(current)
    shown = api("GET", f"/instances/{failed}").get_json()["instance"]
    assert shown["status"] == "ERROR", shown
    assert usage() == {"instances": 1, "ram": 512, "volumes": 1, "backups": 0}
    # Deleting the ERROR instance gives back nothing more (the counters would go below
    # what "keep" holds otherwise).
    assert api("DELETE", f"/instances/{failed}").status_code == 202
    drive("teardown")
    assert api("GET", f"/instances/{failed}").status_code == 404
    assert usage() == {"instances": 1, "ram": 512, "volumes": 1, "backups": 0}


def test_resize_reserves_growth_and_settles_when_done_or_failed(local) -> None:  # type: ignore[no-untyped-def]
    api = local
    iid = create_instance(api, "r", flavorRef=2).get_json()["instance"]["id"]  # 1024 MB, 1 GB
    take_step_events("provision")
    make_active(iid)
    set_quotas(api, ram=1536, volumes=2)

    r = api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "3"}})  # 2048 MB
    assert r.status_code == 413 and r.get_json()["overLimit"]["message"] == "Quota exceeded for resources: ['ram']."
    r = api("POST", f"/instances/{iid}/action", json={"resize": {"volume": {"size": 3}}})
    assert r.status_code == 413 and "['volumes']" in r.get_json()["overLimit"]["message"]
    assert api("GET", f"/instances/{iid}").get_json()["instance"]["status"] == "ACTIVE"  # nothing started

    # A resize that fails (the guest cannot be reached here) gives the growth back.
    set_quotas(api, ram=-1)
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "3"}}).status_code == 202
    assert usage()["ram"] == 2048
    drive("resize")
    with runtime().sessions() as s:
        assert s.execute(select(WorkflowRun.status).where(WorkflowRun.workflow == "resize")).scalar_one() == "FAILED"
    assert usage() == {"instances": 1, "ram": 1024, "volumes": 1, "backups": 0}

    # One that finishes keeps the new size; a smaller flavor gives RAM back only when done.
    make_active(iid)
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"volume": {"size": 2}}}).status_code == 202
    assert usage()["volumes"] == 2
    _finish_resize(iid)
    assert usage() == {"instances": 1, "ram": 1024, "volumes": 2, "backups": 0}
    make_active(iid)
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "1"}}).status_code == 202
    assert usage()["ram"] == 1024  # the server still runs with the larger flavor
    _finish_resize(iid)
    _finish_resize(iid)  # a retried finish changes nothing
    assert usage() == {"instances": 1, "ram": 512, "volumes": 2, "backups": 0}


def _finish_resize(iid: str) -> None:
    """What finish_resize does once the guest reported the new size."""
    from functions.core.resizing import finish_resize

    with runtime().transaction() as s:
        run = s.execute(
            select(WorkflowRun).where(WorkflowRun.resource_id == iid, WorkflowRun.workflow == "resize")
            .order_by(WorkflowRun.created_at.desc()).limit(1)
        ).scalar_one()
        finish_resize(runner.StepContext(session=s, run_id=run.id, workflow="resize", step="finish_resize",
                                         attempt=1, resource_id=iid, context=dict(run.context), now=run.created_at))
        run.status = runner.RunStatus.SUCCEEDED


# ---- backups ------------------------------------------------------------------------------


def test_backups_count_until_deleted(api, active) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    set_quotas(api, backups=2)
    first = create(api, active["mariadb"], "full").get_json()["backup"]["id"]
    finish(first, lsn="100")
    assert usage()["backups"] == 1
    inc = create(api, active["mariadb"], "inc", parent_id=first).get_json()["backup"]["id"]
    finish(inc, lsn="200")
    assert usage()["backups"] == 2
    r = create(api, active["postgresql"], "third")
    assert r.status_code == 413 and r.get_json()["overLimit"]["message"] == "Quota exceeded for resources: ['backups']."
    with runtime().sessions() as s:
        assert s.execute(select(func.count()).select_from(Backup)).scalar_one() == 2
    # Deleting the full backup deletes its incremental too: both are given back, once.
    assert api("DELETE", f"/backups/{first}").status_code == 202
    assert usage()["backups"] == 0
    assert api("DELETE", f"/backups/{first}").status_code == 404
    assert usage()["backups"] == 0
    assert create(api, active["postgresql"], "again").status_code == 202
    assert usage() == {"instances": 2, "ram": 1024, "volumes": 2, "backups": 1}


def test_a_scheduled_backup_over_the_quota_is_skipped(api, active) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import datetime as dt

    from functions.core import backup_schedules
    from functions.core.models.backup import BackupSchedule
    from functions.core.models.base import utcnow

    set_quotas(api, backups=0)
    r = api("POST", "/backup_schedules", json={"backup_schedule": {
        "name": "s", "instance_id": active["postgresql"], "cron": "* * * * *"}})
    assert r.status_code in (200, 202), r.get_json()
    rt = runtime()
    with rt.transaction() as s:
        backup_schedules.run_due(s, rt.storage, rt.settings.backups.container, now=utcnow() + dt.timedelta(minutes=2))
    with rt.sessions() as s:
        result = s.execute(select(BackupSchedule.last_result)).scalar_one()
        assert result == "skipped: Quota exceeded for resources: ['backups'].", result
        assert s.execute(select(func.count()).select_from(Backup)).scalar_one() == 0
    assert usage()["backups"] == 0


# ---- concurrency --------------------------------------------------------------------------


def test_50_concurrent_creates_against_a_quota_of_10_accept_exactly_10(api, gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Half the requests through this process's gateway, half through a second process
    serving create_instance alone (its own runtime and connection pool), all at once."""
    set_quotas(api, instances=10)
    port = _free_port()
    env = {**os.environ, "TROVELESS_DATA_DIR": str(tmp_path / "data")}
    with open(tmp_path / "ff.log", "wb") as log:
        proc = subprocess.Popen(
            [FF, "--source", str(REPO / "functions/api/instances.py"), "--target", "create_instance",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        remote = f"http://127.0.0.1:{port}/v1.0/p1/instances"
        token = _token(api)
        _wait_serving(proc, remote, token, tmp_path / "ff.log")
        barrier = threading.Barrier(50)
        statuses: list[int] = []
        lock = threading.Lock()

        def one(n: int) -> None:
            payload = body(name=f"c{n}")
            barrier.wait()
            if n % 2:
                status = httpx.post(remote, json=payload, headers={"X-Auth-Token": token}, timeout=60).status_code
            else:
                status = Client(gateway.application).post(
                    "/v1.0/p1/instances", json=payload, headers={"X-Auth-Token": token}).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert Counter(statuses) == {200: 10, 413: 40}, Counter(statuses)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with runtime().sessions() as s:
        assert s.execute(select(func.count()).select_from(Instance).where(Instance.tenant_id == "p1")).scalar_one() == 10
    assert usage() == {"instances": 10, "ram": 5120, "volumes": 10, "backups": 0}


def _token(api) -> str:  # type: ignore[no-untyped-def]
    from functions.core.auth import TokenFile

    return TokenFile(Path(os.environ["TROVELESS_TOKEN_FILE"])).issue("p1", "racer", ("member",))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_serving(proc: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            httpx.get(url, headers={"X-Auth-Token": token}, timeout=1)  # 405: serving, and counts no POST
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "functions-framework did not start"
            time.sleep(0.05)
