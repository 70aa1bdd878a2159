"""Databases, users, access and root through a real agent, against real PostgreSQL / MariaDB.

The tests of one datastore share one prepared agent and run in file order, each step starting
from the state the previous one left. What the agent reports is checked against what the
server itself does: users connect over TCP to <address>:<standard port>, and the full lists
of databases and accounts are read with the admin connection (unix socket) before and after
the hostile and reserved names.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import psycopg
import pymysql
import pytest

from events.base import Event
from events.envelope import decode_http
from events.guest import (
    ChangePasswordsRequested,
    CommandCompleted,
    CreateDatabasesRequested,
    CreateUsersRequested,
    DatabaseInfo,
    DatabaseSpec,
    DatabasesListed,
    DeleteDatabaseRequested,
    DeleteUserRequested,
    DisableRootRequested,
    EnableRootRequested,
    FlavorSpec,
    GrantAccessRequested,
    GuestStatus,
    ListDatabasesRequested,
    ListUsersRequested,
    PasswordChange,
    PrepareRequested,
    RestartRequested,
    RevokeAccessRequested,
    RootEnabled,
    ShowUserRequested,
    UpdateUserRequested,
    UserInfo,
    UserRef,
    UserShown,
    UserSpec,
    UsersListed,
)
from events.registry import parse

from .helpers import Agent

pytestmark = pytest.mark.slow

SUFFIX = os.urandom(3).hex()
# Passwords that break any string formatting (ASCII: PyMySQL sends passwords as latin-1).
PW1 = f"p'w\"1%`;-{SUFFIX}"
PW1_NEW = f"n\\ew'1%s{SUFFIX}"
PW2 = f"p\"w'2;--{SUFFIX}"
ROOT_PW = f"r00t'%\"{SUFFIX}"
DB1, DB2 = "db1", "db_2"
CHARSET = {"postgresql": ("LATIN1", "C"), "mariadb": ("latin1", "latin1_bin")}
VERSIONS = {"postgresql": "15", "mariadb": "10.11"}
SYSTEM_DBS = {"postgres", "template0", "template1", "mysql", "information_schema", "performance_schema", "sys"}
HOSTILE = [
    'a"; DROP DATABASE db1; --',
    "x' OR '1'='1",
    "n" * 63,
    "m" * 64,
    "z" * 200,
    "",
    "nul\0byte",
    "naïve-数据库-🙂",
    "naïve-数据库",
    "back`tick) ; `",
    "per%cent_%s",
    "trailing ",
    "slash/dot.",
]
RESERVED_DBS = {"postgresql": ["postgres", "template1", "Postgres"], "mariadb": ["mysql", "information_schema", "sys"]}
RESERVED_USERS = {"postgresql": ["postgres", "os_admin", "root", "pg_monitor"], "mariadb": ["root", "os_admin", "mysql", "mariadb.sys"]}
OUTCOMES: dict[str, dict[str, list[str]]] = {}  # datastore -> outcome -> names (printed at the end)


# ------------------------------------------------------------------ talking to the agent


def call(agent: Agent, event: Event) -> httpx.Response:
    return agent.send(event)


def ok(agent: Agent, event: Event, expect: type[Event] = CommandCompleted) -> Any:
    response = call(agent, event)
    assert response.status_code == 200, f"{event.TYPE}: {response.status_code} {response.text}"
    message = decode_http(dict(response.headers), response.content)
    agent.verify(message)  # signed with the instance key, from guest_source
    reply = parse(message)
    assert isinstance(reply, expect), reply
    assert reply.instance_id == agent.instance_id  # type: ignore[attr-defined]
    if isinstance(reply, CommandCompleted):
        assert reply.command == event.TYPE
    return reply


def refused(agent: Agent, event: Event, reason: str) -> str:
    status = {"not_found": 404, "exists": 409, "invalid": 400, "not_ready": 503}[reason]
    response = call(agent, event)
    assert response.status_code == status, f"{event.TYPE}: {response.status_code} {response.text}"
    body = response.json()
    assert body["reason"] == reason and body["error"], body
    return body["error"]


def all_databases(agent: Agent) -> list[DatabaseInfo]:
    found: list[DatabaseInfo] = []
    marker = None
    while True:
        page = ok(agent, ListDatabasesRequested(instance_id=agent.instance_id, limit=100, marker=marker), DatabasesListed)
        found += page.databases
        if page.next_marker is None:
            return found
        marker = page.next_marker


def all_users(agent: Agent) -> list[UserInfo]:
    found: list[UserInfo] = []
    marker = None
    while True:
        page = ok(agent, ListUsersRequested(instance_id=agent.instance_id, limit=100, marker=marker), UsersListed)
        found += page.users
        if page.next_marker is None:
            return found
        marker = page.next_marker


def show(agent: Agent, name: str, host: str | None = None) -> UserInfo:
    return ok(agent, ShowUserRequested(instance_id=agent.instance_id, user=UserRef(name=name, host=host)), UserShown).user


# ------------------------------------------------------------------ talking to the server


def admin_snapshot(agent: Agent) -> tuple[set[Any], set[Any], set[Any]]:
    """Every database, account and database grant on the server, read with the admin connection."""
    run = agent.instance_dir / "run"
    if agent.datastore == "postgresql":
        with psycopg.connect(host=str(run), port=5432, user="os_admin", dbname="postgres", autocommit=True) as conn:
            dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            roles = {r for r in conn.execute("SELECT rolname, rolcanlogin, rolsuper FROM pg_roles")}
            acls = {r for r in conn.execute("SELECT datname, datacl::text FROM pg_database")}
        return dbs, roles, acls
    conn = pymysql.connect(unix_socket=str(run / "mysqld.sock"), user="root", charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            dbs = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT User, Host FROM mysql.user")
            users = set(cur.fetchall())
            cur.execute("SELECT User, Host, Db FROM mysql.db")
            grants = set(cur.fetchall())
        return dbs, users, grants
    finally:
        conn.close()


def connect(agent: Agent, user: str, password: str, db: str | None) -> Any:
    if agent.datastore == "postgresql":
        return psycopg.connect(host=agent.address, port=5432, user=user, password=password,
                               dbname=db or "postgres", connect_timeout=5, autocommit=True)
    return pymysql.connect(host=agent.address, port=3306, user=user, password=password, database=db,
                           connect_timeout=5, autocommit=True)


def user_sql(agent: Agent, user: str, password: str, db: str | None, statements: list[str]) -> list[tuple]:  # type: ignore[type-arg]
    conn = connect(agent, user, password, db)
    try:
        rows: list[tuple] = []  # type: ignore[type-arg]
        if agent.datastore == "postgresql":
            for stmt in statements:
                cur = conn.execute(stmt)
                rows = [tuple(r) for r in cur.fetchall()] if cur.description else rows
        else:
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
                    rows = [tuple(r) for r in cur.fetchall()] if cur.description else rows
        return rows
    finally:
        conn.close()


def connect_error(agent: Agent, user: str, password: str, db: str | None) -> str:
    """The server's own refusal (not the agent's): the message of the failed login."""
    errors = (psycopg.OperationalError,) if agent.datastore == "postgresql" else (pymysql.err.OperationalError,)
    with pytest.raises(errors) as info:
        connect(agent, user, password, db).close()
    return str(info.value)


def refused_for_db(agent: Agent, user: str, password: str, db: str) -> None:
    message = connect_error(agent, user, password, db)
    if agent.datastore == "postgresql":
        assert f'permission denied for database "{db}"' in message, message
    else:
        assert "Access denied" in message and db in message, message


def bad_password(agent: Agent, user: str, password: str) -> None:
    message = connect_error(agent, user, password, None)
    if agent.datastore == "postgresql":
        assert "password authentication failed" in message, message
    else:
        assert "Access denied" in message, message


def create_table(agent: Agent, user: str, password: str, db: str, table: str) -> None:
    rows = user_sql(agent, user, password, db, [
        f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)",
        f"INSERT INTO {table} VALUES (7)",
        f"SELECT id FROM {table}",
    ])
    assert rows == [(7,)]


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def agent(request: pytest.FixtureRequest, make_agent) -> Agent:  # type: ignore[no-untyped-def]
    agent: Agent = make_agent(request.param)
    # Before prepare there is no server: not ready, at once.
    refused(agent, ListDatabasesRequested(instance_id=agent.instance_id), "not_ready")
    prepare = PrepareRequested(
        instance_id=agent.instance_id, datastore=agent.datastore, version=VERSIONS[agent.datastore],
        flavor=FlavorSpec(ram_mb=512, vcpus=1), volume_size_gb=2,
    )
    assert agent.send(prepare).status_code == 202
    agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.HEALTHY, timeout=60)
    return agent


def test_create_and_list_databases_paged(agent: Agent) -> None:
    charset, collate = CHARSET[agent.datastore]
    ok(agent, CreateDatabasesRequested(instance_id=agent.instance_id, databases=[
        DatabaseSpec(name=DB1), DatabaseSpec(name=DB2, character_set=charset, collate=collate)]))
    # Paged one at a time: the marker chain covers both, and no system database appears.
    names, marker, pages = [], None, 0
    while True:
        page = ok(agent, ListDatabasesRequested(instance_id=agent.instance_id, limit=1, marker=marker), DatabasesListed)
        pages += 1
        assert len(page.databases) <= 1
        names += [d.name for d in page.databases]
        if page.next_marker is None:
            break
        assert page.next_marker == page.databases[-1].name
        marker = page.next_marker
    assert names == sorted([DB1, DB2]) and pages == 2
    assert not SYSTEM_DBS & set(names)
    info = {d.name: d for d in all_databases(agent)}
    assert (info[DB2].character_set, info[DB2].collate) == (charset, collate)
    assert DB1 in admin_snapshot(agent)[0] and DB2 in admin_snapshot(agent)[0]

    # All or nothing: one existing name refuses the whole request.
    refused(agent, CreateDatabasesRequested(instance_id=agent.instance_id, databases=[
        DatabaseSpec(name="db_new"), DatabaseSpec(name=DB1)]), "exists")
    bad = "no_such_charset"
    refused(agent, CreateDatabasesRequested(instance_id=agent.instance_id, databases=[
        DatabaseSpec(name="db_new"), DatabaseSpec(name="db_new2", character_set=bad)]), "invalid")
    refused(agent, CreateDatabasesRequested(instance_id=agent.instance_id, databases=[
        DatabaseSpec(name="db_new", collate="no_such_collation")]), "invalid")
    assert "db_new" not in admin_snapshot(agent)[0]
    refused(agent, DeleteDatabaseRequested(instance_id=agent.instance_id, name="db_missing"), "not_found")


def test_users_and_access_are_enforced_by_the_server(agent: Agent) -> None:
    iid = agent.instance_id
    ok(agent, CreateUsersRequested(instance_id=iid, users=[
        UserSpec(name="u1", password=PW1, databases=[DB1]), UserSpec(name="u2", password=PW2)]))
    refused(agent, CreateUsersRequested(instance_id=iid, users=[
        UserSpec(name="u3", password=PW2), UserSpec(name="u1", password=PW2)]), "exists")
    refused(agent, CreateUsersRequested(instance_id=iid, users=[
        UserSpec(name="u3", password=PW2, databases=["db_missing"])]), "not_found")
    refused(agent, CreateUsersRequested(instance_id=iid, users=[UserSpec(name="u3", password="")]), "invalid")
    assert "u3" not in {u.name for u in all_users(agent)}

    # Paged users: (name, host) order, marker name@host.
    first = ok(agent, ListUsersRequested(instance_id=iid, limit=1), UsersListed)
    assert [u.name for u in first.users] == ["u1"] and first.next_marker == "u1@%"
    second = ok(agent, ListUsersRequested(instance_id=iid, limit=1, marker=first.next_marker), UsersListed)
    assert [(u.name, u.host, u.databases) for u in second.users] == [("u2", "%", [])]
    assert second.next_marker is None
    assert show(agent, "u1") == UserInfo(name="u1", host="%", databases=[DB1])

    create_table(agent, "u1", PW1, DB1, "t_u1")
    refused_for_db(agent, "u2", PW2, DB1)
    refused_for_db(agent, "u1", PW1, DB2)

    ok(agent, GrantAccessRequested(instance_id=iid, user=UserRef(name="u2"), databases=[DB1]))
    create_table(agent, "u2", PW2, DB1, "t_u2")
    assert show(agent, "u2").databases == [DB1]

    ok(agent, RevokeAccessRequested(instance_id=iid, user=UserRef(name="u2"), database=DB1))
    refused_for_db(agent, "u2", PW2, DB1)
    assert show(agent, "u2").databases == []
    refused(agent, RevokeAccessRequested(instance_id=iid, user=UserRef(name="u2"), database=DB1), "not_found")
    refused(agent, GrantAccessRequested(instance_id=iid, user=UserRef(name="u2"), databases=["db_missing"]), "not_found")
    refused(agent, GrantAccessRequested(instance_id=iid, user=UserRef(name="nobody"), databases=[DB1]), "not_found")
    refused(agent, ShowUserRequested(instance_id=iid, user=UserRef(name="nobody")), "not_found")
    assert show(agent, "u1").databases == [DB1]  # untouched by u2's revoke


def test_grant_on_a_name_with_wildcards_is_literal(agent: Agent) -> None:
    """MariaDB reads `_` in a grant's database as a wildcard; the agent escapes it."""
    iid = agent.instance_id
    ok(agent, CreateDatabasesRequested(instance_id=iid, databases=[DatabaseSpec(name="w_c"), DatabaseSpec(name="wXc")]))
    ok(agent, CreateUsersRequested(instance_id=iid, users=[UserSpec(name="w", password=PW2, databases=["w_c"])]))
    create_table(agent, "w", PW2, "w_c", "t")
    refused_for_db(agent, "w", PW2, "wXc")
    assert show(agent, "w").databases == ["w_c"]
    ok(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name="w")))
    for name in ("w_c", "wXc"):
        ok(agent, DeleteDatabaseRequested(instance_id=iid, name=name))


def test_change_passwords_and_rename(agent: Agent) -> None:
    iid = agent.instance_id
    # All or nothing: an unknown user in the batch changes nobody's password.
    refused(agent, ChangePasswordsRequested(instance_id=iid, users=[
        PasswordChange(name="u1", password=PW1_NEW), PasswordChange(name="nobody", password=PW1_NEW)]), "not_found")
    assert user_sql(agent, "u1", PW1, DB1, ["SELECT 1"]) == [(1,)]

    ok(agent, ChangePasswordsRequested(instance_id=iid, users=[PasswordChange(name="u1", password=PW1_NEW)]))
    bad_password(agent, "u1", PW1)
    assert user_sql(agent, "u1", PW1_NEW, DB1, ["SELECT 1"]) == [(1,)]

    refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1"), name="u2"), "exists")
    refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1"), name="root"), "invalid")
    refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="nobody"), name="x"), "not_found")
    # Renamed: the grants follow, and the password too (PostgreSQL: SCRAM is not salted
    # with the role name, unlike MD5, which a rename would clear).
    ok(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1"), name="u1b"))
    assert show(agent, "u1b").databases == [DB1]
    refused(agent, ShowUserRequested(instance_id=iid, user=UserRef(name="u1")), "not_found")
    assert user_sql(agent, "u1b", PW1_NEW, DB1, ["SELECT id FROM t_u1"]) == [(7,)]
    bad_password(agent, "u1", PW1_NEW)
    # A new password through update.
    ok(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b"), password=PW1))
    assert user_sql(agent, "u1b", PW1, DB1, ["SELECT 1"]) == [(1,)]
    if agent.datastore == "postgresql":
        refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b"), host="10.0.0.1"), "invalid")


def test_change_host(agent: Agent) -> None:
    iid = agent.instance_id
    if agent.datastore == "postgresql":
        # PostgreSQL roles have no host: a host change is refused, the role unchanged.
        refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b"), host="127.0.0.%"), "invalid")
        assert show(agent, "u1b").host == "%"
        return
    ok(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b"), host="127.0.0.%"))
    assert show(agent, "u1b", "127.0.0.%") == UserInfo(name="u1b", host="127.0.0.%", databases=[DB1])
    refused(agent, ShowUserRequested(instance_id=iid, user=UserRef(name="u1b", host="%")), "not_found")
    assert user_sql(agent, "u1b", PW1, DB1, ["SELECT 1"]) == [(1,)]  # we connect from 127.0.0.x
    # An account host that is not ours (never contacted): the server refuses us now.
    ok(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b", host="127.0.0.%"), host="192.0.2.1"))
    assert "Access denied" in connect_error(agent, "u1b", PW1, DB1)
    refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b", host="192.0.2.1"), host="a@b"), "invalid")
    ok(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b", host="192.0.2.1"), host="%"))
    assert user_sql(agent, "u1b", PW1, DB1, ["SELECT id FROM t_u1"]) == [(7,)]


def test_delete_user_and_database(agent: Agent) -> None:
    iid = agent.instance_id
    ok(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name="u2")))
    bad_password(agent, "u2", PW2)
    assert "u2" not in {u.name for u in all_users(agent)}
    refused(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name="u2")), "not_found")

    ok(agent, DeleteDatabaseRequested(instance_id=iid, name=DB2))
    assert DB2 not in admin_snapshot(agent)[0]
    assert [d.name for d in all_databases(agent)] == [DB1]
    refused(agent, DeleteDatabaseRequested(instance_id=iid, name=DB2), "not_found")


def test_root_enable_and_disable(agent: Agent) -> None:
    iid = agent.instance_id
    assert ok(agent, EnableRootRequested(instance_id=iid, password=ROOT_PW), RootEnabled).name == "root"
    if agent.datastore == "postgresql":
        rows = user_sql(agent, "root", ROOT_PW, None, [
            "CREATE ROLE troveless_probe", "DROP ROLE troveless_probe", "SHOW data_directory"])
        assert rows and str(agent.instance_dir) in rows[0][0]
    else:
        rows = user_sql(agent, "root", ROOT_PW, None, ["SELECT COUNT(*) FROM mysql.user WHERE User = 'u1b'"])
        assert rows == [(1,)]
    assert "root" not in {u.name for u in all_users(agent)}
    # Enabling again resets the password.
    ok(agent, EnableRootRequested(instance_id=iid, password=ROOT_PW + "2"), RootEnabled)
    bad_password(agent, "root", ROOT_PW)
    assert user_sql(agent, "root", ROOT_PW + "2", None, ["SELECT 1"]) == [(1,)]

    ok(agent, DisableRootRequested(instance_id=iid))
    message = connect_error(agent, "root", ROOT_PW + "2", None)
    assert "password authentication failed" in message or "Access denied" in message or "not permitted" in message
    # The agent still administers the server (root@localhost / os_admin untouched).
    assert [d.name for d in all_databases(agent)] == [DB1]
    # Root can be enabled again after a disable (PostgreSQL: LOGIN comes back), and disabled.
    ok(agent, EnableRootRequested(instance_id=iid, password=ROOT_PW), RootEnabled)
    assert user_sql(agent, "root", ROOT_PW, None, ["SELECT 1"]) == [(1,)]
    ok(agent, DisableRootRequested(instance_id=iid))
    ok(agent, DisableRootRequested(instance_id=iid))  # idempotent
    assert connect_error(agent, "root", ROOT_PW, None)
    refused(agent, ShowUserRequested(instance_id=iid, user=UserRef(name="root")), "invalid")


def test_hostile_names_are_refused_or_literal(agent: Agent) -> None:
    iid = agent.instance_id
    before = admin_snapshot(agent)
    outcomes = OUTCOMES.setdefault(agent.datastore, {})
    for name in HOSTILE:
        # As a database...
        response = call(agent, CreateDatabasesRequested(instance_id=iid, databases=[DatabaseSpec(name=name)]))
        if response.status_code == 200:
            assert name in [d.name for d in all_databases(agent)]
            assert name in admin_snapshot(agent)[0]
            # Granted literally (MariaDB: `%`, `_` and backticks in a grant's database).
            ok(agent, CreateUsersRequested(instance_id=iid, users=[
                UserSpec(name="hostile_probe", password=PW2, databases=[name])]))
            assert show(agent, "hostile_probe").databases == [name]
            # Dropping the database also drops the grants on it (MariaDB would keep them).
            ok(agent, DeleteDatabaseRequested(instance_id=iid, name=name))
            assert show(agent, "hostile_probe").databases == []
            ok(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name="hostile_probe")))
            outcomes.setdefault("database literal", []).append(name)
        else:
            assert response.status_code == 400 and response.json()["reason"] == "invalid", (name, response.text)
            outcomes.setdefault("database refused", []).append(name)
        # ...and as a user, with access to db1.
        response = call(agent, CreateUsersRequested(instance_id=iid, users=[
            UserSpec(name=name, password=PW2, databases=[DB1])]))
        if response.status_code == 200:
            assert (name, "%") in [(u.name, u.host) for u in all_users(agent)]
            assert show(agent, name) == UserInfo(name=name, host="%", databases=[DB1])
            ok(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name=name)))
            outcomes.setdefault("user literal", []).append(name)
        else:
            assert response.status_code == 400 and response.json()["reason"] == "invalid", (name, response.text)
            outcomes.setdefault("user refused", []).append(name)
    assert admin_snapshot(agent) == before
    refused_names = outcomes["database refused"]
    assert {"", "nul\0byte", "z" * 200} <= set(refused_names)
    assert {'a"; DROP DATABASE db1; --', "x' OR '1'='1", "n" * 63} <= set(outcomes["database literal"])
    print(f"\n{agent.datastore}: " + "; ".join(f"{k}: {[n[:20] for n in v]}" for k, v in outcomes.items()))


def test_reserved_names_are_refused(agent: Agent) -> None:
    iid = agent.instance_id
    before = admin_snapshot(agent)
    for name in RESERVED_DBS[agent.datastore]:
        refused(agent, CreateDatabasesRequested(instance_id=iid, databases=[DatabaseSpec(name=name)]), "invalid")
        refused(agent, DeleteDatabaseRequested(instance_id=iid, name=name), "invalid")
        refused(agent, GrantAccessRequested(instance_id=iid, user=UserRef(name="u1b"), databases=[name]), "invalid")
        refused(agent, RevokeAccessRequested(instance_id=iid, user=UserRef(name="u1b"), database=name), "invalid")
    for name in RESERVED_USERS[agent.datastore]:
        refused(agent, CreateUsersRequested(instance_id=iid, users=[UserSpec(name=name, password=PW2)]), "invalid")
        refused(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name=name)), "invalid")
        refused(agent, DeleteUserRequested(instance_id=iid, user=UserRef(name=name, host="localhost")), "invalid")
        refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name=name), password=PW2), "invalid")
        refused(agent, ChangePasswordsRequested(instance_id=iid, users=[PasswordChange(name=name, password=PW2)]), "invalid")
        refused(agent, GrantAccessRequested(instance_id=iid, user=UserRef(name=name), databases=[DB1]), "invalid")
    refused(agent, UpdateUserRequested(instance_id=iid, user=UserRef(name="u1b"), name="os_admin"), "invalid")
    assert admin_snapshot(agent) == before
    listed = {u.name for u in all_users(agent)}
    assert listed == {"u1b"}, listed


def test_wire_checks_for_account_commands(agent: Agent) -> None:
    iid = agent.instance_id
    listing = ListDatabasesRequested(instance_id=iid)
    assert agent.post(agent.message(listing, signed=False)).status_code == 401
    once = agent.message(listing)
    assert agent.post(once).status_code == 200
    assert agent.post(once).status_code == 401  # replay
    assert agent.send(ListDatabasesRequested(instance_id="inst-other")).status_code == 403
    forged = ListDatabasesRequested.model_construct(instance_id=iid, limit=0, marker=None)
    response = agent.send(forged)
    assert response.status_code == 400 and response.json()["reason"] == "invalid"


def test_commands_are_not_ready_while_an_operation_holds_the_server(agent: Agent) -> None:
    mark = agent.broker.mark()
    assert agent.send(RestartRequested(instance_id=agent.instance_id)).status_code == 202
    started = time.monotonic()
    refused(agent, ListUsersRequested(instance_id=agent.instance_id), "not_ready")
    assert time.monotonic() - started < 2.0  # answered at once, not after the restart
    # RESTARTING first: a periodic HEALTHY beat taken just before the restart may follow `mark`.
    item, _ = agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.RESTARTING, since=mark, timeout=30)
    agent.broker.wait_for(agent.source, lambda b: b.status == GuestStatus.HEALTHY,
                          since=agent.broker.received.index(item), timeout=60)
    deadline = time.monotonic() + 5  # the slot is released just after HEALTHY is reported
    while agent.send(ListUsersRequested(instance_id=agent.instance_id)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {u.name for u in all_users(agent)} == {"u1b"}


def test_no_password_reaches_a_log(agent: Agent) -> None:
    assert agent.terminate(timeout=60) == 0
    logs = [agent.log_path, *(agent.instance_dir / "logs").iterdir()]
    for path in logs:
        text = path.read_text(errors="replace")  # type: ignore[union-attr]
        for password in (PW1, PW1_NEW, PW2, ROOT_PW):
            assert password not in text, path
