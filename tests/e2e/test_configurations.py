"""Configuration groups on real database servers, through the unmodified `openstack` client:
parameter list, create (valid and invalid), attach (dynamic settings visible at once), a
restart-required change (RESTART_REQUIRED until `instance restart`), default, detach."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.platform import LocalPlatform, sql, wait_until

# Per datastore: a dynamic setting and how the server shows it, a restart-only setting, and
# the statement reading a setting's current value.
CASES = {
    "postgresql": {
        "dynamic": ("work_mem", "8MB", "8MB"),
        "restart": ("max_connections", 123, "123"),
        "show": "SHOW {}",
    },
    "mariadb": {
        "dynamic": ("max_connections", 77, "77"),
        "restart": ("back_log", 77, "77"),
        "show": "SELECT @@GLOBAL.{}",
    },
}


@pytest.fixture
def platform(database_url: str) -> Iterator[LocalPlatform]:
    p = LocalPlatform(database_url)
    p.start()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.mark.parametrize(("kind", "database_url"), [("postgresql", "postgresql"), ("mariadb", "sqlite")],
                         indirect=["database_url"])
def test_configuration_groups_through_the_client(platform: LocalPlatform, kind: str) -> None:
    p, case = platform, CASES[kind]
    dyn_name, dyn_value, dyn_shown = case["dynamic"]
    rst_name, rst_value, rst_shown = case["restart"]

    def show(name: str) -> str:
        done = sql(kind, ip, "u", "pw-123456", "app", case["show"].format(name))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    r = p.api("POST", "/instances", json={"instance": {
        "name": "tuned", "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": kind},
        "databases": [{"name": "app"}], "users": [{"name": "u", "password": "pw-123456", "databases": [{"name": "app"}]}]}})
    assert r.status_code == 200, r.text
    inst = p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY", timeout_s=240)
    iid, ip, version = inst["id"], inst["ip"][0], inst["datastore"]["version"]

    # The catalog, as `configuration parameter list/show` print it.
    params = p.osc("database", "configuration", "parameter", "list", version, "--datastore", kind, "-f", "json")
    by_name = {row["Name"]: row for row in params}
    assert by_name[dyn_name]["Restart Required"] is False and by_name[rst_name]["Restart Required"] is True
    one = p.osc("database", "configuration", "parameter", "show", version, rst_name, "--datastore", kind, "-f", "json")
    assert one["name"] == rst_name and one["type"] == "integer"

    # An invalid value is refused with a 400 naming the parameter.
    bad = p.osc("database", "configuration", "create", "bad", json.dumps({dyn_name: "lots"}), "--datastore", kind,
                check=False)
    assert bad.returncode != 0 and dyn_name in bad.stderr and "400" in bad.stderr

    created = p.osc("database", "configuration", "create", "g1", json.dumps({dyn_name: dyn_value}),
                    "--datastore", kind, "--description", "e2e", "-f", "json")
    cid = created["id"]
    before = show(dyn_name)
    assert before != dyn_shown

    # Attach: a dynamic setting is live as soon as the command returns; the instance stays ACTIVE.
    p.osc("database", "configuration", "attach", iid, cid)
    assert show(dyn_name) == dyn_shown
    shown = p.show(iid)
    assert shown is not None and shown["status"] == "ACTIVE" and shown["configuration"]["id"] == cid
    attached = p.osc("database", "configuration", "instances", cid, "-f", "json")
    assert [row["ID"] for row in attached] == [iid]

    # A restart-only setting: RESTART_REQUIRED until `instance restart`, then the server has it.
    original = show(rst_name)
    # `configuration set` is troveclient's update: PUT, replacing every value.
    p.osc("database", "configuration", "set", cid, json.dumps({dyn_name: dyn_value, rst_name: rst_value}))
    assert p.show(iid)["status"] == "RESTART_REQUIRED"  # type: ignore[index]
    assert show(rst_name) == original != rst_shown
    assert show(dyn_name) == dyn_shown
    details = p.osc("database", "configuration", "show", cid, "-f", "json")
    assert json.loads(details["values"]) == {dyn_name: dyn_value, rst_name: rst_value}
    p.osc("database", "instance", "restart", iid)
    p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=120)
    assert show(rst_name) == rst_shown and show(dyn_name) == dyn_shown

    # The platform's own settings for the flavor (Trove's rendered default template).
    default = p.osc("database", "configuration", "default", iid, "-f", "json")
    assert "max_connections" in default

    # Detach: the dynamic setting goes back at once; the restart-only one waits for a restart.
    p.osc("database", "configuration", "detach", iid)
    assert show(dyn_name) == before
    assert p.show(iid)["status"] == "RESTART_REQUIRED"  # type: ignore[index]
    p.osc("database", "instance", "restart", iid)
    p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=120)
    assert show(rst_name) == original
    wait_until(lambda: "configuration" not in (p.show(iid) or {}), timeout_s=10, what="detached")
    p.osc("database", "configuration", "delete", cid)
    assert p.api("GET", f"/configurations/{cid}").status_code == 404
