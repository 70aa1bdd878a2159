"""Administrator actions: reset_status and the mgmt actions, and who may call them."""

from __future__ import annotations

from sqlalchemy import select

from functions.core.models.backup import Backup
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.runtime import runtime
from tests.functions.test_instances_api import body


def _create(api) -> str:  # type: ignore[no-untyped-def]
    r = api("POST", "/instances", json=body(name="x", datastore={"type": "postgresql"}))
    assert r.status_code == 200, r.get_json()
    return r.get_json()["instance"]["id"]


def test_non_admins_get_403_and_unknown_actions_400(api) -> None:  # type: ignore[no-untyped-def]
    iid = _create(api)
    for action in ("stop", "start", "reboot", "reset-task-status"):
        r = api("POST", f"/mgmt/instances/{iid}/action", json={action: {}})
        assert r.status_code == 403 and "administrators" in r.get_json()["forbidden"]["message"], action
    r = api("POST", f"/instances/{iid}/action", json={"reset_status": {}})
    assert r.status_code == 403
    r = api("POST", f"/mgmt/instances/{iid}/action", json={"migrate": {}}, token="admin")
    assert r.status_code == 400 and "Valid actions" in r.get_json()["badRequest"]["message"]
    r = api("POST", "/mgmt/instances/nope/action", json={"reboot": {}}, token="admin")
    assert r.status_code == 404
    # A BUILD instance cannot be stopped (422, as any action on an instance that is not ready).
    r = api("POST", f"/mgmt/instances/{iid}/action", json={"stop": {}}, token="admin")
    assert r.status_code == 422


def test_reset_status_unsticks_a_build_and_fails_running_backups(api) -> None:  # type: ignore[no-untyped-def]
    iid = _create(api)
    with runtime().transaction() as s:
        s.add(Backup(name="b", tenant_id="p1", instance_id=iid, state="BUILDING"))
    r = api("POST", f"/instances/{iid}/action", json={"reset_status": {}}, token="admin")
    assert r.status_code == 202, r.get_json()
    with runtime().sessions() as s:
        inst = s.get(Instance, iid)
        assert inst is not None and inst.task_id == Task.NONE
        svc = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == iid)).scalar_one()
        assert svc.status_id == SS.UNKNOWN.code
        [run] = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == iid)).scalars()
        assert run.status == "CANCELLED"
        [b] = s.execute(select(Backup).where(Backup.instance_id == iid)).scalars()
        assert b.state == "FAILED" and "administrator" in (b.fail_reason or "")
    # An administrator of project p1 may act on it; the owner now sees BUILD (the server
    # status of an interrupted build) and may delete it.
    assert api("DELETE", f"/instances/{iid}").status_code == 202


def test_resize_validation(api) -> None:  # type: ignore[no-untyped-def]
    iid = _create(api)
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"volume": {"size": 2}}}).status_code == 422  # BUILD
    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        inst.task_id, inst.server_status = Task.NONE, "ACTIVE"  # type: ignore[union-attr]
        svc = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == iid)).scalar_one()
        svc.status_id = SS.HEALTHY.code
    cases = [
        ({"resize": {}}, 400, "either"),
        ({"resize": {"flavorRef": "1", "volume": {"size": 2}}}, 400, "either"),
        ({"resize": {"volume": {"size": "big"}}}, 400, "positive integer"),
        ({"resize": {"volume": {"size": 1}}}, 400, "larger than the current volume size of '1'"),
        ({"resize": {"volume": {"size": 11}}}, 413, "cannot exceed"),
        ({"resize": {"flavorRef": "1"}}, 400, "different than the current flavor"),
        ({"resize": {"flavorRef": "99"}}, 404, "Flavor 99"),
    ]
    for payload, status, text in cases:
        r = api("POST", f"/instances/{iid}/action", json=payload)
        assert r.status_code == status and text in str(r.get_json()), (payload, r.get_json())
    r = api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "2"}})
    assert r.status_code == 202
    shown = api("GET", f"/instances/{iid}").get_json()["instance"]
    assert shown["status"] == "RESIZE" and shown["flavor"]["id"] == "1"  # the new flavor once done
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.workflow == "resize")).scalar_one()
        # The run remembers the API request that started it (for its notifications).
        assert run.context == {"flavor_id": "2", "request": {**run.context["request"], "user_id": "u1", "tenant_id": "p1"}}
