"""The policy table covers every route, and tenants are isolated on every route.

The isolation walk takes EVERY HTTP function of serverless.yaml and calls it as project
p2 against project p1's resources, twice: with p2's token on p1's URL (403 before any
handler runs), and on p2's own URL naming p1's ids (404, or 403 for administrators' routes).
No response may carry any of p1's ids or names, and afterwards p1's resources are exactly
as they were."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select

from functions.core import policy
from functions.core import workflow as runner
from functions.core.models.backup import Backup
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.runtime import runtime
from infra.spec import load_spec
from tests.functions.test_instances_api import body as instance_body

HTTP = {name: fn.trigger.http for name, fn in load_spec().functions.items() if fn.trigger.http}


def test_every_route_has_a_rule() -> None:
    missing = sorted(name for name in HTTP if name not in policy.RULES)
    assert missing == [], f"add these operations to functions/core/policy.py RULES: {missing}"
    for name, http in HTTP.items():
        if policy.RULES[name] == policy.Rule.PUBLIC:
            assert "{project_id}" not in http.path, f"{name} is public but project-scoped"
        if "/mgmt/" in http.path and name != "show_quotas":
            assert policy.RULES[name] == policy.Rule.ADMIN, f"{name} is a mgmt route"


def test_rules_decide_as_documented(api) -> None:  # type: ignore[no-untyped-def]
    from functions.core.auth import Identity
    from functions.core.errors import Forbidden, Unauthorized

    member, other, admin = Identity("p1", "u", ("member",)), Identity("p2", "u", ("member",)), Identity("p9", "o", ("admin",))
    policy.enforce("versions_index", None, None)
    with pytest.raises(Unauthorized):
        policy.enforce("list_instances", None, "p1")
    policy.enforce("list_instances", member, "p1")
    with pytest.raises(Forbidden):
        policy.enforce("list_instances", other, "p1")
    policy.enforce("list_instances", admin, "p1")  # admin_or_owner
    with pytest.raises(Forbidden):
        policy.enforce("list_mgmt_instances", member, "p1")
    policy.enforce("list_mgmt_instances", admin, "p1")
    with pytest.raises(Forbidden):
        policy.enforce("no_such_operation", member, "p1")  # unknown: closed, not open


@pytest.fixture
def victim(api) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """p1's resources: an ACTIVE instance, a configuration group, a completed backup, a
    backup schedule and a backup strategy."""
    r = api("POST", "/instances", json=instance_body(name="victim-instance", datastore={"type": "mariadb"}))
    assert r.status_code == 200, r.get_json()
    iid = r.get_json()["instance"]["id"]
    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        inst.task_id, inst.server_status = Task.NONE, "ACTIVE"  # type: ignore[union-attr]
        for svc in s.execute(select(ServiceStatus)).scalars():
            svc.status_id, svc.heartbeat_at = SS.HEALTHY.code, utcnow()
        for run in s.execute(select(WorkflowRun)).scalars():
            run.status = runner.RunStatus.SUCCEEDED
        backup = Backup(name="victim-backup", tenant_id="p1", instance_id=iid, state="COMPLETED",
                        location="file:///nowhere/victim", checksum="ab" * 32, size=0.1)
        s.add(backup)
        s.flush()
        bid = backup.id
    r = api("POST", "/configurations", json={"configuration": {
        "name": "victim-config", "values": {"max_connections": 50}, "datastore": {"type": "mariadb"}}})
    assert r.status_code == 200, r.get_json()
    cid = r.get_json()["configuration"]["id"]
    r = api("POST", "/backup_schedules", json={"backup_schedule": {
        "name": "victim-schedule", "instance_id": iid, "cron": "0 3 * * *", "keep_last": 2}})
    assert r.status_code in (200, 202), r.get_json()
    sid = r.get_json()["backup_schedule"]["id"]
    r = api("POST", "/backup_strategies", json={"backup_strategy": {"instance_id": iid, "swift_container": "victim-bucket"}})
    assert r.status_code == 202, r.get_json()
    return {"instance_id": iid, "configuration_id": cid, "backup_id": bid, "schedule_id": sid}


def _params(victim: dict[str, str], project: str) -> dict[str, str]:
    return {**victim, "project_id": project, "flavor_id": "1", "datastore": "mariadb", "version": "10.11.19",
            "version_id": "0", "name": "max_connections", "user": "u1", "database": "db1",
            "target_project": "p1"}


def _bodies(v: dict[str, str]) -> dict[str, Any]:
    """What an attacker would send: each names p1's resources where the body can."""
    return {
        "create_instance": instance_body(name="x", configuration=v["configuration_id"],
                                         restorePoint={"backupRef": v["backup_id"]}),
        "update_instance": {"instance": {"name": "hijacked"}},
        "edit_instance": {"instance": {"configuration": v["configuration_id"]}},
        "instance_action": {"restart": {}},
        "create_databases": {"databases": [{"name": "x"}]},
        "create_users": {"users": [{"name": "x", "password": "password-1"}]},
        "change_passwords": {"users": [{"name": "u1", "password": "password-1"}]},
        "update_user": {"user": {"password": "password-1"}},
        "grant_user_access": {"databases": [{"name": "db1"}]},
        "enable_root": {},
        "create_configuration": {"configuration": {"name": "x", "values": {}, "datastore": {"type": "mariadb"}}},
        "update_configuration": {"configuration": {"values": {}}},
        "edit_configuration": {"configuration": {"values": {}}},
        "create_backup": {"backup": {"name": "x", "instance": v["instance_id"], "incremental": 0}},
        "create_backup_strategy": {"backup_strategy": {"instance_id": v["instance_id"], "swift_container": "x"}},
        "create_backup_schedule": {"backup_schedule": {"name": "x", "instance_id": v["instance_id"], "cron": "0 3 * * *"}},
        "mgmt_instance_action": {"reboot": {}},
    }


def _leaks(response_text: str, victim: dict[str, str], sent: str = "") -> list[str]:
    """p1's ids and names in a response; an id the caller sent may be echoed ("Instance X
    could not be found"): that tells them nothing."""
    secrets = [*victim.values(), "victim-instance", "victim-config", "victim-backup", "victim-schedule", "victim-bucket"]
    return [s for s in secrets if s in response_text and s not in sent]


def _path(template: str, params: dict[str, str]) -> str:
    path = re.sub(r"\{([a-z_]+)\}", lambda m: params[m.group(1)], template)
    return path.removeprefix(f"/v1.0/{params['project_id']}")


def test_every_route_isolates_tenants(api, victim) -> None:  # type: ignore[no-untyped-def]
    bodies = _bodies(victim)
    query = {"list_backup_strategies": "?instance_id=" + victim["instance_id"],
             "delete_backup_strategies": "?instance_id=" + victim["instance_id"],
             "list_backups": "?instance_id=" + victim["instance_id"]}
    checked = 0
    for name, http in HTTP.items():
        if policy.RULES[name] == policy.Rule.PUBLIC:
            continue
        body = bodies.get(name)
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if http.method in ("POST", "PUT", "PATCH") and body is None:
            kwargs = {"json": {}}
        suffix = query.get(name, "")

        # 1. p2's token on p1's URL: refused at the edge.
        r = api(http.method, _path(http.path, _params(victim, "p1")) + suffix, project="p1", token="p2", **kwargs)
        assert r.status_code == 403, (name, r.status_code, r.get_data(as_text=True))
        assert not _leaks(r.get_data(as_text=True), victim), name

        # 2. p2 on its own URL, naming p1's ids: nothing of p1's is found, shown or changed.
        url = _path(http.path, _params(victim, "p2")) + suffix
        r = api(http.method, url, project="p2", **kwargs)
        text = r.get_data(as_text=True)
        assert not _leaks(text, victim, url + json.dumps(kwargs.get("json"))), (name, r.status_code, text[:500])
        if policy.RULES[name] == policy.Rule.ADMIN:
            assert r.status_code == 403, (name, r.status_code, text)
        elif r.status_code < 300:
            # Only listings, the catalog and p2's own creations may succeed; never on p1's ids.
            assert not any(f"{{{p}}}" in http.path for p in ("instance_id", "configuration_id", "backup_id", "schedule_id")), (name, text)
        elif name == "show_quotas":
            assert r.status_code == 403, (name, r.status_code, text)  # p1's quotas: p1's or an admin's
        else:
            assert r.status_code in (400, 404, 413, 422, 501), (name, r.status_code, text)
        checked += 1
    assert checked == sum(1 for n in HTTP if policy.RULES[n] != policy.Rule.PUBLIC)

    # p1's resources are exactly as they were.
    inst = api("GET", f"/instances/{victim['instance_id']}").get_json()["instance"]
    assert inst["name"] == "victim-instance" and "configuration" not in inst
    config = api("GET", f"/configurations/{victim['configuration_id']}").get_json()["configuration"]
    assert config["values"] == {"max_connections": 50} and config["name"] == "victim-config"
    assert api("GET", f"/backups/{victim['backup_id']}").get_json()["backup"]["status"] == "COMPLETED"
    assert api("GET", f"/backup_schedules/{victim['schedule_id']}").status_code == 200
    strategies = api("GET", "/backup_strategies").get_json()["backup_strategies"]
    assert [s["swift_container"] for s in strategies] == ["victim-bucket"]
    with runtime().sessions() as s:
        runs = s.execute(select(WorkflowRun.workflow).where(WorkflowRun.status != runner.RunStatus.SUCCEEDED)).scalars().all()
        assert runs == [], f"p2's calls started work on p1's resources: {runs}"
