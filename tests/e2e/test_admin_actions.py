"""Administrator stop / start / reboot of a real database server (mgmt actions)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import LocalPlatform, listening, sql, wait_until

PORTS = {"postgresql": 5432, "mariadb": 3306}


@pytest.fixture
def platform(database_url: str) -> Iterator[LocalPlatform]:
    p = LocalPlatform(database_url)
    p.start()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.mark.parametrize(("kind", "database_url"), [("postgresql", "sqlite"), ("mariadb", "postgresql")],
                         indirect=["database_url"])
def test_stop_start_and_reboot_keep_the_data(platform: LocalPlatform, kind: str) -> None:
    p = platform
    r = p.api("POST", "/instances", json={"instance": {
        "name": "ops", "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": kind},
        "databases": [{"name": "app"}], "users": [{"name": "u", "password": "pw-123456", "databases": [{"name": "app"}]}]}})
    assert r.status_code == 200, r.text
    inst = p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY", timeout_s=240)
    iid, ip = inst["id"], inst["ip"][0]
    done = sql(kind, ip, "u", "pw-123456", "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    assert done.returncode == 0, done.stderr

    assert p.api("POST", f"/mgmt/instances/{iid}/action", json={"stop": {}}).status_code == 202
    p.wait_status(iid, "ACTIVE", "SHUTDOWN", timeout_s=60)
    wait_until(lambda: not listening(ip, PORTS[kind]), timeout_s=30, what="port closed")
    # A stopped database refuses account commands with Trove's 422, and stays stopped.
    assert p.api("GET", f"/instances/{iid}/databases").status_code == 422

    assert p.api("POST", f"/mgmt/instances/{iid}/action", json={"start": {}}).status_code == 202
    p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=60)
    assert sql(kind, ip, "u", "pw-123456", "app", "SELECT x FROM t").stdout.split() == ["42"]

    assert p.api("POST", f"/mgmt/instances/{iid}/action", json={"reboot": {}}).status_code == 202
    assert p.show(iid)["status"] in ("REBOOT", "ACTIVE")  # type: ignore[index]
    p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=120)
    assert sql(kind, ip, "u", "pw-123456", "app", "SELECT x FROM t").stdout.split() == ["42"]


MEMORY_SETTING = {
    "postgresql": "SHOW shared_buffers",
    "mariadb": "SELECT @@innodb_buffer_pool_size DIV 1048576",
}


@pytest.mark.parametrize(("kind", "database_url"), [("postgresql", "postgresql"), ("mariadb", "sqlite")],
                         indirect=["database_url"])
def test_resize_flavor_and_volume_through_the_client(platform: LocalPlatform, kind: str) -> None:
    p = platform
    r = p.api("POST", "/instances", json={"instance": {
        "name": "grow", "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": kind},
        "databases": [{"name": "app"}], "users": [{"name": "u", "password": "pw-123456", "databases": [{"name": "app"}]}]}})
    assert r.status_code == 200, r.text
    inst = p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY", timeout_s=240)
    iid, ip = inst["id"], inst["ip"][0]
    assert sql(kind, ip, "u", "pw-123456", "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (7)").returncode == 0
    before = sql(kind, ip, "u", "pw-123456", "app", MEMORY_SETTING[kind]).stdout.strip()

    # Flavor 1 (512 MB) -> 3 (2048 MB): the server restarts with four times the memory.
    p.osc("database", "instance", "resize", "flavor", iid, "3")
    assert p.show(iid)["status"] in ("RESIZE", "ACTIVE")  # type: ignore[index]
    shown = p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=120)
    assert shown["flavor"]["id"] == "3"
    after = sql(kind, ip, "u", "pw-123456", "app", MEMORY_SETTING[kind]).stdout.strip()
    assert (before, after) == (("128MB", "512MB") if kind == "postgresql" else ("256", "1024"))
    assert sql(kind, ip, "u", "pw-123456", "app", "SELECT x FROM t").stdout.split() == ["7"]

    # Volume 1 -> 3 GB: grow only; the limit the API and the guest report goes up.
    p.osc("database", "instance", "resize", "volume", iid, "3")
    shown = p.wait_status(iid, "ACTIVE", "HEALTHY", timeout_s=60)
    wait_until(lambda: p.show(iid)["volume"]["size"] == 3, timeout_s=30, what="volume size 3")  # type: ignore[index]
    shrink = p.osc("database", "instance", "resize", "volume", iid, "2", check=False)
    assert shrink.returncode != 0 and "must be larger" in shrink.stderr
    same = p.osc("database", "instance", "resize", "flavor", iid, "3", check=False)
    assert same.returncode != 0 and "different" in same.stderr


def _binaries_elsewhere(root: Path, source: Path) -> Path:
    """A second install location for the same server: links to the installed binaries, so
    the server runs from a new path (what a minor upgrade's package would give) while every
    support file still resolves (PostgreSQL finds share/ from the link's target)."""
    target = root / "pg-next" / "bin"
    target.mkdir(parents=True)
    for binary in source.iterdir():
        (target / binary.name).symlink_to(binary)
    for parent in (target, target.parent, root):
        parent.chmod(0o755)
    return target


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_minor_upgrade_keeps_the_data_and_a_major_one_is_refused(platform: LocalPlatform) -> None:
    p = platform
    r = p.api("POST", "/instances", json={"instance": {
        "name": "up", "flavorRef": "1", "volume": {"size": 1}, "datastore": {"type": "postgresql"},
        "databases": [{"name": "app"}], "users": [{"name": "u", "password": "pw-123456", "databases": [{"name": "app"}]}]}})
    assert r.status_code == 200, r.text
    inst = p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY", timeout_s=240)
    iid, ip, current = inst["id"], inst["ip"][0], inst["datastore"]["version"]
    assert sql("postgresql", ip, "u", "pw-123456", "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (5)").returncode == 0
    installed = Path(f"/usr/lib/postgresql/{current.split('.')[0]}/bin")
    nxt = f"{current.split('.')[0]}.99"

    def register(name: str, image: str) -> None:
        r = p.api("POST", "/mgmt/datastore-versions", json={"version": {
            "datastore_name": "postgresql", "datastore_manager": "postgresql", "name": name, "version": name,
            "image": image, "active": True}})
        assert r.status_code == 202, r.text

    # A major upgrade is refused up front, naming what it would need.
    register("99.1", str(installed))
    major = p.osc("database", "instance", "upgrade", iid, "99.1", check=False)
    assert major.returncode != 0 and "major version upgrade" in major.stderr

    # A minor version whose binaries are missing: the guest refuses, the instance stays on its version.
    register(f"{current.split('.')[0]}.98", str(p.data_dir / "nowhere"))
    p.osc("database", "instance", "upgrade", iid, f"{current.split('.')[0]}.98")
    wait_until(lambda: p.show(iid)["datastore"]["version"] == current and p.show(iid)["status"] == "ACTIVE",  # type: ignore[index]
               timeout_s=60, what="failed upgrade rolled back")

    # The minor upgrade: the server restarts from the new location on the same data.
    register(nxt, str(_binaries_elsewhere(p.data_dir, installed)))
    p.osc("database", "instance", "upgrade", iid, nxt)
    assert p.show(iid)["status"] in ("UPGRADE", "ACTIVE")  # type: ignore[index]
    wait_until(lambda: p.show(iid)["status"] == "ACTIVE" and p.show(iid)["datastore"]["version"] == nxt,  # type: ignore[index]
               timeout_s=120, what="upgraded")
    assert sql("postgresql", ip, "u", "pw-123456", "app", "SELECT x FROM t").stdout.split() == ["5"]
    postmaster = (p.data_dir / "instances" / iid / "volume" / "data" / "postmaster.pid").read_text().split()[0]
    postmaster_argv0 = Path(f"/proc/{postmaster}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert postmaster_argv0.startswith(str(p.data_dir / "pg-next" / "bin")), postmaster_argv0
