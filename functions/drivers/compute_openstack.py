"""The `openstack` compute driver: a server is a Nova server booted from the datastore
version's image, its volume a Cinder volume, its address a Neutron port with a security group
that admits only the control plane's network (to the database port and the guest agent's
command port).

Every resource has a name derived from the instance id, and every create looks for that name
first, so a retried step finds what an earlier attempt created instead of making a second one:

    server          troveless-<instance_id>
    port            troveless-<instance_id>
    volume          troveless-<instance_id>-data
    security group  troveless-<instance_id>-sg

No method waits for OpenStack: each does what can be done now and reports the state it found.
What has to wait (a volume still `creating`, a volume still attached to a server being
deleted, an extend in progress) raises a transient ComputeError, so the step's retry is the
wait; `volume_ready` and `server_status` let a workflow ask without side effects.

openstacksdk is imported on first use (it is heavy): functions that never touch compute do not
pay for it at cold start. Credentials come from openstacksdk's own loading (`OS_*` variables,
`OS_CLOUD` + clouds.yaml). Requests go through the SDK's service adapters (Keystone catalog,
token handling, microversion headers) with explicit paths and bodies, so what is sent is
exactly what is written here.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import shlex
from typing import TYPE_CHECKING, Any

from events.guest import AGENT_PORT
from functions.core.ports import ComputeError, ServerSpec

if TYPE_CHECKING:
    from functions.settings import OpenStackSettings

log = logging.getLogger("troveless.compute.openstack")

STANDARD_PORTS = {"postgresql": 5432, "mariadb": 3306, "mysql": 3306}
# Nova microversion for server create/show (2.67: block_device_mapping_v2 volume_type; we
# only need >= 2.32 for tagged devices and keep the request shape stable).
NOVA_MICROVERSION = "2.67"
# Cinder 3.42: extend an attached (in-use) volume.
CINDER_MICROVERSION = "3.42"
# Nova refuses user data above 65535 bytes (base64).
MAX_USER_DATA = 65535
# Where the guest lives on the server (the agent's --instance-dir; the volume mounts below it).
GUEST_ROOT = "/var/lib/troveless"
GUEST_ETC = "/etc/troveless"
GUEST_VENV = "/opt/troveless"
GUEST_S3_ENV = ("TROVELESS_S3_ACCESS_KEY_ID", "TROVELESS_S3_SECRET_ACCESS_KEY")

_VOLUME_READY = ("available", "in-use")
_VOLUME_BUSY = ("creating", "extending", "attaching", "detaching", "downloading", "reserved", "maintenance")


def server_name(instance_id: str) -> str:
    return f"troveless-{instance_id}"


def port_name(instance_id: str) -> str:
    return f"troveless-{instance_id}"


def volume_name(instance_id: str) -> str:
    return f"troveless-{instance_id}-data"


def group_name(instance_id: str) -> str:
    return f"troveless-{instance_id}-sg"


def classify(status: int, what: str, body: str = "") -> ComputeError:
    """An OpenStack error answer as a ComputeError: 5xx, 408, 409 (a conflict with work in
    progress) and 429 may pass; any other 4xx (validation, quota, not allowed) will not."""
    message = f"{what}: HTTP {status}{': ' + _fault_message(body) if body else ''}"
    transient = status >= 500 or status in (408, 409, 429)
    return ComputeError(message, transient=transient)


def _fault_message(body: str) -> str:
    """The message in Nova's/Cinder's `{"badRequest": {"message": ...}}`, Neutron's
    `{"NeutronError": {"message": ...}}` or Keystone's `{"error": {"message": ...}}`."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    if isinstance(data, dict):
        for value in data.values():
            if isinstance(value, dict) and value.get("message"):
                return str(value["message"])[:200]
        if data.get("message"):
            return str(data["message"])[:200]
    return body.strip()[:200]


class OpenStackCompute:
    def __init__(self, settings: OpenStackSettings, *, heartbeat_interval_s: float = 5.0,
                 connection: Any = None) -> None:
        self.settings = settings
        self.heartbeat_interval_s = heartbeat_interval_s
        self._conn = connection
        # Nova flavor id -> name (a flavor's name cannot change: cached for the process).
        self._flavor_names: dict[str, str] = {}

    # ---- plumbing -----------------------------------------------------------------------

    @property
    def conn(self) -> Any:
        if self._conn is None:
            try:
                import openstack  # heavy: only when compute is first used

                self._conn = openstack.connect(
                    cloud=self.settings.cloud, region_name=self.settings.region, load_envvars=True,
                )
            except Exception as exc:  # openstack.config raises several kinds
                raise ComputeError(f"cannot configure the OpenStack connection: {exc}", transient=False) from exc
        return self._conn

    def _call(self, service: str, method: str, path: str, what: str, *, ok_404: bool = False,
              **kwargs: Any) -> dict[str, Any] | None:
        """One request; the decoded JSON answer (None for an empty body, or a 404 when
        `ok_404`). Errors become ComputeError, transient or not."""
        from keystoneauth1 import exceptions as ka
        from openstack import exceptions as sdk

        conn = self.conn
        try:
            response = getattr(conn, service).request(path, method, raise_exc=False, **kwargs)
        except (ka.ConnectionError, ka.ServiceUnavailable, ka.RetriableConnectionFailure) as exc:
            raise ComputeError(f"{what}: {service} unreachable: {exc}", transient=True) from exc
        except ka.HttpError as exc:  # from authentication (Keystone's answer)
            raise classify(exc.http_status or 500, f"{what}: authentication", str(exc)) from exc
        except ka.ClientException as exc:  # no endpoint in the catalog, bad auth configuration
            raise ComputeError(f"{what}: {exc}", transient=False) from exc
        except sdk.HttpException as exc:
            raise classify(exc.status_code or 500, what, str(exc)) from exc
        except sdk.SDKException as exc:
            raise ComputeError(f"{what}: {exc}", transient=False) from exc
        if response.status_code == 404 and ok_404:
            return None
        if response.status_code >= 400:
            raise classify(response.status_code, what, response.text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ComputeError(f"{what}: not JSON from {service}", transient=True) from exc

    def _nova(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any] | None:
        return self._call("compute", method, path, what, microversion=NOVA_MICROVERSION, **kwargs)

    def _cinder(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any] | None:
        return self._call("block_storage", method, path, what, microversion=CINDER_MICROVERSION, **kwargs)

    def _neutron(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any] | None:
        return self._call("network", method, path, what, **kwargs)  # the adapter adds /v2.0

    # ---- finders (by the deterministic names) ------------------------------------------

    def find_server(self, instance_id: str) -> dict[str, Any] | None:
        # Nova's `name` filter is a regular expression: anchor it, then compare exactly.
        name = server_name(instance_id)
        found = self._nova("GET", "/servers/detail", "list servers", params={"name": f"^{name}$"}) or {}
        servers = [s for s in found.get("servers", []) if s.get("name") == name and s.get("status") != "DELETED"]
        return servers[0] if servers else None

    def find_volume(self, instance_id: str) -> dict[str, Any] | None:
        name = volume_name(instance_id)
        found = self._cinder("GET", "/volumes/detail", "list volumes", params={"name": name}) or {}
        volumes = [v for v in found.get("volumes", []) if v.get("name") == name]
        return volumes[0] if volumes else None

    def find_port(self, instance_id: str) -> dict[str, Any] | None:
        name = port_name(instance_id)
        found = self._neutron("GET", "/ports", "list ports",
                              params={"name": name, "network_id": self.settings.network_id}) or {}
        ports = [p for p in found.get("ports", []) if p.get("name") == name]
        return ports[0] if ports else None

    def find_group(self, instance_id: str) -> dict[str, Any] | None:
        name = group_name(instance_id)
        found = self._neutron("GET", "/security-groups", "list security groups", params={"name": name}) or {}
        groups = [g for g in found.get("security_groups", []) if g.get("name") == name]
        return groups[0] if groups else None

    # ---- addresses ----------------------------------------------------------------------

    def pick_address(self, taken: set[str], datastore: str) -> str:
        """The lowest address of the network's IPv4 subnet pools that no instance holds and
        no Neutron port uses; the instance's port is created with it (create_server)."""
        subnets = (self._neutron("GET", "/subnets", "list subnets",
                                 params={"network_id": self.settings.network_id, "ip_version": 4}) or {}).get("subnets", [])
        if not subnets:
            raise ComputeError(f"network {self.settings.network_id} has no IPv4 subnet", transient=False)
        ports = (self._neutron("GET", "/ports", "list ports",
                               params={"network_id": self.settings.network_id}) or {}).get("ports", [])
        used = set(taken) | {ip["ip_address"] for p in ports for ip in p.get("fixed_ips", [])}
        for subnet in subnets:
            used.add(subnet.get("gateway_ip") or "")
            for pool in subnet.get("allocation_pools") or []:
                address = ipaddress.IPv4Address(pool["start"])
                end = ipaddress.IPv4Address(pool["end"])
                while address <= end:
                    if str(address) not in used:
                        return str(address)
                    address += 1
        raise ComputeError(f"no free address left on network {self.settings.network_id}", transient=False)

    # ---- volumes ------------------------------------------------------------------------

    def allocate_volume(self, instance_id: str, size_gb: int) -> str:
        """Create the instance's Cinder volume unless it exists; returns its id at once (it
        may still be `creating`: create_server waits for it by failing transiently)."""
        volume = self.find_volume(instance_id)
        if volume is not None:
            if volume.get("status") == "error":
                raise ComputeError(f"volume {volume['id']} of {instance_id} is in error", transient=False)
            return str(volume["id"])
        body: dict[str, Any] = {
            "size": size_gb,
            "name": volume_name(instance_id),
            "description": f"datastore volume for {instance_id}",
            "metadata": {"troveless_instance_id": instance_id},
        }
        if self.settings.volume_type:
            body["volume_type"] = self.settings.volume_type
        if self.settings.availability_zone:
            body["availability_zone"] = self.settings.availability_zone
        created = self._cinder("POST", "/volumes", "create volume", json={"volume": body}) or {}
        return str(created["volume"]["id"])

    def volume_ready(self, instance_id: str) -> bool:
        volume = self.find_volume(instance_id)
        return volume is not None and volume.get("status") in _VOLUME_READY

    def resize_volume(self, instance_id: str, size_gb: int) -> None:
        """Extend the volume (online, attached) to `size_gb`. Done when Cinder shows the new
        size; an extend in progress is a transient error (the step's retry waits for it)."""
        volume = self.find_volume(instance_id)
        if volume is None:
            raise ComputeError(f"instance {instance_id} has no volume", transient=False)
        status = volume.get("status")
        if int(volume.get("size") or 0) >= size_gb and status in _VOLUME_READY:
            return
        if status == "error_extending" or status == "error":
            raise ComputeError(f"volume {volume['id']} is in {status}", transient=False)
        if status not in _VOLUME_READY:
            raise ComputeError(f"volume {volume['id']} is {status}; extend later")
        self._cinder("POST", f"/volumes/{volume['id']}/action", "extend volume",
                     json={"os-extend": {"new_size": size_gb}})
        after = self.find_volume(instance_id)
        if after is None or int(after.get("size") or 0) < size_gb or after.get("status") not in _VOLUME_READY:
            raise ComputeError(f"volume {volume['id']} is extending to {size_gb} GB")

    def delete_volume(self, instance_id: str) -> None:
        """Delete the volume once no server holds it; gone already is done."""
        volume = self.find_volume(instance_id)
        if volume is None or volume.get("status") == "deleting":
            return
        status = volume.get("status")
        if status in ("in-use", "attaching", "detaching", "reserved"):
            server = self.find_server(instance_id)
            if server is not None:
                raise ComputeError(f"server of {instance_id} still holds volume {volume['id']}; volume kept")
            for attachment in volume.get("attachments") or []:
                # Attached to something that is not our server any more: detach it.
                self._nova("DELETE", f"/servers/{attachment['server_id']}/os-volume_attachments/{volume['id']}",
                           "detach volume", ok_404=True)
            raise ComputeError(f"volume {volume['id']} is being detached")
        if status in _VOLUME_BUSY:
            raise ComputeError(f"volume {volume['id']} is {status}; delete later")
        self._cinder("DELETE", f"/volumes/{volume['id']}", "delete volume", ok_404=True)

    # ---- network ------------------------------------------------------------------------

    def ensure_group(self, instance_id: str, datastore: str) -> str:
        """The instance's security group: ingress TCP to the database port and the agent's
        command port from the control plane's CIDR (Neutron adds the default egress rules)."""
        group = self.find_group(instance_id)
        if group is None:
            created = self._neutron("POST", "/security-groups", "create security group", json={"security_group": {
                "name": group_name(instance_id),
                "description": f"troveless instance {instance_id}",
            }}) or {}
            group = created["security_group"]
        wanted = [STANDARD_PORTS.get(datastore, 5432), AGENT_PORT]
        present = {
            (r.get("port_range_min"), r.get("remote_ip_prefix"))
            for r in group.get("security_group_rules") or []
            if r.get("direction") == "ingress" and r.get("protocol") == "tcp"
        }
        for port in wanted:
            if (port, self.settings.control_cidr) in present:
                continue
            try:
                self._neutron("POST", "/security-group-rules", "create security group rule", json={
                    "security_group_rule": {
                        "security_group_id": group["id"],
                        "direction": "ingress",
                        "ethertype": "IPv4",
                        "protocol": "tcp",
                        "port_range_min": port,
                        "port_range_max": port,
                        "remote_ip_prefix": self.settings.control_cidr,
                    }
                })
            except ComputeError as exc:
                if "HTTP 409" not in str(exc):  # SecurityGroupRuleExists: an earlier attempt made it
                    raise
        return str(group["id"])

    def ensure_port(self, instance_id: str, address: str, group_id: str) -> dict[str, Any]:
        port = self.find_port(instance_id)
        if port is not None:
            return port
        created = self._neutron("POST", "/ports", "create port", json={"port": {
            "name": port_name(instance_id),
            "network_id": self.settings.network_id,
            "fixed_ips": [{"ip_address": address}],
            "security_groups": [group_id],
            "description": f"troveless instance {instance_id}",
        }}) or {}
        return created["port"]

    # ---- servers ------------------------------------------------------------------------

    def create_server(self, spec: ServerSpec) -> str:
        """Boot the instance's server unless it exists; returns the Nova server id at once
        (status BUILD: the guest's first heartbeat is what the workflow waits for)."""
        server = self.find_server(spec.instance_id)
        if server is not None:
            if server.get("status") == "ERROR":
                fault = (server.get("fault") or {}).get("message") or "no fault given"
                raise ComputeError(f"server {server['id']} is in ERROR: {fault}", transient=False)
            return str(server["id"])
        if not spec.image_id or not spec.flavor_id:
            raise ComputeError("the datastore version has no image or the instance no flavor", transient=False)
        volume = self.find_volume(spec.instance_id)
        if volume is None:
            raise ComputeError(f"volume of {spec.instance_id} does not exist", transient=False)
        if volume.get("status") == "error":
            raise ComputeError(f"volume {volume['id']} is in error", transient=False)
        if volume.get("status") != "available":
            raise ComputeError(f"volume {volume['id']} is {volume.get('status')}, not available yet")
        group_id = self.ensure_group(spec.instance_id, spec.datastore)
        port = self.ensure_port(spec.instance_id, spec.address, group_id)
        user_data = base64.b64encode(self.user_data(spec, str(volume["id"])).encode()).decode()
        if len(user_data) > MAX_USER_DATA:
            raise ComputeError(f"user data of {len(user_data)} bytes is over Nova's limit", transient=False)
        body: dict[str, Any] = {
            "name": server_name(spec.instance_id),
            "imageRef": spec.image_id,
            "flavorRef": spec.flavor_id,
            "networks": [{"port": port["id"]}],
            "block_device_mapping_v2": [{
                "uuid": volume["id"],
                "source_type": "volume",
                "destination_type": "volume",
                "boot_index": -1,
                "delete_on_termination": False,
            }],
            "user_data": user_data,
            "metadata": {"troveless_instance_id": spec.instance_id},
        }
        if self.settings.availability_zone:
            body["availability_zone"] = self.settings.availability_zone
        if self.settings.key_name:
            body["key_name"] = self.settings.key_name
        created = self._nova("POST", "/servers", "create server", json={"server": body}) or {}
        server_id = str(created["server"]["id"])
        log.info("booting server %s for %s at %s", server_id, spec.instance_id, spec.address)
        return server_id

    def server_status(self, instance_id: str) -> str | None:
        """Nova's status of the instance's server (BUILD, ACTIVE, ERROR, ...); None if none."""
        server = self.find_server(instance_id)
        return None if server is None else str(server.get("status"))

    def resize_server(self, instance_id: str, flavor_id: str) -> bool:
        """Move the server to flavor `flavor_id`, one move per call, never waiting: True once
        it runs ACTIVE on that flavor. ACTIVE on another flavor → `resize` action; RESIZE (the
        migration) → nothing; VERIFY_RESIZE → `confirmResize` (once: a confirm in progress
        shows a task state); ERROR → permanent error with Nova's fault."""
        server = self.find_server(instance_id)
        if server is None:
            raise ComputeError(f"instance {instance_id} has no server", transient=False)
        status = str(server.get("status"))
        if status == "ERROR":
            fault = (server.get("fault") or {}).get("message") or "no fault given"
            raise ComputeError(f"server {server['id']} is in ERROR: {fault}", transient=False)
        busy = bool(server.get("OS-EXT-STS:task_state"))
        if status == "VERIFY_RESIZE":
            if not busy:  # else a confirm (or a revert) is under way already
                self._nova("POST", f"/servers/{server['id']}/action", "confirm resize",
                           json={"confirmResize": None})
            return False
        if status != "ACTIVE":
            return False  # RESIZE (migrating), BUILD, REBOOT, ...: ask again later
        if self._on_flavor(server, flavor_id):
            return True
        if not busy:
            self._nova("POST", f"/servers/{server['id']}/action", "resize server",
                       json={"resize": {"flavorRef": flavor_id}})
            log.info("resizing server %s of %s to flavor %s", server["id"], instance_id, flavor_id)
        return False

    def _on_flavor(self, server: dict[str, Any], flavor_id: str) -> bool:
        """Whether the server's flavor is `flavor_id`. Before microversion 2.47 Nova shows the
        flavor's `id`; from 2.47 on (NOVA_MICROVERSION) only its `original_name`, which is the
        id only when flavors are named after their ids: otherwise the target's name is asked
        of Nova once (`GET /flavors/{id}`) and compared."""
        flavor = server.get("flavor") or {}
        if flavor.get("id") is not None:
            return str(flavor["id"]) == flavor_id
        shown = flavor.get("original_name")
        if shown is None:
            return False
        if str(shown) == flavor_id:
            return True
        if flavor_id not in self._flavor_names:
            found = self._nova("GET", f"/flavors/{flavor_id}", "show flavor", ok_404=True) or {}
            if not found.get("flavor"):
                raise ComputeError(f"flavor {flavor_id} does not exist in Nova", transient=False)
            self._flavor_names[flavor_id] = str(found["flavor"].get("name"))
        return str(shown) == self._flavor_names[flavor_id]

    def delete_server(self, instance_id: str) -> None:
        """Delete the server, its port and its security group; what is gone already is done.
        The volume is left to delete_volume (it waits for the detach)."""
        server = self.find_server(instance_id)
        if server is not None and server.get("OS-EXT-STS:task_state") != "deleting":
            self._nova("DELETE", f"/servers/{server['id']}", "delete server", ok_404=True)
        port = self.find_port(instance_id)
        if port is not None:
            self._neutron("DELETE", f"/ports/{port['id']}", "delete port", ok_404=True)
        group = self.find_group(instance_id)
        if group is not None:
            # 409 while a port still uses it: transient, the retry finds it free.
            self._neutron("DELETE", f"/security-groups/{group['id']}", "delete security group", ok_404=True)

    # ---- the guest's boot configuration -------------------------------------------------

    def user_data(self, spec: ServerSpec, volume_id: str) -> str:
        """cloud-config that mounts the volume, installs the guest agent and starts it with
        what the local driver passes on its command line (the same files, as environment)."""
        datastore = "mariadb" if spec.datastore == "mysql" else spec.datastore
        instance_dir = f"{GUEST_ROOT}/{spec.instance_id}"
        # Cinder volumes show up by their id (virtio serial: the first 20 characters).
        device = f"/dev/disk/by-id/virtio-{volume_id[:20]}"
        env = {
            "TROVELESS_GUEST_INSTANCE_ID": spec.instance_id,
            "TROVELESS_GUEST_DATASTORE": datastore,
            "TROVELESS_GUEST_INSTANCE_DIR": instance_dir,
            "TROVELESS_GUEST_ADDRESS": spec.address,
            "TROVELESS_GUEST_KEY_FILE": f"{GUEST_ETC}/guest.key",
            "TROVELESS_GUEST_BROKER_URL": spec.broker_url,
            "TROVELESS_GUEST_VOLUME_SIZE_GB": str(spec.volume_size_gb),
            "TROVELESS_GUEST_HEARTBEAT_INTERVAL": str(self.heartbeat_interval_s),
        }
        # The object store's credentials for backups, as the local driver's agents inherit them
        # (the agent reads them from its environment only). They travel in the user data, as
        # the key does: readable on the server and by Nova's administrators.
        env.update({name: os.environ[name] for name in GUEST_S3_ENV if os.environ.get(name)})
        files: list[dict[str, Any]] = [
            {"path": f"{GUEST_ETC}/guest.key", "permissions": "0600", "encoding": "b64",
             "content": base64.b64encode(spec.key).decode()},
        ]
        if spec.user_data is not None:
            env["TROVELESS_GUEST_USER_DATA"] = f"{GUEST_ETC}/user-data.json"
            files.append({"path": f"{GUEST_ETC}/user-data.json", "permissions": "0600", "content": spec.user_data})
        files.append({"path": f"{GUEST_ETC}/guest.env", "permissions": "0600",
                      "content": "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())})
        files.append({"path": "/etc/systemd/system/troveless-guest.service", "permissions": "0644", "content": (
            "[Unit]\nDescription=Troveless guest agent\nAfter=network-online.target\nWants=network-online.target\n"
            f"RequiresMountsFor={instance_dir}/volume\n\n"
            f"[Service]\nEnvironmentFile={GUEST_ETC}/guest.env\nExecStart={GUEST_VENV}/bin/python -m guest_agent\n"
            "Restart=on-failure\nRestartSec=2\nKillMode=mixed\nTimeoutStopSec=60\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )})
        config = {
            "write_files": files,
            "fs_setup": [{"device": device, "filesystem": "ext4", "label": "trovedata", "overwrite": False}],
            "mounts": [[device, f"{instance_dir}/volume", "ext4", "defaults,nofail", "0", "2"]],
            "runcmd": [
                ["mkdir", "-p", f"{instance_dir}/volume"],
                ["chmod", "0711", instance_dir],
                ["mount", "-a"],
                ["python3", "-m", "venv", GUEST_VENV],
                [f"{GUEST_VENV}/bin/pip", "install", "--quiet", self.settings.guest_package],
                ["systemctl", "daemon-reload"],
                ["systemctl", "enable", "--now", "troveless-guest.service"],
            ],
        }
        # JSON is YAML: no YAML emitter quirks with keys or multi-line contents.
        return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"
