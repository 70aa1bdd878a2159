"""Databases, users, access and root through the unmodified `openstack database db|user|root`
commands, every claim checked against the real server with its own client."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.platform import LocalPlatform, sql

SUPERUSER_CHECK = {
    "postgresql": "SELECT count(*) FROM pg_authid",  # readable by superusers only
    "mariadb": "SELECT count(*) FROM mysql.user",
}


@pytest.fixture(params=["postgresql", "mariadb"])
def instance(request, database_url: str) -> Iterator[tuple[LocalPlatform, str, str, str]]:  # type: ignore[no-untyped-def]
    p = LocalPlatform(database_url)
    p.start()
    try:
        r = p.api("POST", "/instances", json={"instance": {
            "name": f"acct-{request.param}", "flavorRef": "1", "volume": {"size": 1},
            "datastore": {"type": request.param}}})
        assert r.status_code == 200, r.text
        inst = p.wait_status(r.json()["instance"]["id"], "ACTIVE", "HEALTHY")
        yield p, inst["id"], inst["ip"][0], request.param
    finally:
        p.cleanup()




def ok(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0


def test_databases_users_access_and_root(instance) -> None:  # type: ignore[no-untyped-def]
    p, iid, ip, kind = instance
    charset = ["--character_set", "utf8mb4", "--collate", "utf8mb4_bin"] if kind == "mariadb" else \
        ["--character_set", "UTF8", "--collate", "C.UTF-8"]
    p.osc("database", "db", "create", iid, "app")
    p.osc("database", "db", "create", iid, "other", *charset)
    assert sorted(d["Name"] for d in p.osc("database", "db", "list", iid, "-f", "json")) == ["app", "other"]

    p.osc("database", "user", "create", iid, "alice", "pw-alice-1", "--databases", "app")
    p.osc("database", "user", "create", iid, "bob", "pw-bob-1")
    users = {u["Name"]: u for u in p.osc("database", "user", "list", iid, "-f", "json")}
    assert set(users) == {"alice", "bob"}
    assert ok(sql(kind, ip, "alice", "pw-alice-1", "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"))

    # bob has no grant: the server itself refuses him; grant -> works; revoke -> refused again.
    assert not ok(sql(kind, ip, "bob", "pw-bob-1", "app", "SELECT 1"))
    p.osc("database", "user", "grant", "access", iid, "bob", "app")
    assert [d["Name"] for d in p.osc("database", "user", "show", "access", iid, "bob", "-f", "json")] == ["app"]
    assert ok(sql(kind, ip, "bob", "pw-bob-1", "app", "CREATE TABLE b (y int)"))
    p.osc("database", "user", "revoke", "access", iid, "bob", "app")
    assert not ok(sql(kind, ip, "bob", "pw-bob-1", "app", "SELECT 1"))
    assert p.osc("database", "user", "show", "access", iid, "bob", "-f", "json") == []

    # Password change: old refused, new works.
    p.osc("database", "user", "update", "attributes", iid, "alice", "--new_password", "pw-alice-2")
    assert not ok(sql(kind, ip, "alice", "pw-alice-1", "app", "SELECT 1"))
    assert ok(sql(kind, ip, "alice", "pw-alice-2", "app", "SELECT x FROM t"))
    shown = p.osc("database", "user", "show", iid, "alice", "-f", "json")
    assert shown["name"] == "alice" and "app" in str(shown["databases"])
    # Bulk change (PUT .../users), as troveclient's users.change_passwords sends it.
    r = p.api("PUT", f"/instances/{iid}/users", json={"users": [{"name": "alice", "password": "pw-alice-3"}]})
    assert r.status_code == 202, r.text
    assert not ok(sql(kind, ip, "alice", "pw-alice-2", "app", "SELECT 1"))
    assert ok(sql(kind, ip, "alice", "pw-alice-3", "app", "SELECT 1"))
    r = p.api("PUT", f"/instances/{iid}/users", json={"users": [{"name": "nobody", "password": "pw-x"}]})
    assert r.status_code == 404 and ok(sql(kind, ip, "alice", "pw-alice-3", "app", "SELECT 1"))

    # Root: enable returns a password that logs in as a superuser; disable stops it.
    assert p.osc("database", "root", "show", iid, "-f", "json")["is_root_enabled"] is False
    root = p.osc("database", "root", "enable", iid, "-f", "json")
    assert root["name"] == "root" and len(root["password"]) >= 8
    first_db = "postgres" if kind == "postgresql" else ""
    done = sql(kind, ip, "root", root["password"], first_db, SUPERUSER_CHECK[kind])
    assert ok(done) and int(done.stdout.strip()) > 0, done.stderr
    assert p.osc("database", "root", "show", iid, "-f", "json")["is_root_enabled"] is True
    given = p.osc("database", "root", "enable", iid, "--root_password", "Given-Passw0rd", "-f", "json")
    assert given["password"] == "Given-Passw0rd"
    assert ok(sql(kind, ip, "root", "Given-Passw0rd", first_db, SUPERUSER_CHECK[kind]))
    p.osc("database", "root", "disable", iid)
    assert not ok(sql(kind, ip, "root", "Given-Passw0rd", first_db, "SELECT 1"))
    assert p.osc("database", "root", "show", iid, "-f", "json")["is_root_enabled"] is False
    history = p.api("GET", f"/mgmt/instances/{iid}/root").json()["root_history"]
    assert history["id"] == iid and history["enabled"] != "Never" and history["user"] != "Nobody"

    # Deletes are reflected by the server.
    p.osc("database", "user", "delete", iid, "bob")
    assert [u["Name"] for u in p.osc("database", "user", "list", iid, "-f", "json")] == ["alice"]
    assert not ok(sql(kind, ip, "bob", "pw-bob-1", "app", "SELECT 1"))
    p.osc("database", "db", "delete", iid, "other")
    assert [d["Name"] for d in p.osc("database", "db", "list", iid, "-f", "json")] == ["app"]
    gone = sql(kind, ip, "alice", "pw-alice-3", "other", "SELECT 1")
    assert not ok(gone) and ("does not exist" in gone.stderr or "Unknown database" in gone.stderr
                             or "denied" in gone.stderr), gone.stderr


def _troveclient(p: LocalPlatform):  # type: ignore[no-untyped-def]
    from keystoneauth1 import session
    from keystoneauth1.token_endpoint import Token
    from troveclient.v1 import client

    return client.Client(session=session.Session(auth=Token(f"{p.base}/v1.0/{p.project}", p.token)))


def test_paging_as_troveclient_follows_it(instance) -> None:  # type: ignore[no-untyped-def]
    p, iid, _ip, _kind = instance
    names = [f"user{n:02d}" for n in range(27)]
    r = p.api("POST", f"/instances/{iid}/users", json={"users": [{"name": n, "password": f"pw-{n}"} for n in names]})
    assert r.status_code == 202, r.text
    r = p.api("POST", f"/instances/{iid}/databases", json={"databases": [{"name": f"db{n:02d}"} for n in range(23)]})
    assert r.status_code == 202, r.text
    trove = _troveclient(p)
    for manager, expected in ((trove.users, names), (trove.databases, [f"db{n:02d}" for n in range(23)])):
        seen, marker, pages = [], None, []
        while True:
            page = manager.list(iid, marker=marker)
            pages.append(len(page))
            seen += [item.name for item in page]
            marker = page.next
            if not marker:
                break
        assert seen == expected and pages == [20, len(expected) - 20]
    assert [u.name for u in trove.users.list(iid, limit=5)] == names[:5]


HOSTILE = ['a"; DROP DATABASE app; --', "x' OR '1'='1", "n" * 63, "n" * 64, "n" * 200, "", "nul\0x",
           "naïve-数据库-🙂", "spa ce", "back`tick", "per%cent"]


def test_hostile_names_are_refused_or_taken_literally(instance) -> None:  # type: ignore[no-untyped-def]
    p, iid, _ip, _kind = instance
    assert p.api("POST", f"/instances/{iid}/databases", json={"databases": [{"name": "app"}]}).status_code == 202

    def everything() -> tuple[list[str], list[str]]:
        dbs = [d["name"] for d in p.api("GET", f"/instances/{iid}/databases").json()["databases"]]
        users = [u["name"] for u in p.api("GET", f"/instances/{iid}/users").json()["users"]]
        return dbs, users

    before = everything()
    for name in HOSTILE:
        for kind, body in (("databases", {"databases": [{"name": name}]}),
                           ("users", {"users": [{"name": name, "password": "pw-x", "databases": [{"name": "app"}]}]})):
            r = p.api("POST", f"/instances/{iid}/{kind}", json=body)
            if r.status_code == 400:
                assert "invalid" in r.json()["badRequest"]["message"] or "reserved" in r.json()["badRequest"]["message"]
                continue
            assert r.status_code == 202, (name, r.text)
            listed = everything()[0 if kind == "databases" else 1]
            assert name in listed, f"{name!r} was not created literally: {listed}"
            quoted = name.replace(".", "%2e")
            r = p.api("DELETE", f"/instances/{iid}/{kind}/{_path(quoted)}")
            assert r.status_code == 202, (name, r.text)
    assert everything() == before, "a hostile name changed another object"
    for reserved in ("postgres", "mysql", "information_schema", "template1"):
        r = p.api("DELETE", f"/instances/{iid}/databases/{reserved}")
        assert r.status_code in (400, 404), r.text
    for reserved in ("os_admin", "root", "postgres"):
        r = p.api("DELETE", f"/instances/{iid}/users/{reserved}")
        assert r.status_code in (400, 404), r.text
    assert everything() == before


def _path(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def test_a_guest_that_does_not_answer_gives_a_clear_error(instance) -> None:  # type: ignore[no-untyped-def]
    """Never a hanging request, never a 5xx: a frozen guest agent gives a 422 in bounded time."""
    p, iid, _ip, _kind = instance
    agent = int((p.data_dir / "instances" / iid / "agent.pid").read_text())
    os.kill(agent, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = p.api("GET", f"/instances/{iid}/databases")
        elapsed = time.monotonic() - started
    finally:
        os.kill(agent, signal.SIGCONT)
    assert r.status_code == 422, r.text
    assert "not ready" in r.json()["unprocessableEntity"]["message"]
    assert elapsed < 25
    assert p.api("GET", f"/instances/{iid}/databases").status_code == 200  # and it recovers
