"""Notifications (Trove's payloads, exactly), /metrics, request ids and JSON logs, without
guests: the workflows' last steps and the conductor are driven directly."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from functions_framework import create_app
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from events.envelope import Message, encode_binary, from_json
from events.guest import GuestBackupFinished, GuestHeartbeat, guest_source, instance_key
from events.notifications import SERVICE_IDS, InstanceCreated
from events.replay import format_sequence
from events.signing import sign
from functions.core import backup_flow, context, logs, notifications, provisioning, resizing
from functions.core.models.backup import Backup
from functions.core.models.base import utcnow
from functions.core.models.datastore import Flavor
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.states import ServiceStatus as SS
from functions.core.models.platform import NotificationRecord, OutboxEvent, WorkflowRun
from functions.core.workflow import StepContext
from functions.runtime import runtime
from tests.functions.test_backups_api import active  # noqa: F401  (fixture)
from tests.functions.test_instances_api import body

ISOTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
REQUEST_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# trove/common/notification.py TroveBaseTraits + TroveCommonTraits, key for key.
COMMON = {
    "created_at", "name", "instance_id", "instance_name", "instance_type_id", "launched_at",
    "nova_instance_id", "region", "state_description", "state", "tenant_id", "user_id",
    "instance_type", "instance_size", "service_id", "availability_zone", "volume_size", "nova_volume_id",
}
# trove/extensions/mgmt/instances/models.py NovaNotificationTransformer.
EXISTS = {
    "audit_period_beginning", "audit_period_ending", "created_at", "display_name", "instance_id",
    "instance_name", "instance_type_id", "launched_at", "nova_instance_id", "region", "state_description",
    "state", "tenant_id", "service_id", "instance_type", "user_id",
}
API_BASE = {"tenant_id", "client_ip", "server_ip", "server_type", "request_id"}


def notifications_in_outbox(trove_type: str) -> list[Message]:
    with runtime().sessions() as s:
        rows = [from_json(text) for text in s.execute(select(OutboxEvent.event)).scalars()]
    return [m for m in rows if m.type == f"troveless.notification.{trove_type}"]


def step(session, run: WorkflowRun, name: str) -> StepContext:  # type: ignore[no-untyped-def]
    return StepContext(session=session, run_id=run.id, workflow=run.workflow, step=name, attempt=1,
                       resource_id=run.resource_id, context=dict(run.context or {}), now=utcnow())


def run_of(session, workflow: str, resource_id: str) -> WorkflowRun:  # type: ignore[no-untyped-def]
    return session.execute(
        select(WorkflowRun).where(WorkflowRun.workflow == workflow, WorkflowRun.resource_id == resource_id)
    ).scalar_one()


def build(api, **fields) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Create an instance through the API and finish its build as the last step does."""
    r = api("POST", "/instances", json=body(**fields))
    assert r.status_code == 200, r.get_json()
    iid = r.get_json()["instance"]["id"]
    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        inst.compute_instance_id, inst.volume_id = f"s-{iid[:30]}", f"v-{iid[:30]}"
        svc = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == iid)).scalar_one()
        svc.status_id, svc.heartbeat_at = SS.HEALTHY.code, utcnow()
        provisioning.mark_active(step(s, run_of(s, "provision", iid), "mark_active"))
    return iid, r.headers["X-Openstack-Request-Id"]


def test_instance_create_and_delete_carry_troves_usage_payload(api) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    [msg] = notifications_in_outbox("trove.instance.create")
    assert (msg.id, msg.subject, msg.source) == (f"trove.instance.create:{iid}", iid, "/troveless/notifications")
    assert msg.get("partitionkey") == iid
    data = msg.data
    assert set(data) == COMMON
    with runtime().sessions() as s:
        inst = s.get(Instance, iid)
        flavor = s.get(Flavor, "1")
        assert inst is not None and flavor is not None
        created = inst.created.replace(microsecond=0).isoformat() + "Z"
    assert data == {
        "created_at": created, "launched_at": created, "name": "pg1", "instance_name": "pg1",
        "instance_id": iid, "instance_type_id": "1", "instance_type": flavor.name, "instance_size": flavor.ram,
        "nova_instance_id": f"s-{iid[:30]}", "nova_volume_id": f"v-{iid[:30]}", "volume_size": 1,
        "region": "RegionOne", "state": "active", "state_description": "active", "tenant_id": "p1",
        "user_id": "u1", "service_id": SERVICE_IDS["postgresql"], "availability_zone": None,
    }
    assert ISOTIME.match(data["created_at"])
    assert isinstance(InstanceCreated.from_data(data), InstanceCreated)

    assert api("DELETE", f"/instances/{iid}").status_code == 202
    with runtime().transaction() as s:
        provisioning.finish_delete(step(s, run_of(s, "teardown", iid), "finish_delete"))
    [gone] = notifications_in_outbox("trove.instance.delete")
    assert set(gone.data) == COMMON | {"deleted_at"}
    assert gone.data["state"] == "shutdown" and ISOTIME.match(gone.data["deleted_at"])
    assert gone.id == f"trove.instance.delete:{iid}"


def test_resize_notifications_report_old_and_new_sizes(api) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    with runtime().transaction() as s:
        small, big = s.get(Flavor, "1"), s.get(Flavor, "2")
        small_ram, big_ram = small.ram, big.ram  # type: ignore[union-attr]
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "2"}}).status_code == 202
    with runtime().transaction() as s:
        resizing.finish_resize(step(s, run_of(s, "resize", iid), "finish_resize"))
    [flavor] = notifications_in_outbox("trove.instance.modify_flavor")
    assert set(flavor.data) == COMMON | {"old_instance_size", "modify_at"}
    assert (flavor.data["old_instance_size"], flavor.data["instance_size"]) == (small_ram, big_ram)
    assert flavor.data["instance_type_id"] == "2" and flavor.data["launched_at"] == flavor.data["modify_at"]

    with runtime().transaction() as s:
        for run in s.execute(select(WorkflowRun).where(WorkflowRun.workflow == "resize")).scalars():
            run.status = "SUCCEEDED"
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"volume": {"size": 3}}}).status_code == 202
    with runtime().transaction() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.workflow == "resize", WorkflowRun.status != "SUCCEEDED")).scalar_one()
        resizing.finish_resize(step(s, run, "finish_resize"))
    [volume] = notifications_in_outbox("trove.instance.modify_volume")
    assert set(volume.data) == COMMON | {"old_volume_size", "modify_at"}
    assert (volume.data["old_volume_size"], volume.data["volume_size"]) == (1, 3)


def test_exists_audits_every_live_instance(api) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    r = api("POST", "/instances", json=body(name="still-building"))  # no server yet: not audited
    assert r.status_code == 200
    now = utcnow()
    with runtime().transaction() as s:
        [msg] = notifications.exists_all(s, now, 3600)
    assert set(msg.data) == EXISTS
    assert msg.data["instance_id"] == iid and msg.data["display_name"] == "pg1" and msg.data["user_id"] == "u1"
    assert msg.data["audit_period_ending"] == now.replace(microsecond=0).isoformat() + "Z"
    assert ISOTIME.match(msg.data["audit_period_beginning"])
    assert msg.id == f"trove.instance.exists:{iid}:{msg.data['audit_period_ending']}"


def test_backup_create_and_delete_end_carry_the_api_request(api, active) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    pg = active["postgresql"]
    r = api("POST", "/backups", json={"backup": {"name": "b1", "instance": pg, "description": "nightly"}},
            headers={"X-Openstack-Request-Id": "req-from-the-client"})
    assert r.status_code == 202 and r.headers["X-Openstack-Request-Id"] == "req-from-the-client"
    backup_id = r.get_json()["backup"]["id"]
    with runtime().transaction() as s:
        run = run_of(s, "backup", backup_id)
        run.status, run.step = "WAITING", "wait_backup"
        done = GuestBackupFinished(instance_id=pg, backup_id=backup_id, success=True, checksum="ab" * 32,
                                   object_size=10, size_gb=0.01)
        backup_flow.apply_finished(s, pg, done, 5)
    [end] = notifications_in_outbox("dbaas.backup_create.end")
    assert set(end.data) == API_BASE | {"name", "instance_id", "description", "parent_id", "backup_id"}
    assert end.data == {
        "tenant_id": "p1", "client_ip": None, "server_ip": "localhost", "server_type": "conductor",
        "request_id": "req-from-the-client", "name": "b1", "instance_id": pg, "description": "nightly",
        "parent_id": None, "backup_id": backup_id,
    }

    deleted = api("DELETE", f"/backups/{backup_id}")
    assert deleted.status_code == 202
    with runtime().transaction() as s:
        backup_flow.delete_objects(step(s, run_of(s, "backup_delete", backup_id), "delete_objects"))
    [gone] = notifications_in_outbox("dbaas.backup_delete.end")
    assert set(gone.data) == API_BASE | {"backup_id"}
    assert gone.data["request_id"] == deleted.headers["X-Openstack-Request-Id"]
    assert (gone.data["server_type"], gone.data["backup_id"]) == ("taskmanager", backup_id)
    with runtime().sessions() as s:
        assert s.get(Backup, backup_id).deleted  # type: ignore[union-attr]


def test_the_consumer_records_each_notification_once_for_admins(api) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    [msg] = notifications_in_outbox("trove.instance.create")
    client = create_app("record_instance_create", "functions/notifications.py").test_client()
    headers, data = encode_binary(msg)
    assert client.post("/", headers=headers, data=data).status_code == 202
    assert client.post("/", headers=headers, data=data).status_code == 202  # redelivered
    with runtime().sessions() as s:
        [row] = s.execute(select(NotificationRecord)).scalars()
        assert (row.event_type, row.resource_id, row.tenant_id) == ("trove.instance.create", iid, "p1")
    listed = api("GET", "/mgmt/notifications?event_type=trove.instance.create", token="admin")
    assert listed.status_code == 200
    [shown] = listed.get_json()["notifications"]
    assert shown["payload"] == msg.data and shown["message_id"] == msg.id and ISOTIME.match(shown["timestamp"])
    assert api("GET", "/mgmt/notifications").status_code == 403  # members may not
    assert api("GET", f"/mgmt/notifications?marker={shown['id']}", token="admin").get_json()["notifications"] == []


# ---- metrics --------------------------------------------------------------------------------------


def heartbeat_message(instance_id: str, key: bytes, sequence: int, **fields) -> Message:  # type: ignore[no-untyped-def]
    event = GuestHeartbeat(instance_id=instance_id, status="HEALTHY", datastore="postgresql",
                           volume_used_bytes=4096, **fields)
    message = event.to_message(guest_source(instance_id), subject=instance_id,
                               extensions={"sequence": format_sequence(sequence), "partitionkey": instance_id})
    return sign(message, instance_key(instance_id, key))


def scrape(gateway) -> dict[str, object]:  # type: ignore[no-untyped-def]
    r = gateway.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert REQUEST_ID.match(r.headers["X-Openstack-Request-Id"])
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def samples(family, name: str | None = None) -> list[tuple[dict[str, str], float]]:  # type: ignore[no-untyped-def]
    return [(s.labels, s.value) for s in family.samples if name is None or s.name == name]


def test_metrics_families_and_labels(api, gateway) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    assert api("GET", f"/instances/{iid}").status_code == 200
    with runtime().sessions() as s:
        key = bytes.fromhex(s.get(Instance, iid).encrypted_key)  # type: ignore[union-attr]
    conductor = create_app("on_guest_heartbeat", "functions/conductor.py").test_client()
    beat = heartbeat_message(iid, key, 10, connections=3, database_size_bytes=8_000_000)
    headers, data = encode_binary(beat)
    assert conductor.post("/", headers=headers, data=data).status_code == 202
    assert conductor.post("/", headers=headers, data=data).status_code == 202  # duplicate
    old_headers, old = encode_binary(heartbeat_message(iid, key, 5, connections=9))
    assert conductor.post("/", headers=old_headers, data=old).status_code == 202  # stale
    forged_headers, forged = encode_binary(heartbeat_message(iid, b"x" * 32, 11))
    assert conductor.post("/", headers=forged_headers, data=forged).status_code == 400  # rejected

    families = scrape(gateway)
    requests = samples(families["troveless_api_requests"], "troveless_api_requests_total")
    shown = [v for labels, v in requests if labels == {
        "method": "GET", "route": "/v1.0/{project_id}/instances/{instance_id}", "status": "200"}]
    assert shown and shown[0] >= 1
    latency = families["troveless_api_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = [v for labels, v in samples(latency, "troveless_api_request_duration_seconds_count")
              if labels["route"] == "/v1.0/{project_id}/instances" and labels["method"] == "POST"]
    assert counts and counts[0] >= 1

    events = {(labels["type"], labels["outcome"]): v
              for labels, v in samples(families["troveless_events"], "troveless_events_total")}
    for outcome in ("applied", "duplicate", "stale", "rejected"):
        assert events.get(("troveless.guest.heartbeat", outcome), 0) >= 1, (outcome, events)
    fn = samples(families["troveless_event_function_duration_seconds"], "troveless_event_function_duration_seconds_count")
    assert any(v >= 4 for labels, v in fn if set(labels) == {"function"})

    runs = dict(((labels["workflow"], labels["state"]), v) for labels, v in samples(families["troveless_workflow_runs"]))
    assert runs[("provision", "RUNNING")] >= 1
    assert "troveless_dead_letters" in families and "troveless_outbox_pending" in families
    key_labels = {"instance_id": iid, "project_id": "p1"}
    assert samples(families["troveless_instance_connections"]) == [(key_labels, 3.0)]
    assert samples(families["troveless_instance_database_size_bytes"]) == [(key_labels, 8_000_000.0)]
    assert samples(families["troveless_instance_disk_used_bytes"]) == [(key_labels, 4096.0)]
    assert samples(families["troveless_database_up"]) == [({}, 1.0)]
    assert "process_cpu_seconds" in families


# ---- request ids and logs --------------------------------------------------------------------------


def test_request_id_round_trip(api, gateway) -> None:  # type: ignore[no-untyped-def]
    fresh = api("GET", "/flavors")
    assert REQUEST_ID.match(fresh.headers["X-Openstack-Request-Id"])
    assert api("GET", "/flavors").headers["X-Openstack-Request-Id"] != fresh.headers["X-Openstack-Request-Id"]
    mine = "req-0f0e0d0c-0b0a-4908-8706-050403020100"
    assert api("GET", "/flavors", headers={"X-Openstack-Request-Id": mine}).headers["X-Openstack-Request-Id"] == mine
    unsafe = api("GET", "/flavors", headers={"X-Openstack-Request-Id": "req 1; drop"})
    assert REQUEST_ID.match(unsafe.headers["X-Openstack-Request-Id"])
    # Faults too, and before authentication.
    refused = gateway.get("/v1.0/p1/flavors")
    assert refused.status_code == 401 and REQUEST_ID.match(refused.headers["X-Openstack-Request-Id"])


def test_json_log_lines_parse_and_name_the_request_and_event() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    logs.install_record_factory()
    log = logging.getLogger("troveless.test")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with context.request_scope(context.RequestContext(request_id="req-abc")):
            log.info("in a request %s", 1, extra={"instance_id": "i-1"})
        with context.event_scope(context.EventContext("ev-1", "troveless.x", "/src", "fn")):
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("in an event")
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    first, second, third = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "in a request 1" and first["request_id"] == "req-abc"
    assert first["level"] == "INFO" and first["logger"] == "troveless.test" and first["instance_id"] == "i-1"
    assert first["time"].endswith("Z") and "event_id" not in first
    assert (second["event_id"], second["event_type"], second["function"]) == ("ev-1", "troveless.x", "fn")
    assert "ValueError: boom" in second["exception"] and second["level"] == "ERROR"
    assert "request_id" not in third and "event_id" not in third


def test_event_functions_log_with_the_cloudevent_id(api, caplog) -> None:  # type: ignore[no-untyped-def]
    iid, _ = build(api)
    with runtime().sessions() as s:
        key = bytes.fromhex(s.get(Instance, iid).encrypted_key)  # type: ignore[union-attr]
    conductor = create_app("on_guest_heartbeat", "functions/conductor.py").test_client()
    logs.install_record_factory()
    first = heartbeat_message(iid, key, 10)
    headers, data = encode_binary(first)
    assert conductor.post("/", headers=headers, data=data).status_code == 202
    stale = heartbeat_message(iid, key, 3)
    headers, data = encode_binary(stale)
    with caplog.at_level(logging.INFO, logger="troveless.conductor"):
        assert conductor.post("/", headers=headers, data=data).status_code == 202
    [record] = [r for r in caplog.records if "stale heartbeat" in r.getMessage()]
    assert record.event_id == stale.id and record.event_type == "troveless.guest.heartbeat"  # type: ignore[attr-defined]
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["event_id"] == stale.id


@pytest.mark.parametrize("value, expected", [(None, "text"), ("json", "json"), ("TEXT", "text")])
def test_log_format_setting(monkeypatch, value, expected) -> None:  # type: ignore[no-untyped-def]
    from functions import settings

    if value is None:
        monkeypatch.delenv("TROVELESS_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("TROVELESS_LOG_FORMAT", value)
    assert settings.log_format_from_env() == expected
    monkeypatch.setenv("TROVELESS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="TROVELESS_LOG_FORMAT"):
        settings.log_format_from_env()
