"""End to end: a real instance's life shows in /metrics, in the notifications the platform
sends (and its consumer records), and in JSON log lines that name requests and events."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.platform import LocalPlatform
from tests.infra.platform_helpers import wait_for


@pytest.fixture
def platform(database_url: str) -> Iterator[LocalPlatform]:
    p = LocalPlatform(database_url, extra_env={"TROVELESS_LOG_FORMAT": "json"})
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


def scrape(platform: LocalPlatform) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    r = httpx.get(f"{platform.base}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(r.text)
    }


def value(families, family: str, sample: str | None = None, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """The sum of a family's samples (of one name) whose labels include `labels`."""
    return sum(
        v for name, have, v in families.get(family, [])
        if (sample is None or name == sample) and all(have.get(k) == want for k, want in labels.items())
    )


def recorded(platform: LocalPlatform, event_type: str, instance_id: str) -> list[dict]:  # type: ignore[type-arg]
    r = platform.api("GET", f"/mgmt/notifications?event_type={event_type}&resource_id={instance_id}")
    assert r.status_code == 200, r.text
    return r.json()["notifications"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_notifications_and_json_logs_of_an_instance(platform: LocalPlatform) -> None:
    created = platform.api("POST", "/instances", json={"instance": {
        "name": "observed", "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": "postgresql"},
        "databases": [{"name": "app"}],
    }})
    assert created.status_code == 200, created.text
    request_id = created.headers["X-Openstack-Request-Id"]
    assert request_id.startswith("req-")
    instance_id = created.json()["instance"]["id"]
    platform.wait_status(instance_id, "ACTIVE", "HEALTHY", timeout_s=60)

    # The guest samples its server's figures off the heartbeat thread: they follow shortly.
    def figures() -> dict | None:  # type: ignore[type-arg]
        families = scrape(platform)
        if value(families, "troveless_instance_database_size_bytes", instance_id=instance_id) > 0:
            return families
        return None

    families = wait_for(figures, timeout_s=20, interval_s=0.5, what="the instance's datastore figures")
    project = {"instance_id": instance_id, "project_id": platform.project}
    assert value(families, "troveless_instance_connections", **project) >= 1
    assert value(families, "troveless_instance_database_size_bytes", **project) > 1_000_000
    assert value(families, "troveless_instance_disk_used_bytes", **project) > 1_000_000
    assert value(families, "troveless_api_requests", "troveless_api_requests_total",
                 route="/v1.0/{project_id}/instances", method="POST", status="200") == 1
    assert value(families, "troveless_api_requests", "troveless_api_requests_total",
                 route="/v1.0/{project_id}/instances/{instance_id}", status="200") >= 1
    assert value(families, "troveless_api_request_duration_seconds", "troveless_api_request_duration_seconds_count",
                 route="/v1.0/{project_id}/instances", method="POST") == 1
    assert value(families, "troveless_events", "troveless_events_total",
                 type="troveless.guest.heartbeat", outcome="applied") >= 1
    assert value(families, "troveless_events", "troveless_events_total",
                 type="troveless.step.provision.mark_active", outcome="applied") >= 1
    assert value(families, "troveless_event_function_duration_seconds",
                 "troveless_event_function_duration_seconds_count", function="on_guest_heartbeat") >= 1
    assert value(families, "troveless_workflow_runs", workflow="provision", state="SUCCEEDED") == 1
    assert "troveless_dead_letters" in families and value(families, "troveless_database_up") == 1

    # The build's end was notified (Trove's payload), and the consumer recorded it once.
    [create] = wait_for(lambda: recorded(platform, "trove.instance.create", instance_id), timeout_s=20,
                        what="the create notification")
    payload = create["payload"]
    assert payload["instance_id"] == instance_id and payload["state"] == "active"
    assert payload["tenant_id"] == platform.project and payload["instance_type_id"] == "1"
    assert payload["volume_size"] == 1 and payload["instance_size"] > 0
    assert value(scrape(platform), "troveless_notifications_received",
                 event_type="trove.instance.create") >= 1

    assert platform.api("DELETE", f"/instances/{instance_id}").status_code == 202
    wait_for(lambda: platform.show(instance_id) is None, timeout_s=60, what="the instance gone")
    [gone] = wait_for(lambda: recorded(platform, "trove.instance.delete", instance_id), timeout_s=20,
                      what="the delete notification")
    assert gone["payload"]["deleted_at"].endswith("Z")

    # TROVELESS_LOG_FORMAT=json: every log line is a JSON object; API lines carry the
    # request id answered to the client, event-function lines the CloudEvent id.
    lines = [json.loads(line) for line in platform.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line.get("request_id") == request_id and "POST" in line["message"] for line in lines), lines[-5:]
    assert any(line.get("event_id") and line.get("function") for line in lines), lines[-5:]
    assert any(line.get("logger") == "troveless.notifications" and line.get("notification") for line in lines)
