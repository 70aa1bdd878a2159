"""End to end with the unmodified `openstack` client: real PostgreSQL and MariaDB instances
are created, reached with their own clients, restarted, watched and deleted."""

from __future__ import annotations

import json
import time
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import LocalPlatform, listening, sql, wait_gone
from tests.infra.platform_helpers import wait_for

PORTS = {"postgresql": 5432, "mariadb": 3306}


@pytest.fixture
def platform(database_url: str) -> Iterator[LocalPlatform]:
    p = LocalPlatform(database_url)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()




def server_pid(platform: LocalPlatform, instance_id: str) -> int:
    state = json.loads((platform.data_dir / "instances" / instance_id / "agent.json").read_text())
    return int(state["server_pid"])


@pytest.mark.parametrize("datastore", ["postgresql", "mariadb"])
def test_instance_lifecycle_with_the_openstack_client(platform: LocalPlatform, datastore: str) -> None:
    [version] = [v["Name"] for v in platform.osc("datastore", "version", "list", datastore, "-f", "json")][:1]
    created = platform.osc(
        "database", "instance", "create", f"{datastore}-1", "--flavor", "1", "--size", "1",
        "--datastore", datastore, "--datastore-version", version,
        "--databases", "app", "--users", "alice:secret", "-f", "json",
    )
    instance_id = created["id"]
    assert created["status"] == "BUILD" and created["datastore"] == datastore

    platform.wait_status(instance_id, "ACTIVE", "HEALTHY")
    [listed] = [i for i in platform.osc("database", "instance", "list", "-f", "json") if i["ID"] == instance_id]
    assert listed["Status"] == "ACTIVE" and listed["Operating Status"] == "HEALTHY"
    shown = platform.osc("database", "instance", "show", instance_id, "-f", "json")
    assert shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY"
    ip = shown["ip"]
    assert ip.startswith("127.") and ip != "127.0.0.1"

    # The user's own client, on the standard port of the address the API gave.
    done = sql(datastore, ip, "alice", "secret", "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT x FROM t")
    assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr
    assert sql(datastore, ip, "alice", "wrong", "app", "SELECT 1").returncode != 0

    # The database server runs unprivileged.
    pid = server_pid(platform, instance_id)
    uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0

    # Restart: REBOOT, then ACTIVE and HEALTHY again. (The CLI takes a second to start, by
    # when a restart may be over; the direct call shows the REBOOT state.)
    started_before = server_pid(platform, instance_id)
    platform.osc("database", "instance", "restart", instance_id)
    platform.wait_status(instance_id, "ACTIVE", "HEALTHY", timeout_s=120)
    wait_for(lambda: server_pid(platform, instance_id) != started_before, timeout_s=30, what="a new server process")
    assert platform.api("POST", f"/instances/{instance_id}/action", json={"restart": {}}).status_code == 202
    assert platform.show(instance_id)["status"] == "REBOOT"  # type: ignore[index]
    platform.wait_status(instance_id, "ACTIVE", "HEALTHY", timeout_s=120)
    assert sql(datastore, ip, "alice", "secret", "app", "SELECT x FROM t").stdout.strip() == "42"

    # Kill the database server: it leaves HEALTHY within two heartbeats, and the guest revives it.
    os.kill(server_pid(platform, instance_id), signal.SIGKILL)
    wait_for(lambda: platform.show(instance_id)["operating_status"] != "HEALTHY",  # type: ignore[index]
             timeout_s=2.5, interval_s=0.1, what="the instance to leave HEALTHY")
    platform.wait_status(instance_id, "ACTIVE", "HEALTHY", timeout_s=60)
    assert sql(datastore, ip, "alice", "secret", "app", "SELECT x FROM t").stdout.strip() == "42"

    # Delete: 404, and nothing left behind.
    agent_pid = int((platform.data_dir / "instances" / instance_id / "agent.pid").read_text())
    pid = server_pid(platform, instance_id)
    assert platform.osc("database", "instance", "delete", instance_id).returncode == 0
    wait_for(lambda: platform.show(instance_id) is None, timeout_s=60, what="the instance to be deleted")
    shown = platform.osc("database", "instance", "show", instance_id, check=False)
    assert shown.returncode != 0 and "No instance with a name or ID" in shown.stderr
    wait_gone(agent_pid)
    wait_gone(pid)
    assert not (platform.data_dir / "instances" / instance_id).exists()
    assert not listening(ip, PORTS[datastore])


def test_delete_while_building_leaves_nothing(platform: LocalPlatform) -> None:
    """Unlike Trove (422 for BUILD), delete works in any state: the build is cancelled first."""
    body = {"instance": {"name": "short-lived", "flavorRef": "1", "volume": {"size": 1},
                         "datastore": {"type": "postgresql"}}}
    for delay in (0.0, 0.2, 0.5, 1.0):
        r = platform.api("POST", "/instances", json=body)
        assert r.status_code == 200
        instance_id = r.json()["instance"]["id"]
        time.sleep(delay)
        assert platform.api("DELETE", f"/instances/{instance_id}").status_code == 202
        wait_for(lambda: platform.show(instance_id) is None, timeout_s=60, what=f"delete after {delay}s")
        directory = platform.data_dir / "instances" / instance_id
        assert not directory.exists(), f"delete after {delay}s left {directory}"
        leftovers = [p for p in Path("/proc").glob("[0-9]*") if _mentions(p, instance_id)]
        assert not leftovers, f"delete after {delay}s left processes {leftovers}"


def _mentions(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
