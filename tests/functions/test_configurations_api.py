"""Configuration groups through the real gateway: validation, CRUD, the parameter catalog,
attach/detach with the guest's answers, and recovery of an interrupted change.

The guest here is a recorder at the `Guest` port (the real agent's side is covered by
tests/e2e/test_configurations.py): it lets these tests check exactly what is sent and how
each possible answer settles the instance."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from events import guest as g
from events.envelope import Message
from functions.core import configurations
from functions.core import workflow as runner
from functions.core.models.base import utcnow
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.ports import GuestError
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.runtime import runtime
from tests.functions.test_instances_api import body


class RecordingGuest:
    """Answers UpdateOverridesRequested as told; remembers every command."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.pending: list[str] = []
        self.fail: GuestError | None = None

    def send(self, instance_id: str, address: str, secret: bytes, command: Any) -> Message | None:
        self.sent.append(command)
        if self.fail is not None:
            raise self.fail
        assert isinstance(command, g.UpdateOverridesRequested)
        applied = sorted(k for k in command.overrides if k not in self.pending)
        reply = g.ConfigurationApplied(instance_id=instance_id, applied=applied, pending_restart=self.pending)
        return reply.to_message("/troveless/guest/" + instance_id)


@pytest.fixture
def guest(api, monkeypatch) -> RecordingGuest:  # type: ignore[no-untyped-def]
    fake = RecordingGuest()
    monkeypatch.setattr(runtime(), "guest", fake)
    return fake


@pytest.fixture
def active(api):  # type: ignore[no-untyped-def]
    """A running PostgreSQL and MariaDB instance of p1, as a finished build leaves them."""
    ids = {}
    for kind in ("postgresql", "mariadb"):
        r = api("POST", "/instances", json=body(name=kind, datastore={"type": kind}))
        assert r.status_code == 200, r.get_json()
        ids[kind] = r.get_json()["instance"]["id"]
    with runtime().transaction() as s:
        for inst in s.execute(select(Instance)).scalars():
            inst.task_id, inst.server_status = Task.NONE, "ACTIVE"
            inst.addresses = [{"address": "127.0.0.1", "type": "private"}]
        for svc in s.execute(select(ServiceStatus)).scalars():
            svc.status_id, svc.heartbeat_at = SS.HEALTHY.code, utcnow()
        for run in s.execute(select(WorkflowRun)).scalars():
            run.status = runner.RunStatus.SUCCEEDED
    return ids


def create(api, values: dict[str, Any], datastore: str = "postgresql", name: str = "g1", **kw):  # type: ignore[no-untyped-def]
    return api("POST", "/configurations", json={"configuration": {
        "name": name, "values": values, "datastore": {"type": datastore}, **kw}})


def task_of(instance_id: str) -> Task:
    with runtime().sessions() as s:
        inst = s.get(Instance, instance_id)
        assert inst is not None
        return Task(inst.task_id)


def test_create_show_list_and_validation(api) -> None:  # type: ignore[no-untyped-def]
    r = create(api, {"work_mem": "8MB", "max_connections": 120, "LOG_MIN_DURATION_STATEMENT": 250},
               description="tuned")
    assert r.status_code == 200, r.get_json()
    c = r.get_json()["configuration"]
    assert c["values"] == {"work_mem": "8MB", "max_connections": 120, "log_min_duration_statement": 250}
    assert c["datastore_name"] == "postgresql" and c["datastore_version_name"] == "15.19"
    assert c["instance_count"] == 0 and c["description"] == "tuned"

    shown = api("GET", f"/configurations/{c['id']}").get_json()["configuration"]
    assert shown["values"] == c["values"]
    listed = api("GET", "/configurations").get_json()["configurations"]
    assert [x["id"] for x in listed] == [c["id"]] and "values" not in listed[0]
    assert api("GET", "/configurations", project="p2").get_json()["configurations"] == []
    assert api("GET", f"/configurations/{c['id']}", project="p2").status_code == 404

    # Every rule: 400 naming the parameter.
    for values, needle in (
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"max_connections": "many"}, "max_connections"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 10**9}, "max_connections"),
        ({"autovacuum": "perhaps"}, "autovacuum"),
        ({"wal_level": "chatty"}, "wal_level"),
        ({"port": 5433}, "port"),  # the platform owns it: not in the catalog
    ):
        r = create(api, values)
        assert r.status_code == 400, values
        assert needle in r.get_json()["badRequest"]["message"], r.get_json()
    r = create(api, {"innodb_buffer_pool_size": "1G"}, datastore="mariadb")
    assert r.status_code == 200 and r.get_json()["configuration"]["datastore_name"] == "mariadb"
    r = create(api, {"innodb_buffer_pool_size": "1G"})  # a MariaDB setting on PostgreSQL
    assert r.status_code == 400 and "innodb_buffer_pool_size" in r.get_json()["badRequest"]["message"]
    assert api("POST", "/configurations", json={"configuration": {"name": "x"}}).status_code == 400
    r = api("POST", "/configurations", json={"configuration": {"name": "x", "values": {}, "datastore": {"type": "nosql"}}})
    assert r.status_code == 404


def test_parameter_catalog_endpoints(api) -> None:  # type: ignore[no-untyped-def]
    versions = api("GET", "/datastores/postgresql/versions").get_json()["versions"]
    version_id = versions[0]["id"]
    params = api("GET", "/datastores/postgresql/versions/15.19/parameters").get_json()["configuration-parameters"]
    by_name = {p["name"]: p for p in params}
    assert len(params) > 150
    assert by_name["max_connections"] == {"name": "max_connections", "datastore_version_id": version_id,
                                          "restart_required": True, "type": "integer", "min": 1, "max": 262143}
    assert by_name["work_mem"]["restart_required"] is False
    assert by_name["autovacuum_analyze_threshold"]["min"] == 0  # Trove would drop a 0 bound
    same = api("GET", f"/datastores/versions/{version_id}/parameters").get_json()["configuration-parameters"]
    assert same == params
    one = api("GET", "/datastores/postgresql/versions/15.19/parameters/work_mem").get_json()
    assert one["name"] == "work_mem" and one["type"] == "integer"
    assert api("GET", f"/datastores/versions/{version_id}/parameters/work_mem").get_json() == one
    assert api("GET", "/datastores/postgresql/versions/15.19/parameters/nope").status_code == 404
    maria = api("GET", "/datastores/mariadb/versions/10.11.19/parameters").get_json()["configuration-parameters"]
    assert {p["name"]: p for p in maria}["max_connections"]["restart_required"] is False


def test_attach_applies_live_and_detach(api, active, guest) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    cid = create(api, {"work_mem": "8MB", "log_min_duration_statement": 250}).get_json()["configuration"]["id"]
    r = api("PUT", f"/instances/{pg}", json={"instance": {"configuration": cid}})
    assert r.status_code == 202, r.get_json()
    [sent] = guest.sent
    # Normalised for the guest: work_mem in kB, the setting's own unit.
    assert sent.overrides == {"work_mem": 8192, "log_min_duration_statement": 250}
    assert sent.restart_required == []
    assert task_of(pg) == Task.NONE
    shown = api("GET", f"/instances/{pg}").get_json()["instance"]
    assert shown["configuration"]["id"] == cid and shown["configuration"]["name"] == "g1"
    assert shown["status"] == "ACTIVE"
    assert api("GET", f"/configurations/{cid}").get_json()["configuration"]["instance_count"] == 1
    assert api("GET", f"/configurations/{cid}/instances").get_json()["instances"] == [{"id": pg, "name": "postgresql"}]

    # Attaching another while one is attached: 400 as Trove; deleting an attached group: 400.
    other = create(api, {"work_mem": "4MB"}, name="g2").get_json()["configuration"]["id"]
    r = api("PUT", f"/instances/{pg}", json={"instance": {"configuration": other}})
    assert r.status_code == 400 and "already has a Configuration Group" in r.get_json()["badRequest"]["message"]
    assert api("DELETE", f"/configurations/{cid}").status_code == 400

    # A group of another datastore version: 400.
    maria_group = create(api, {"max_connections": 50}, datastore="mariadb", name="m").get_json()["configuration"]["id"]
    r = api("PUT", f"/instances/{active['mariadb']}", json={"instance": {"configuration": other}})
    assert r.status_code == 400
    # p2 cannot attach p1's group to anything (it is not p2's: 404 before anything else).
    assert api("PUT", f"/instances/{pg}", project="p2", json={"instance": {"configuration": cid}}).status_code == 404

    # Detach (troveclient sends configuration: null): the guest gets no overrides.
    assert api("PUT", f"/instances/{pg}", json={"instance": {"configuration": None}}).status_code == 202
    assert guest.sent[-1].overrides == {}
    assert "configuration" not in api("GET", f"/instances/{pg}").get_json()["instance"]
    assert api("DELETE", f"/configurations/{cid}").status_code == 202
    assert api("GET", f"/configurations/{cid}").status_code == 404
    # Detaching with nothing attached is a no-op.
    n = len(guest.sent)
    assert api("PATCH", f"/instances/{pg}", json={"instance": {"configuration": None}}).status_code == 202
    assert len(guest.sent) == n
    assert maria_group


def test_restart_required_until_restart(api, active, guest) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    cid = create(api, {"max_connections": 150, "work_mem": "2MB"}).get_json()["configuration"]["id"]
    guest.pending = ["max_connections"]
    assert api("PUT", f"/instances/{pg}", json={"instance": {"configuration": cid}}).status_code == 202
    assert guest.sent[-1].restart_required == ["max_connections"]
    assert task_of(pg) == Task.RESTART_REQUIRED
    assert api("GET", f"/instances/{pg}").get_json()["instance"]["status"] == "RESTART_REQUIRED"
    # Restart is allowed from RESTART_REQUIRED and carries the overrides to the guest.
    assert api("POST", f"/instances/{pg}/action", json={"restart": {}}).status_code == 202
    assert task_of(pg) == Task.REBOOTING
    with runtime().sessions() as s:
        inst = s.get(Instance, pg)
        assert configurations.overrides_of(s, inst) == {"max_connections": 150, "work_mem": 2048}


def test_edit_and_update_reapply_to_attached_instances(api, active, guest) -> None:  # type: ignore[no-untyped-def]
    maria = active["mariadb"]
    cid = create(api, {"max_connections": 50}, datastore="mariadb").get_json()["configuration"]["id"]
    assert api("PUT", f"/instances/{maria}", json={"instance": {"configuration": cid}}).status_code == 202
    # PATCH merges (200, empty body, as Trove) and re-applies.
    r = api("PATCH", f"/configurations/{cid}", json={"configuration": {"values": {"wait_timeout": 600}}})
    assert r.status_code == 200 and r.get_data() == b""
    assert guest.sent[-1].overrides == {"max_connections": 50, "wait_timeout": 600}
    # PUT replaces (202) and may rename.
    r = api("PUT", f"/configurations/{cid}", json={"configuration": {"values": {"wait_timeout": 60}, "name": "short"}})
    assert r.status_code == 202
    assert guest.sent[-1].overrides == {"wait_timeout": 60}
    c = api("GET", f"/configurations/{cid}").get_json()["configuration"]
    assert c["name"] == "short" and c["values"] == {"wait_timeout": 60}
    r = api("PATCH", f"/configurations/{cid}", json={"configuration": {"values": {"wait_timeout": -1}}})
    assert r.status_code == 400 and "wait_timeout" in r.get_json()["badRequest"]["message"]
    assert api("GET", f"/configurations/{cid}").get_json()["configuration"]["values"] == {"wait_timeout": 60}


def test_guest_failures_settle_the_instance(api, active, guest) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    cid = create(api, {"work_mem": "8MB"}).get_json()["configuration"]["id"]
    # The server refused a value: nothing changed, the group is not attached, 400.
    guest.fail = GuestError("work_mem: invalid value", transient=False, status=400, reason="invalid")
    r = api("PUT", f"/instances/{pg}", json={"instance": {"configuration": cid}})
    assert r.status_code == 400 and "refused" in r.get_json()["badRequest"]["message"]
    assert task_of(pg) == Task.NONE
    assert "configuration" not in api("GET", f"/instances/{pg}").get_json()["instance"]
    # The guest did not answer: attached, RESTART_REQUIRED (a restart carries the values), a fault says why.
    guest.fail = GuestError("timed out", transient=True)
    assert api("PUT", f"/instances/{pg}", json={"instance": {"configuration": cid}}).status_code == 202
    assert task_of(pg) == Task.RESTART_REQUIRED
    with runtime().sessions() as s:
        assert s.get(Instance, pg).configuration_id == cid  # type: ignore[union-attr]
        faults = s.execute(select(InstanceFault.message).where(InstanceFault.instance_id == pg)).scalars().all()
        assert any("restart the instance" in f for f in faults)


def test_an_interrupted_change_becomes_restart_required(api, active) -> None:  # type: ignore[no-untyped-def]
    pg = active["postgresql"]
    with runtime().transaction() as s:
        inst = s.get(Instance, pg)
        inst.task_id = Task.UPDATING  # type: ignore[union-attr]
        inst.task_start_time = utcnow() - dt.timedelta(minutes=5)  # type: ignore[union-attr]
    with runtime().transaction() as s:
        assert configurations.recover_interrupted(s) == 1
    assert task_of(pg) == Task.RESTART_REQUIRED
    with runtime().transaction() as s:
        assert configurations.recover_interrupted(s) == 0


def test_create_instance_with_a_configuration(api) -> None:  # type: ignore[no-untyped-def]
    cid = create(api, {"work_mem": "8MB"}).get_json()["configuration"]["id"]
    maria = create(api, {"wait_timeout": 60}, datastore="mariadb", name="m").get_json()["configuration"]["id"]
    r = api("POST", "/instances", json=body(name="wrong", configuration=maria))
    assert r.status_code == 400
    r = api("POST", "/instances", json=body(name="cfg", configuration=cid))
    assert r.status_code == 200, r.get_json()
    inst = r.get_json()["instance"]
    assert inst["configuration"]["id"] == cid
    assert api("GET", f"/configurations/{cid}").get_json()["configuration"]["instance_count"] == 1
