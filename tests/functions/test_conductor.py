"""The conductor applies only what an instance's own guest signed, once, in sequence order."""

from __future__ import annotations

import datetime as dt

import pytest
from functions_framework import create_app
from sqlalchemy import select

from events.envelope import encode_binary, from_json
from events.guest import GuestHeartbeat, guest_source, instance_key
from events.replay import format_sequence
from events.signing import SigningKey, sign
from functions.core import catalog, instances
from functions.core import workflow as runner
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import OutboxEvent, WorkflowRun
from functions.core.schemas.instances import InstanceCreate
from functions.runtime import reset_runtime, runtime
from tests.functions.test_instances_api import INSTALLED

REPO_CONDUCTOR = "functions/conductor.py"


@pytest.fixture
def setup(monkeypatch, database_url):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TROVELESS_DATABASE_URL", database_url)
    monkeypatch.delenv("TROVELESS_BROKER_URL", raising=False)
    reset_runtime()
    with runtime().transaction() as s:
        catalog.seed(s, INSTALLED)
        ids = []
        for name in ("a", "b"):
            body = InstanceCreate.model_validate(
                {"name": name, "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": "postgresql"}}
            )
            row, _ = instances.create(s, "p1", body)
            ids.append(row.instance.id)
    with runtime().sessions() as s:
        keys = {i: bytes.fromhex(s.get(Instance, i).encrypted_key) for i in ids}  # type: ignore[union-attr]
    client = create_app("on_guest_heartbeat", REPO_CONDUCTOR).test_client()
    yield client, ids, keys
    reset_runtime()


def heartbeat(instance_id: str, status: str, sequence: int, *, key: bytes, keyid: str | None = None,
              source: str | None = None, event_id: str | None = None, time=None):  # type: ignore[no-untyped-def]
    event = GuestHeartbeat(instance_id=instance_id, status=status, datastore="postgresql", volume_used_bytes=1024)
    message = event.to_message(
        source or guest_source(instance_id), subject=instance_id, id=event_id,
        extensions={"sequence": format_sequence(sequence), "partitionkey": instance_id},
    )
    if time is not None:
        message = message.with_attributes(time=time)
    if not key:
        return message
    if keyid and keyid != instance_id:
        # A forger computes the MAC itself with its own key, for whatever source it likes.
        return sign(message, SigningKey(keyid, key, (message.source,)))
    return sign(message, instance_key(instance_id, key))


def post(client, message):  # type: ignore[no-untyped-def]
    headers, body = encode_binary(message)
    return client.post("/", headers=headers, data=body)


def service(instance_id: str) -> tuple[str, int]:
    with runtime().sessions() as s:
        row = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == instance_id)).scalar_one()
        return row.status_description, row.last_sequence


def test_heartbeats_apply_once_and_in_order(setup) -> None:  # type: ignore[no-untyped-def]
    client, (a, _b), keys = setup
    first = heartbeat(a, "HEALTHY", 10, key=keys[a])
    assert post(client, first).status_code == 202
    assert service(a) == ("healthy", 10)
    assert post(client, first).status_code == 202  # redelivered: no change
    assert post(client, heartbeat(a, "SHUTDOWN", 5, key=keys[a])).status_code == 202  # late: ignored
    assert service(a) == ("healthy", 10)
    assert post(client, heartbeat(a, "CRASHED", 11, key=keys[a])).status_code == 202
    assert service(a) == ("crashed", 11)


def test_forged_and_replayed_heartbeats_change_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    client, (a, b), keys = setup
    assert post(client, heartbeat(a, "HEALTHY", 10, key=keys[a])).status_code == 202
    # b's guest signs "a is shut down" with its own key, speaking as a or as itself.
    assert post(client, heartbeat(a, "SHUTDOWN", 20, key=keys[b], keyid=b)).status_code == 400
    assert post(client, heartbeat(a, "SHUTDOWN", 21, key=keys[b], keyid=b, source=guest_source(b))).status_code == 400
    # a's key, but claiming to be b's guest.
    assert post(client, heartbeat(b, "SHUTDOWN", 22, key=keys[a], keyid=a)).status_code == 400
    assert post(client, heartbeat(a, "SHUTDOWN", 23, key=b"")).status_code == 400  # unsigned
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert post(client, heartbeat(a, "SHUTDOWN", 24, key=keys[a], time=old)).status_code == 400  # replayed later
    tampered = heartbeat(a, "HEALTHY", 25, key=keys[a])
    tampered = tampered.with_attributes(sequence=format_sequence(26))
    assert post(client, tampered).status_code == 400
    assert service(a) == ("healthy", 10) and service(b) == ("new", 0)


def test_healthy_heartbeat_resumes_the_waiting_build(setup) -> None:  # type: ignore[no-untyped-def]
    client, (a, _b), keys = setup
    with runtime().transaction() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.resource_id == a)).scalar_one()
        run.step, run.status = "wait_guest_healthy", runner.RunStatus.WAITING
        s.execute(OutboxEvent.__table__.delete())
    assert post(client, heartbeat(a, "BUILDING", 1, key=keys[a])).status_code == 202
    with runtime().sessions() as s:
        assert s.execute(select(OutboxEvent)).first() is None
    assert post(client, heartbeat(a, "HEALTHY", 2, key=keys[a])).status_code == 202
    with runtime().sessions() as s:
        [event] = [from_json(e) for e in s.execute(select(OutboxEvent.event)).scalars()]
        assert event.type == "troveless.step.provision.mark_active"
        assert s.get(WorkflowRun, run.id).status == "RUNNING"  # type: ignore[union-attr]
