"""Account commands without a database server: paging, quoting, validation, HTTP mapping."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from events.envelope import decode_http, encode_binary
from events.guest import (
    CommandCompleted,
    CreateDatabasesRequested,
    CreateUsersRequested,
    DatabaseInfo,
    DatabaseSpec,
    DatabasesListed,
    DeleteDatabaseRequested,
    EnableRootRequested,
    ListDatabasesRequested,
    RootEnabled,
    ShowUserRequested,
    UserRef,
    UserSpec,
    control_source,
    instance_key,
)
from events.registry import parse
from events.replay import SequenceCounter, format_sequence
from events.signing import Keyring, sign, verify
from guest_agent.datastores import REGISTRY
from guest_agent.datastores.base import (
    AlreadyExists,
    DatastoreError,
    InvalidRequest,
    NotFound,
    NotReady,
    check_password,
    check_text,
    paginate,
    split_user_marker,
)
from guest_agent.datastores.mariadb import _for_format, grant_pattern, quote_ident, quote_pattern, unescape_pattern
from guest_agent.heartbeat import EventFactory
from guest_agent.process import Redactor, resolve_db_user
from guest_agent.server import CommandApp
from guest_agent.state import StateStore
from guest_agent.supervisor import Supervisor

from .test_units import SECRET, _settings

COUNTER = SequenceCounter()


def test_paging_is_exclusive_and_the_marker_is_the_last_item() -> None:
    names = ["d", "b", "a", "c"]
    key = lambda n: n  # noqa: E731
    assert paginate(names, key, 2, None) == (["a", "b"], "b")
    assert paginate(names, key, 2, "b") == (["c", "d"], None)  # exactly the rest: no marker
    assert paginate(names, key, 3, None) == (["a", "b", "c"], "c")
    assert paginate(names, key, 4, None) == (["a", "b", "c", "d"], None)
    assert paginate(names, key, 1, "bb") == (["c"], "c")  # a marker that is not an item
    assert paginate(names, key, 5, "d") == ([], None)
    assert paginate([], key, 1, None) == ([], None)
    # Following the chain with limit 1 visits every item once.
    seen, marker = [], None
    while True:
        page, marker = paginate(names, key, 1, marker)
        seen += page
        if marker is None:
            break
    assert seen == sorted(names)


def test_user_markers_are_name_at_host() -> None:
    assert split_user_marker("bob@%") == ("bob", "%")
    assert split_user_marker("a@b@10.0.0.%") == ("a@b", "10.0.0.%")  # names may hold '@'
    assert split_user_marker("bob") == ("bob", "")  # before every host of bob
    accounts = [("bob", "%"), ("bob", "10.%"), ("a@b", "%"), ("carol", "%")]
    page, last = paginate(accounts, lambda a: a, 2, split_user_marker("a@b@%"))
    assert page == [("bob", "%"), ("bob", "10.%")] and last == ("bob", "10.%")
    page, last = paginate(accounts, lambda a: a, 2, split_user_marker("bob"))
    assert page == [("bob", "%"), ("bob", "10.%")]


def test_mariadb_grant_patterns_and_quoting() -> None:
    assert grant_pattern("my_db%x") == "my\\_db\\%x"
    for name in ["my_db", "100%", "plain", "_%_", "a`b"]:
        assert unescape_pattern(grant_pattern(name)) == name
    assert unescape_pattern("my\\_db") == "my_db"
    assert unescape_pattern("app_%") == "app_%"  # a real wildcard stays one
    assert quote_pattern(grant_pattern("a`b_c")) == "`a``b\\_c`"
    assert _for_format(quote_pattern(grant_pattern("50%"))) == "`50\\%%`"
    quote_pattern(grant_pattern("x" * 64))
    with pytest.raises(InvalidRequest, match="64"):
        quote_pattern(grant_pattern("_" * 40))  # 80 characters once escaped
    assert quote_ident("x'; DROP DATABASE y; --") == "`x'; DROP DATABASE y; --`"
    for bad in ["naïve-🙂", "a\ud800", "", "x" * 65, "tab\there"]:
        with pytest.raises(InvalidRequest):
            quote_ident(bad)


def test_text_checks() -> None:
    assert check_text("name", "naïve-数据库-🙂", max_bytes=63) == "naïve-数据库-🙂"
    for bad in ["", "a\0b", "lone \ud800 surrogate", 42, None]:
        with pytest.raises(InvalidRequest):
            check_text("name", bad)
    with pytest.raises(InvalidRequest, match="63 bytes"):
        check_text("name", "é" * 32, max_bytes=63)  # 32 characters, 64 bytes
    with pytest.raises(InvalidRequest, match="80 characters"):
        check_text("name", "x" * 81, 80)
    for bad in ["", "a\0", "\udfff"]:
        with pytest.raises(InvalidRequest):
            check_password(bad)


@pytest.fixture(params=["postgresql", "mariadb"])
def datastore(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path, request.param)
    return REGISTRY[request.param](settings, resolve_db_user(request.param, None), Redactor())


def test_bad_and_reserved_names_are_refused_before_any_connection(datastore) -> None:  # type: ignore[no-untyped-def]
    """No server runs here: every one of these must be refused by validation alone."""
    ds = datastore
    reserved_db = "postgres" if ds.name == "postgresql" else "mysql"
    bad_databases = ["", "nul\0", "x" * 200, "a\ud800", reserved_db, reserved_db.upper()]
    if ds.name == "mariadb":
        bad_databases += ["emoji🙂", "trailing ", "back\\slash", "m" * 65]
    else:
        bad_databases += ["m" * 64, "é" * 32]
    for name in bad_databases:
        with pytest.raises(InvalidRequest):
            ds.create_databases([DatabaseSpec(name=name)])
        with pytest.raises(InvalidRequest):
            ds.delete_database(name)
    with pytest.raises(InvalidRequest, match="more than once"):
        ds.create_databases([DatabaseSpec(name="a"), DatabaseSpec(name="a")])
    with pytest.raises(InvalidRequest):
        ds.create_databases([])
    bad_users = ["", "nul\0", "x" * 200, "root", "os_admin", "ROOT"]
    bad_users += ["pg_signal_backend", "postgres"] if ds.name == "postgresql" else ["mariadb.sys", "emoji🙂", "trailing "]
    for name in bad_users:
        with pytest.raises(InvalidRequest):
            ds.create_users([UserSpec(name=name, password="pw")])
        with pytest.raises(InvalidRequest):
            ds.delete_user(UserRef(name=name))
        with pytest.raises(InvalidRequest):
            ds.get_user(name, None)
    with pytest.raises(InvalidRequest):
        ds.create_users([UserSpec(name="u", password="")])
    with pytest.raises(InvalidRequest):
        ds.create_users([UserSpec(name="u", password="pw", databases=[reserved_db])])
    with pytest.raises(InvalidRequest):
        ds.grant_access(UserRef(name="u"), [])
    with pytest.raises(InvalidRequest):
        ds.update_user(UserRef(name="u"), "root", None, None)
    if ds.name == "mariadb":
        with pytest.raises(InvalidRequest, match="'@'"):
            ds.create_users([UserSpec(name="u", password="pw", host="a@b")])
    else:
        with pytest.raises(InvalidRequest, match="no host"):
            ds.update_user(UserRef(name="u"), None, None, "10.0.0.1")


def test_sql_access_is_refused_at_once_unless_the_server_runs_idle(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.instance_dir.mkdir(parents=True)
    ds = REGISTRY["postgresql"](settings, resolve_db_user("postgresql", None), Redactor())
    store = StateStore(settings.state_file, settings.instance_id, settings.datastore)
    supervisor = Supervisor(settings, ds, store)
    with pytest.raises(NotReady, match="not prepared"):
        with supervisor.sql_access():
            pass
    store.update(prepared=True)
    with pytest.raises(NotReady, match="not running"):
        with supervisor.sql_access():
            pass
    supervisor._proc = subprocess.Popen(["sleep", "30"])  # stands in for the server
    try:
        with supervisor.sql_access() as got:
            assert got is ds
            # An operation may take the slot meanwhile; it then waits for us (bounded).
            assert supervisor._claim("restart")
            with pytest.raises(NotReady, match="restart"):
                with supervisor.sql_access():
                    pass
            waited = threading.Thread(target=supervisor._wait_sql_idle, args=(5.0,))
            started = time.monotonic()
            waited.start()
            time.sleep(0.2)
            assert waited.is_alive()
        waited.join(5)
        assert not waited.is_alive() and time.monotonic() - started < 2
    finally:
        supervisor._proc.kill()
        supervisor._proc.wait()


class FakeSupervisor:
    """Hands out a fake datastore, or refuses like a busy supervisor."""

    def __init__(self, ds: Any, refuse: str | None = None) -> None:
        self.ds, self.refuse = ds, refuse

    @contextmanager
    def sql_access(self) -> Iterator[Any]:
        if self.refuse:
            raise NotReady(self.refuse)
        yield self.ds


class FakeDatastore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def list_databases(self, limit: int, marker: str | None) -> tuple[list[DatabaseInfo], str | None]:
        self.calls.append(("list", (limit, marker)))
        return [DatabaseInfo(name="db1", character_set="UTF8", collate="C")], "db1"

    def create_databases(self, specs: list[DatabaseSpec]) -> None:
        name = specs[0].name
        raise {"dup": AlreadyExists, "bad": InvalidRequest, "boom": DatastoreError}.get(name, NotReady)(f"no: {name}")

    def delete_database(self, name: str) -> None:
        self.calls.append(("delete", name))

    def get_user(self, name: str, host: str | None) -> Any:
        raise NotFound(f"user {name!r} does not exist")

    def enable_root(self, password: str) -> str:
        return "root"


def _post(client: Client, event: Any, instance_id: str = "inst-1") -> Any:
    msg = event.to_message(
        control_source(instance_id), subject=instance_id,
        extensions={"partitionkey": instance_id, "sequence": format_sequence(COUNTER.next())},
    )
    headers, body = encode_binary(sign(msg, instance_key(instance_id, SECRET)))
    return client.post("/commands", data=body, headers=headers)


def test_account_commands_map_to_replies_and_reasons(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ds = FakeDatastore()
    app = CommandApp(settings, SECRET, FakeSupervisor(ds), EventFactory(settings, SECRET))  # type: ignore[arg-type]
    client = Client(app)
    keyring = Keyring([instance_key("inst-1", SECRET)])

    def reply(response: Any) -> Any:
        assert response.status_code == 200, response.get_data(as_text=True)
        message = decode_http(dict(response.headers), response.get_data())
        verify(message, keyring)
        assert message.source == "/troveless/guest/inst-1"
        return parse(message)

    listed = reply(_post(client, ListDatabasesRequested(instance_id="inst-1", limit=5, marker="a")))
    assert isinstance(listed, DatabasesListed) and listed.next_marker == "db1" and ("list", (5, "a")) in ds.calls
    done = reply(_post(client, DeleteDatabaseRequested(instance_id="inst-1", name="x")))
    assert isinstance(done, CommandCompleted) and done.command == DeleteDatabaseRequested.TYPE
    root = reply(_post(client, EnableRootRequested(instance_id="inst-1", password="s3cret-root-pass")))
    assert isinstance(root, RootEnabled) and root.name == "root"

    for name, status, reason in [("dup", 409, "exists"), ("bad", 400, "invalid"), ("later", 503, "not_ready")]:
        response = _post(client, CreateDatabasesRequested(instance_id="inst-1", databases=[DatabaseSpec(name=name)]))
        assert response.status_code == status and response.json == {"error": f"no: {name}", "reason": reason}
    response = _post(client, ShowUserRequested(instance_id="inst-1", user=UserRef(name="u")))
    assert response.status_code == 404 and response.json["reason"] == "not_found"
    boom = _post(client, CreateDatabasesRequested(instance_id="inst-1", databases=[DatabaseSpec(name="boom")]))
    assert boom.status_code == 500 and "boom" in boom.json["error"]
    # Bad input the contract's own validation refuses: 400 invalid, never 500.
    forged = ListDatabasesRequested.model_construct(instance_id="inst-1", limit=1000, marker=None)
    response = _post(client, forged)
    assert response.status_code == 400 and response.json["reason"] == "invalid"
    assert _post(client, ListDatabasesRequested(instance_id="inst-other"), "inst-1").status_code == 403

    busy = CommandApp(settings, SECRET, FakeSupervisor(ds, "operation 'restart' is in progress"),  # type: ignore[arg-type]
                      EventFactory(settings, SECRET))
    response = _post(Client(busy), CreateUsersRequested(instance_id="inst-1", users=[UserSpec(name="u", password="pw")]))
    assert response.status_code == 503 and response.json["reason"] == "not_ready"
    assert "restart" in response.json["error"]
