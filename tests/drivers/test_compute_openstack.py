"""The openstack compute driver against a fake Keystone/Nova/Cinder/Neutron on 127.0.0.1
(tests/fixtures/openstack/server.py), request by request: create, retried create, delete
(with resources already gone), resize, and how errors are classified."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from functions.core.ports import ComputeError, ServerSpec
from functions.drivers.compute_openstack import OpenStackCompute
from functions.settings import OpenStackSettings, Settings
from tests.fixtures.openstack.server import PROJECT_ID, FakeOpenStack
from tests.functions.conftest import api, gateway  # noqa: F401 - fixtures of the workflow test

IID = "0b1c4e2a-5d3f-4a6b-8c9d-0e1f2a3b4c5d"
VOL = f"/volume/v3/{PROJECT_ID}"
CIDR = "192.168.50.0/24"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenStack]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with FakeOpenStack() as server:
        import os

        for name in [n for n in os.environ if n.startswith("OS_")]:
            monkeypatch.delenv(name)
        # openstacksdk's own loading: the standard OS_* variables (no clouds.yaml).
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml")
        for name, value in {"OS_AUTH_URL": f"{server.url}/identity/v3", "OS_USERNAME": "troveless",
                            "OS_PASSWORD": "secret", "OS_PROJECT_NAME": "service", "OS_USER_DOMAIN_NAME": "Default",
                            "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": "RegionOne",
                            "OS_IDENTITY_API_VERSION": "3"}.items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture
def compute(fake: FakeOpenStack) -> OpenStackCompute:
    return OpenStackCompute(OpenStackSettings(network_id=fake.network_id, control_cidr=CIDR, volume_type="ssd",
                                              availability_zone="az1"), heartbeat_interval_s=3.0)


def spec(address: str, **overrides: object) -> ServerSpec:
    values: dict[str, object] = {
        "instance_id": IID, "datastore": "postgresql", "address": address, "volume_size_gb": 2, "key": b"k" * 32,
        "broker_url": "http://10.1.0.5:8080/broker", "user_data": '{"type": "troveless.guest.prepare.requested"}',
        "flavor_id": "7", "image_id": "c1d2e3f4-0000-4000-8000-000000000001",
    }
    values.update(overrides)
    return ServerSpec(**values)  # type: ignore[arg-type]


def calls(fake: FakeOpenStack) -> list[str]:
    return [repr(r) for r in fake.api_requests()]


def build(fake: FakeOpenStack, compute: OpenStackCompute) -> tuple[str, str, str]:
    """The provision workflow's three compute steps, volume ready at once."""
    address = compute.pick_address(set(), "postgresql")
    volume_id = compute.allocate_volume(IID, 2)
    fake.settle_volumes()
    server_id = compute.create_server(spec(address))
    return address, volume_id, server_id


def test_create_flow_request_by_request(fake: FakeOpenStack, compute: OpenStackCompute,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TROVELESS_S3_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("TROVELESS_S3_SECRET_ACCESS_KEY", raising=False)
    address = compute.pick_address({"10.0.0.2"}, "postgresql")
    assert address == "10.0.0.3"  # .1 is the gateway, .2 held by another instance
    volume_id = compute.allocate_volume(IID, 2)
    assert calls(fake) == [
        f"GET /network/v2.0/subnets?network_id={fake.network_id}&ip_version=4",
        f"GET /network/v2.0/ports?network_id={fake.network_id}",
        f"GET {VOL}/volumes/detail?name=troveless-{IID}-data",
        f"POST {VOL}/volumes",
    ]
    assert fake.api_requests()[-1].body == {"volume": {
        "size": 2, "name": f"troveless-{IID}-data", "description": f"datastore volume for {IID}",
        "metadata": {"troveless_instance_id": IID}, "volume_type": "ssd", "availability_zone": "az1"}}
    assert not compute.volume_ready(IID)

    # The volume is still `creating`: no server yet, and a transient error (the step retries).
    fake.clear()
    with pytest.raises(ComputeError, match="not available yet") as err:
        compute.create_server(spec(address))
    assert err.value.transient
    assert calls(fake) == [f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$",
                           f"GET {VOL}/volumes/detail?name=troveless-{IID}-data"]

    fake.settle_volumes()
    assert compute.volume_ready(IID)
    fake.clear()
    server_id = compute.create_server(spec(address))
    sg = next(iter(fake.state.groups))
    port = next(iter(fake.state.ports))
    assert calls(fake) == [
        f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$",
        f"GET {VOL}/volumes/detail?name=troveless-{IID}-data",
        f"GET /network/v2.0/security-groups?name=troveless-{IID}-sg",
        "POST /network/v2.0/security-groups",
        "POST /network/v2.0/security-group-rules",
        "POST /network/v2.0/security-group-rules",
        f"GET /network/v2.0/ports?name=troveless-{IID}&network_id={fake.network_id}",
        "POST /network/v2.0/ports",
        "POST /compute/v2.1/servers",
    ]
    reqs = fake.api_requests()
    assert reqs[3].body["security_group"]["name"] == f"troveless-{IID}-sg"
    rules = [r.body["security_group_rule"] for r in reqs[4:6]]
    assert [(r["direction"], r["protocol"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"],
             r["security_group_id"]) for r in rules] == [
        ("ingress", "tcp", 5432, 5432, CIDR, sg), ("ingress", "tcp", 8799, 8799, CIDR, sg)]
    assert reqs[7].body == {"port": {"name": f"troveless-{IID}", "network_id": fake.network_id,
                                     "fixed_ips": [{"ip_address": address}], "security_groups": [sg],
                                     "description": f"troveless instance {IID}"}}
    server = reqs[8].body["server"]
    assert reqs[8].headers["Openstack-Api-Version"] == "compute 2.67"
    assert {k: server[k] for k in ("name", "imageRef", "flavorRef", "networks", "block_device_mapping_v2",
                                   "availability_zone", "metadata")} == {
        "name": f"troveless-{IID}", "imageRef": "c1d2e3f4-0000-4000-8000-000000000001", "flavorRef": "7",
        "networks": [{"port": port}],
        "block_device_mapping_v2": [{"uuid": volume_id, "source_type": "volume", "destination_type": "volume",
                                     "boot_index": -1, "delete_on_termination": False}],
        "availability_zone": "az1", "metadata": {"troveless_instance_id": IID}}
    assert "key_name" not in server
    # The user data: cloud-config carrying what the local driver gives the agent.
    text = base64.b64decode(server["user_data"]).decode()
    assert text.startswith("#cloud-config\n")
    config = json.loads(text.split("\n", 1)[1])
    files = {f["path"]: f for f in config["write_files"]}
    assert base64.b64decode(files["/etc/troveless/guest.key"]["content"]) == b"k" * 32
    assert files["/etc/troveless/guest.key"]["permissions"] == "0600"
    assert files["/etc/troveless/user-data.json"]["content"] == '{"type": "troveless.guest.prepare.requested"}'
    env = dict(line.split("=", 1) for line in files["/etc/troveless/guest.env"]["content"].splitlines())
    assert env == {
        "TROVELESS_GUEST_INSTANCE_ID": IID, "TROVELESS_GUEST_DATASTORE": "postgresql",
        "TROVELESS_GUEST_INSTANCE_DIR": f"/var/lib/troveless/{IID}", "TROVELESS_GUEST_ADDRESS": address,
        "TROVELESS_GUEST_KEY_FILE": "/etc/troveless/guest.key",
        "TROVELESS_GUEST_BROKER_URL": "http://10.1.0.5:8080/broker", "TROVELESS_GUEST_VOLUME_SIZE_GB": "2",
        "TROVELESS_GUEST_HEARTBEAT_INTERVAL": "3.0", "TROVELESS_GUEST_USER_DATA": "/etc/troveless/user-data.json"}
    assert config["mounts"] == [[f"/dev/disk/by-id/virtio-{volume_id[:20]}", f"/var/lib/troveless/{IID}/volume",
                                 "ext4", "defaults,nofail", "0", "2"]]
    assert ["systemctl", "enable", "--now", "troveless-guest.service"] in config["runcmd"]
    assert server_id in fake.state.servers
    assert compute.server_status(IID) == "BUILD"
    fake.set_server_status("ACTIVE")
    assert compute.server_status(IID) == "ACTIVE"


def test_guest_gets_the_object_store_credentials(fake: FakeOpenStack, compute: OpenStackCompute,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROVELESS_S3_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("TROVELESS_S3_SECRET_ACCESS_KEY", "s3cr3t with space")
    monkeypatch.setenv("TROVELESS_KEYSTONE_PASSWORD", "platform-only")
    build(fake, compute)
    server = next(r for r in fake.api_requests() if r.method == "POST" and r.path.endswith("/servers"))
    config = json.loads(base64.b64decode(server.body["server"]["user_data"]).decode().split("\n", 1)[1])
    env_file = next(f for f in config["write_files"] if f["path"] == "/etc/troveless/guest.env")["content"]
    assert "TROVELESS_S3_ACCESS_KEY_ID=AKIDEXAMPLE\n" in env_file
    assert "TROVELESS_S3_SECRET_ACCESS_KEY='s3cr3t with space'\n" in env_file
    assert "platform-only" not in base64.b64decode(server.body["server"]["user_data"]).decode()


def test_retried_steps_find_what_exists_and_post_nothing(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    address, volume_id, server_id = build(fake, compute)
    fake.clear()
    assert compute.allocate_volume(IID, 2) == volume_id
    assert compute.create_server(spec(address)) == server_id
    assert [r.method for r in fake.api_requests()] == ["GET", "GET"]
    assert (len(fake.state.servers), len(fake.state.volumes), len(fake.state.ports), len(fake.state.groups)) == (1, 1, 1, 1)


def test_create_retried_after_nova_503_reuses_group_and_port(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    address = compute.pick_address(set(), "mariadb")
    compute.allocate_volume(IID, 1)
    fake.settle_volumes()
    fake.fail("POST", "/compute/v2.1/servers", 503,
              {"computeFault": {"code": 503, "message": "Service Unavailable"}})
    with pytest.raises(ComputeError) as err:
        compute.create_server(spec(address, datastore="mariadb"))
    assert err.value.transient and "HTTP 503" in str(err.value)
    rules = next(iter(fake.state.groups.values()))["security_group_rules"]
    assert sorted(r["port_range_min"] for r in rules if r["direction"] == "ingress") == [3306, 8799]
    fake.clear()
    server_id = compute.create_server(spec(address, datastore="mariadb"))
    assert calls(fake) == [
        f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$",
        f"GET {VOL}/volumes/detail?name=troveless-{IID}-data",
        f"GET /network/v2.0/security-groups?name=troveless-{IID}-sg",
        f"GET /network/v2.0/ports?name=troveless-{IID}&network_id={fake.network_id}",
        "POST /compute/v2.1/servers",
    ]
    assert list(fake.state.servers) == [server_id]
    assert (len(fake.state.ports), len(fake.state.groups)) == (1, 1)


def test_nova_400_is_permanent_with_its_message(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    address = compute.pick_address(set(), "postgresql")
    compute.allocate_volume(IID, 1)
    fake.settle_volumes()
    fake.fail("POST", "/compute/v2.1/servers", 400,
              {"badRequest": {"code": 400, "message": "Flavor's disk is too small for requested image."}})
    with pytest.raises(ComputeError, match="Flavor's disk is too small") as err:
        compute.create_server(spec(address))
    assert not err.value.transient


@pytest.mark.parametrize(("status", "transient"), [(503, True), (500, True), (409, True), (429, True),
                                                    (400, False), (403, False), (413, False)])
def test_error_classes(fake: FakeOpenStack, compute: OpenStackCompute, status: int, transient: bool) -> None:
    fake.fail("GET", "/compute/v2.1/servers/detail", status)
    with pytest.raises(ComputeError) as err:
        compute.server_status(IID)
    assert err.value.transient is transient


def test_quota_from_cinder_is_permanent(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    fake.fail("POST", f"{VOL}/volumes", 413, {"overLimit": {"code": 413, "message": "VolumeSizeExceedsAvailableQuota"}})
    with pytest.raises(ComputeError, match="VolumeSizeExceedsAvailableQuota") as err:
        compute.allocate_volume(IID, 500)
    assert not err.value.transient


def test_unreachable_cloud_is_transient(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    compute.find_server(IID)  # authenticated, catalog known
    fake.__exit__()
    with pytest.raises(ComputeError) as err:
        compute.find_server(IID)
    assert err.value.transient


def test_keystone_refusing_is_permanent_and_keystone_down_is_transient(
        fake: FakeOpenStack, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = OpenStackSettings(network_id=fake.network_id, control_cidr=CIDR)
    monkeypatch.setenv("OS_PASSWORD", "wrong")
    with pytest.raises(ComputeError) as err:
        OpenStackCompute(settings).find_server(IID)
    assert not err.value.transient and "401" in str(err.value)
    monkeypatch.setenv("OS_PASSWORD", "secret")
    fake.fail("POST", "/identity/v3/auth/tokens", 503)
    with pytest.raises(ComputeError) as err:
        OpenStackCompute(settings).find_server(IID)
    assert err.value.transient
    assert OpenStackCompute(settings).find_server(IID) is None


def test_delete_flow_request_by_request(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    _, volume_id, server_id = build(fake, compute)
    port, sg = next(iter(fake.state.ports)), next(iter(fake.state.groups))
    fake.slow_delete = True
    fake.clear()
    compute.delete_server(IID)
    assert calls(fake) == [
        f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$",
        f"DELETE /compute/v2.1/servers/{server_id}",
        f"GET /network/v2.0/ports?name=troveless-{IID}&network_id={fake.network_id}",
        f"DELETE /network/v2.0/ports/{port}",
        f"GET /network/v2.0/security-groups?name=troveless-{IID}-sg",
        f"DELETE /network/v2.0/security-groups/{sg}",
    ]
    # The server is still being deleted and holds the volume: kept, transiently.
    fake.clear()
    with pytest.raises(ComputeError, match="still holds") as err:
        compute.delete_volume(IID)
    assert err.value.transient
    # A retried delete_server does not delete twice.
    fake.clear()
    compute.delete_server(IID)
    assert [r.method for r in fake.api_requests()] == ["GET", "GET", "GET"]
    fake.finish_deletes()
    fake.clear()
    compute.delete_volume(IID)
    assert calls(fake) == [f"GET {VOL}/volumes/detail?name=troveless-{IID}-data", f"DELETE {VOL}/volumes/{volume_id}"]
    assert not (fake.state.servers or fake.state.volumes or fake.state.ports or fake.state.groups)
    # Everything gone: both deletes are done with lookups only.
    fake.clear()
    compute.delete_server(IID)
    compute.delete_volume(IID)
    assert [r.method for r in fake.api_requests()] == ["GET", "GET", "GET", "GET"]


def test_delete_tolerates_resources_already_gone(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    _, volume_id, server_id = build(fake, compute)
    # The server went away by itself; the port is deleted by someone else between our lookup
    # and our delete (Neutron answers 404): both are done, not errors.
    fake._server_gone(server_id)
    port = next(iter(fake.state.ports))
    fake.fail("DELETE", f"/network/v2.0/ports/{port}", 404,
              {"NeutronError": {"type": "PortNotFound", "message": f"Port {port} could not be found.", "detail": ""}})
    fake.state.ports[port]["security_groups"] = []  # as if it was gone: the group is free
    fake.clear()
    compute.delete_server(IID)
    assert [(r.method, r.path.rsplit("/", 1)[0]) for r in fake.api_requests()] == [
        ("GET", "/compute/v2.1/servers"), ("GET", "/network/v2.0"), ("DELETE", "/network/v2.0/ports"),
        ("GET", "/network/v2.0"), ("DELETE", "/network/v2.0/security-groups")]
    # The volume was deleted behind our back too: nothing to do.
    fake.state.volumes.pop(volume_id)
    fake.clear()
    compute.delete_volume(IID)
    assert calls(fake) == [f"GET {VOL}/volumes/detail?name=troveless-{IID}-data"]


def test_compensation_after_a_failed_boot_removes_group_and_port(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    address = compute.pick_address(set(), "postgresql")
    compute.allocate_volume(IID, 1)
    fake.settle_volumes()
    fake.fail("POST", "/compute/v2.1/servers", 400, {"badRequest": {"code": 400, "message": "Invalid imageRef"}})
    with pytest.raises(ComputeError):
        compute.create_server(spec(address))
    compute.delete_server(IID)
    compute.delete_volume(IID)
    assert not (fake.state.servers or fake.state.volumes or fake.state.ports or fake.state.groups)


def test_resize_volume(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    _, volume_id, _ = build(fake, compute)
    fake.clear()
    compute.resize_volume(IID, 5)
    assert calls(fake) == [
        f"GET {VOL}/volumes/detail?name=troveless-{IID}-data",
        f"POST {VOL}/volumes/{volume_id}/action",
        f"GET {VOL}/volumes/detail?name=troveless-{IID}-data",
    ]
    extend = fake.api_requests()[1]
    assert extend.body == {"os-extend": {"new_size": 5}}
    assert extend.headers["Openstack-Api-Version"] == "volume 3.42"  # the volume is attached (in-use)
    assert fake.state.volumes[volume_id]["size"] == 5
    # Retried: already that size, nothing sent but the lookup.
    fake.clear()
    compute.resize_volume(IID, 5)
    assert calls(fake) == [f"GET {VOL}/volumes/detail?name=troveless-{IID}-data"]
    # An extend still in progress is a transient error (the step's retry is the wait).
    fake.state.volumes[volume_id]["status"] = "extending"
    with pytest.raises(ComputeError) as err:
        compute.resize_volume(IID, 8)
    assert err.value.transient
    fake.state.volumes.clear()
    with pytest.raises(ComputeError, match="has no volume") as err:
        compute.resize_volume(IID, 8)
    assert not err.value.transient


def test_resize_server_flow_request_by_request(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    _, _, server_id = build(fake, compute)  # booted with flavor "7"
    listing = f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$"
    action = f"POST /compute/v2.1/servers/{server_id}/action"
    # Still booting: nothing to do yet.
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing]
    # ACTIVE on the old flavor (shown by name: the target's name is asked once), the resize
    # action, and not done.
    fake.set_server_status("ACTIVE")
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing, "GET /compute/v2.1/flavors/8", action]
    resize = fake.api_requests()[2]
    assert resize.body == {"resize": {"flavorRef": "8"}}
    assert resize.headers["Openstack-Api-Version"] == "compute 2.67"
    assert fake.state.servers[server_id]["status"] == "RESIZE"
    # Migrating: asked again, only the lookup (no second resize).
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing]
    # VERIFY_RESIZE on the new flavor: the confirm.
    fake.finish_resizes()
    assert fake.state.servers[server_id]["flavor"]["original_name"] == "8"
    fake.slow_confirm = True
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing, action]
    assert fake.api_requests()[1].body == {"confirmResize": None}
    # Retried while the confirm runs (VERIFY_RESIZE, task resize_confirming): no second confirm.
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing]
    # ACTIVE on the new flavor: done; asked again, still only the lookup.
    fake.finish_confirms()
    for _ in range(2):
        fake.clear()
        assert compute.resize_server(IID, "8") is True
        assert calls(fake) == [listing]
    assert fake.state.servers[server_id]["status"] == "ACTIVE"


def test_resize_server_confirm_failing_transiently_is_sent_again(fake: FakeOpenStack,
                                                                 compute: OpenStackCompute) -> None:
    _, _, server_id = build(fake, compute)
    fake.set_server_status("ACTIVE")
    assert compute.resize_server(IID, "8") is False
    fake.finish_resizes()
    fake.fail("POST", f"/compute/v2.1/servers/{server_id}/action", 503)
    with pytest.raises(ComputeError) as err:
        compute.resize_server(IID, "8")
    assert err.value.transient
    fake.clear()
    assert compute.resize_server(IID, "8") is False  # the retry confirms, once
    confirms = [r for r in fake.api_requests() if r.method == "POST"]
    assert [r.body for r in confirms] == [{"confirmResize": None}]
    assert compute.resize_server(IID, "8") is True


def test_resize_server_matches_flavor_names(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    """Nova >= 2.47 shows the flavor's name only: a flavor not named after its id is looked up."""
    fake.flavor_names.update({"7": "m1.small", "8": "m1.medium"})
    _, _, server_id = build(fake, compute)
    fake.set_server_status("ACTIVE")
    listing = f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$"
    fake.clear()
    assert compute.resize_server(IID, "8") is False
    assert calls(fake) == [listing, "GET /compute/v2.1/flavors/8", f"POST /compute/v2.1/servers/{server_id}/action"]
    fake.finish_resizes()
    assert compute.resize_server(IID, "8") is False  # confirmed
    fake.clear()
    assert compute.resize_server(IID, "8") is True
    assert calls(fake) == [listing]  # the name of flavor 8 is known now
    assert fake.state.servers[server_id]["flavor"]["original_name"] == "m1.medium"
    fake.fail("GET", "/compute/v2.1/flavors/9", 404)
    with pytest.raises(ComputeError, match="flavor 9 does not exist") as err:
        compute.resize_server(IID, "9")
    assert not err.value.transient


def test_resize_server_in_error_is_permanent(fake: FakeOpenStack, compute: OpenStackCompute) -> None:
    _, _, server_id = build(fake, compute)
    fake.set_server_status("ACTIVE")
    assert compute.resize_server(IID, "8") is False
    fake.set_server_status("ERROR")
    fake.state.servers[server_id]["fault"] = {"code": 500, "message": "No valid host was found."}
    fake.clear()
    with pytest.raises(ComputeError, match="is in ERROR: No valid host was found") as err:
        compute.resize_server(IID, "8")
    assert not err.value.transient
    assert calls(fake) == [f"GET /compute/v2.1/servers/detail?name=^troveless-{IID}$"]
    fake.state.servers.clear()
    with pytest.raises(ComputeError, match="has no server") as err:
        compute.resize_server(IID, "8")
    assert not err.value.transient


def test_settings_and_runtime_choose_the_driver(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TROVELESS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TROVELESS_COMPUTE", "openstack")
    monkeypatch.delenv("TROVELESS_OS_NETWORK_ID", raising=False)
    with pytest.raises(ValueError, match="TROVELESS_OS_NETWORK_ID"):
        Settings.from_env()
    monkeypatch.setenv("TROVELESS_OS_NETWORK_ID", "net-1")
    monkeypatch.setenv("TROVELESS_OS_CONTROL_CIDR", "nonsense")
    with pytest.raises(ValueError, match="CIDR"):
        Settings.from_env()
    monkeypatch.setenv("TROVELESS_OS_CONTROL_CIDR", "10.1.0.7/16")
    monkeypatch.setenv("TROVELESS_OS_VOLUME_TYPE", "ssd")
    settings = Settings.from_env()
    assert settings.compute == "openstack"
    assert settings.openstack == OpenStackSettings(network_id="net-1", control_cidr="10.1.0.0/16", volume_type="ssd")
    from functions.runtime import Runtime

    assert isinstance(Runtime(settings).compute, OpenStackCompute)
    monkeypatch.setenv("TROVELESS_COMPUTE", "local")
    assert Settings.from_env().openstack is None
    monkeypatch.setenv("TROVELESS_COMPUTE", "nova")
    with pytest.raises(ValueError, match="TROVELESS_COMPUTE"):
        Settings.from_env()


def test_openstacksdk_is_loaded_lazily() -> None:
    code = ("import sys, functions.runtime, functions.drivers.compute_openstack as m; "
            "m.OpenStackCompute(None); assert 'openstack' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_local_driver_answers_the_ready_questions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from functions.drivers.compute_local import LocalCompute

    local = LocalCompute(tmp_path)
    assert not local.volume_ready("i-1") and local.server_status("i-1") is None
    (tmp_path / "i-1" / "volume").mkdir(parents=True)  # what allocate_volume makes
    assert local.volume_ready("i-1") and local.server_status("i-1") is None
    assert local.resize_server("i-1", "8") is True  # no flavor: the guest applies the memory settings


# ---- the provision and teardown workflows with TROVELESS_COMPUTE=openstack ---------------


def test_workflows_drive_the_cloud(api, fake: FakeOpenStack, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The provision workflow's steps against the fake cloud: the address comes from the
    Neutron subnet, the server boots the version's image with the instance's flavor; the
    teardown leaves nothing behind."""
    from sqlalchemy import select

    from functions.core.models.datastore import DatastoreVersion
    from functions.core.models.instance import Instance
    from functions.runtime import reset_runtime, runtime
    from tests.functions.test_quotas import (
        create_instance,
        deliver,
        drive,
        take_step_events,
    )

    iid = create_instance(api, "os1", flavorRef=2, volume={"size": 3}).get_json()["instance"]["id"]
    (first,) = take_step_events("provision")
    monkeypatch.setenv("TROVELESS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TROVELESS_COMPUTE", "openstack")
    monkeypatch.setenv("TROVELESS_OS_NETWORK_ID", fake.network_id)
    monkeypatch.setenv("TROVELESS_OS_CONTROL_CIDR", CIDR)
    monkeypatch.setenv("TROVELESS_BROKER_URL", "http://127.0.0.1:9/broker")  # never reached: steps run inline
    reset_runtime()
    assert isinstance(runtime().compute, OpenStackCompute)
    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        s.get(DatastoreVersion, inst.datastore_version_id).image_id = "img-pg-15"  # type: ignore[union-attr]
    fake.instant_volumes = True
    steps = []
    current = first
    while current is not None:  # reserve, allocate_volume, create_server, then waits for the guest
        steps.append(registry_step(current))
        current = deliver(current)
    assert steps == ["reserve", "allocate_volume", "create_server", "wait_guest_healthy"]
    (server,) = fake.state.servers.values()
    (volume,) = fake.state.volumes.values()
    with runtime().sessions() as s:
        inst = s.execute(select(Instance).where(Instance.id == iid)).scalar_one()
        assert inst.addresses[0]["address"] == "10.0.0.2"
        assert (inst.volume_id, inst.compute_instance_id) == (volume["id"], server["id"])
    assert (server["image"]["id"], server["flavor"]["original_name"]) == ("img-pg-15", "2")
    assert volume["size"] == 3 and volume["status"] == "in-use"

    # A flavor resize moves the Nova server before the guest is told: resize_server polls
    # through its retries (each due attempt re-emitted by the sweeper) until Nova is done.
    from functions.core import workflow as runner
    from functions.core.models.instance import ServiceStatus
    from functions.core.models.platform import WorkflowRun
    from functions.core.states import ServiceStatus as SS
    from functions.core.states import Task

    with runtime().transaction() as s:
        inst = s.get(Instance, iid)
        inst.task_id, inst.server_status = Task.NONE, "ACTIVE"  # type: ignore[union-attr]
        svc = s.execute(select(ServiceStatus).where(ServiceStatus.instance_id == iid)).scalar_one()
        svc.status_id = SS.HEALTHY.code
    fake.set_server_status("ACTIVE")
    assert api("POST", f"/instances/{iid}/action", json={"resize": {"flavorRef": "1"}}).status_code == 202
    (grow,) = take_step_events("resize")
    polled = deliver(grow)
    assert registry_step(polled) == "resize_server"
    actions = []
    for finish in (fake.finish_resizes, lambda: None):
        fake.clear()
        assert deliver(polled) is None  # not done yet: a transient failure, retried in 5 s
        actions += [r.body for r in fake.api_requests() if r.method == "POST"]
        finish()
        with runtime().transaction() as s:
            (polled,) = runner.sweep(s, now=runner.utcnow() + dt.timedelta(seconds=6))
    assert actions == [{"resize": {"flavorRef": "1"}}, {"confirmResize": None}]
    assert (server["status"], server["flavor"]["original_name"]) == ("ACTIVE", "1")
    assert registry_step(deliver(polled)) == "send_resize"
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun).where(WorkflowRun.workflow == "resize")).scalar_one()
        assert (run.step, run.completed) == ("send_resize", ["grow_volume", "resize_server"])

    assert api("DELETE", f"/instances/{iid}").status_code == 202
    drive("teardown")
    assert not (fake.state.servers or fake.state.volumes or fake.state.ports or fake.state.groups)
    assert api("GET", f"/instances/{iid}").status_code == 404
    reset_runtime()


def test_resize_server_step_skips_volume_resizes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The workflow step: a volume-only resize never asks compute; a flavor resize with the
    local driver is done at once; a Nova resize in progress is a transient failure (polled)."""
    from types import SimpleNamespace

    from functions.core import resizing
    from functions.core.workflow import StepContext
    from functions.drivers.compute_local import LocalCompute

    asked: list[tuple[str, str]] = []

    class Moving:
        def resize_server(self, instance_id: str, flavor_id: str) -> bool:
            asked.append((instance_id, flavor_id))
            return False

    def ctx(**context: object) -> StepContext:
        return StepContext(session=None, run_id="r", workflow="resize", step="resize_server",  # type: ignore[arg-type]
                           attempt=1, resource_id="i-1", context=dict(context), now=dt.datetime.now(dt.UTC))

    deps = SimpleNamespace(compute=Moving())
    monkeypatch.setattr(resizing, "_deps", lambda: deps)
    assert resizing.resize_server(ctx(volume_size=5)) is None and asked == []
    with pytest.raises(resizing.ServerResizing):
        resizing.resize_server(ctx(flavor_id="2"))
    assert asked == [("i-1", "2")]
    deps.compute = LocalCompute(tmp_path)
    assert resizing.resize_server(ctx(flavor_id="2")) is None
    assert [s.name for s in resizing.RESIZE.steps] == [
        "grow_volume", "resize_server", "send_resize", "wait_resized", "finish_resize"]


def registry_step(message):  # type: ignore[no-untyped-def]
    from events import registry

    return registry.parse(message).step
