"""Keystone end to end: `troveless up` with TROVELESS_AUTH=keystone behind a real Keystone
(tests/keystone/server.py), driven by the unmodified `openstack` client that finds the
platform in Keystone's catalog; then revoked, expired and foreign tokens at the API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.platform import BIN, LocalPlatform, traversable_tmpdir
from tests.infra.platform_helpers import wait_for
from tests.keystone.server import KeystoneServer

CACHE_TTL_S = 1.0


@pytest.fixture(scope="module")
def platform(keystone: KeystoneServer) -> Iterator[LocalPlatform]:
    db_dir = traversable_tmpdir("troveless-keystone-db-")
    p = LocalPlatform(f"sqlite:///{db_dir / 'troveless.db'}", extra_env=keystone.service_env(cache_ttl_s=CACHE_TTL_S))
    # Trove's catalog entry: the client substitutes nothing, Keystone puts the project id in.
    keystone.set_endpoint("database", f"{p.base}/v1.0/%(tenant_id)s")
    try:
        p.start()
        yield p
    finally:
        p.cleanup()
        shutil.rmtree(db_dir, ignore_errors=True)


def osc(keystone: KeystoneServer, platform: LocalPlatform, *args: str, check: bool = True) -> Any:
    """`openstack` as a Keystone user would run it: password auth, the catalog, no endpoint."""
    argv = [str(BIN / "openstack"), "--os-auth-url", keystone.auth_url, "--os-identity-api-version", "3",
            "--os-username", "alice", "--os-password", keystone.passwords["alice"], "--os-project-name", "demo",
            "--os-user-domain-name", "Default", "--os-project-domain-name", "Default",
            "--os-region-name", "RegionOne", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=platform.env, check=False)
    if check:
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}\n{platform.log()}"
    if "-f" in args and "json" in args and done.returncode == 0:
        return json.loads(done.stdout)
    return done


def call(platform: LocalPlatform, project: str, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{platform.base}/v1.0/{project}{path}", headers={"X-Auth-Token": token}, timeout=30)


def test_the_openstack_client_through_keystones_catalog(keystone: KeystoneServer, platform: LocalPlatform) -> None:
    flavors = osc(keystone, platform, "database", "flavor", "list", "-f", "json")
    assert "1" in {str(f["ID"]) for f in flavors}

    created = osc(keystone, platform, "database", "instance", "create", "ks-1", "--flavor", "1", "--size", "1",
                  "--datastore", "postgresql", "-f", "json")
    instance_id = created["id"]
    assert created["status"] == "BUILD"

    def active() -> dict[str, Any] | None:
        shown = osc(keystone, platform, "database", "instance", "show", instance_id, "-f", "json")
        assert shown["status"] != "ERROR", f"{shown}\n{platform.log()}"
        return shown if shown["status"] == "ACTIVE" else None

    shown = wait_for(active, timeout_s=180, interval_s=0.5, what=f"{instance_id} ACTIVE")
    assert shown["name"] == "ks-1" and shown["datastore"] == "postgresql"

    listed = osc(keystone, platform, "database", "instance", "list", "-f", "json")
    assert [i["ID"] for i in listed] == [instance_id]

    # The instance is alice's project's: the project id Keystone gave her token.
    token = keystone.user_token()
    r = call(platform, keystone.ids["demo"], f"/instances/{instance_id}", token)
    assert r.status_code == 200 and r.json()["instance"]["status"] == "ACTIVE"

    osc(keystone, platform, "database", "instance", "delete", instance_id)
    wait_for(lambda: call(platform, keystone.ids["demo"], f"/instances/{instance_id}", token).status_code == 404,
             timeout_s=60, interval_s=0.3, what=f"{instance_id} deleted")


def test_revoked_expired_and_foreign_tokens(keystone: KeystoneServer, platform: LocalPlatform) -> None:
    demo, other = keystone.ids["demo"], keystone.ids["other"]

    # Revoked in Keystone: refused once the cache TTL has passed.
    token = keystone.user_token()
    assert call(platform, demo, "/instances", token).status_code == 200
    keystone.revoke(token)
    time.sleep(CACHE_TTL_S + 0.3)
    r = call(platform, demo, "/instances", token)
    assert r.status_code == 401 and r.json() == {"unauthorized": {"code": 401, "message": "The token is not valid."}}

    # Expired: a token that lives ~3 s works, then gets 401.
    short, expires = keystone.short_lived_token("alice", "demo", seconds=3)
    assert call(platform, demo, "/instances", short).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.3)
    assert call(platform, demo, "/instances", short).status_code == 401

    # Another project's URL: 403, as Trove's TenantBasedAuth.
    r = call(platform, other, "/instances", keystone.user_token())
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == f"User with tenant id {demo} cannot access this resource."

    # Keystone's admin role is our admin: any project's URL.
    admin_token, _ = keystone.password_token("admin", keystone.admin_password, "admin")
    assert call(platform, demo, "/instances", admin_token).status_code == 200

    # No token at all: 401, and the service user's password never reached the platform's log.
    assert httpx.get(f"{platform.base}/v1.0/{demo}/instances", timeout=30).status_code == 401
    assert keystone.passwords["troveless"] not in platform.log()
