"""KeystoneAuthenticator against a real Keystone (tests/keystone/server.py): validation,
the token cache, the service token's renewal, and the API's 401/403/503 with it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from functions.core import errors, migrate
from functions.core.auth import Identity, TokenFile
from functions.drivers.keystone_auth import KeystoneAuthenticator
from functions.runtime import reset_runtime, runtime
from functions.settings import KeystoneSettings, Settings
from infra.local.functions_host import Gateway, build_apps
from infra.spec import load_spec
from tests.keystone.server import KeystoneServer


class Clock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Recorded:
    """An httpx client that counts the requests it sends to Keystone."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.client = httpx.Client(timeout=10, event_hooks={"request": [self._record]})

    def _record(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path))

    def count(self, method: str) -> int:
        return sum(1 for m, path in self.requests if m == method and path.endswith("/v3/auth/tokens"))


def service_settings(keystone: KeystoneServer, **overrides: Any) -> KeystoneSettings:
    values: dict[str, Any] = {"url": keystone.auth_url, "username": "troveless",
                              "password": keystone.passwords["troveless"], "cache_ttl_s": 60.0}
    return KeystoneSettings(**{**values, **overrides})


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    r = Recorded()
    yield r
    r.client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(keystone: KeystoneServer, recorded: Recorded, clock: Clock) -> KeystoneAuthenticator:
    return KeystoneAuthenticator(service_settings(keystone), client=recorded.client, clock=clock)


def test_a_user_token_gives_its_project_user_and_roles(keystone: KeystoneServer, auth: KeystoneAuthenticator) -> None:
    assert auth.authenticate(keystone.user_token("alice", "demo")) == Identity(
        project_id=keystone.ids["demo"], user_id=keystone.ids["alice"], roles=("member",))
    admin_token, body = keystone.password_token("admin", keystone.admin_password, "admin")
    admin = auth.authenticate(admin_token)
    assert admin is not None and admin.is_admin and admin.roles == ("admin", "member")
    assert admin.project_id == body["project"]["id"]
    assert auth.authenticate("not-a-token") is None


def test_a_cached_token_does_not_call_keystone_again_until_the_ttl(
    keystone: KeystoneServer, auth: KeystoneAuthenticator, recorded: Recorded, clock: Clock
) -> None:
    token = keystone.user_token()
    first = auth.authenticate(token)
    assert recorded.count("POST") == 1 and recorded.count("GET") == 1  # the service token, one validation
    for _ in range(50):
        assert auth.authenticate(token) == first
    assert auth.authenticate("garbage") is None and auth.authenticate("garbage") is None  # invalid: cached too
    assert recorded.count("GET") == 2 and recorded.count("POST") == 1

    # Revoked in Keystone: still accepted from the cache, refused once the TTL has passed.
    keystone.revoke(token)
    assert auth.authenticate(token) == first
    clock.offset += 61
    assert auth.authenticate(token) is None
    assert recorded.count("GET") == 3


def test_the_cache_entry_ends_with_the_tokens_expiry(keystone: KeystoneServer, auth: KeystoneAuthenticator,
                                                    recorded: Recorded) -> None:
    token, expires = keystone.short_lived_token("alice", "demo", seconds=3)
    assert auth.authenticate(token) is not None
    assert auth.authenticate(token) is not None and recorded.count("GET") == 1
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    assert auth.authenticate(token) is None  # cache TTL 60 s, but the token expired: asked again
    assert recorded.count("GET") == 2


def test_the_service_token_is_renewed_when_keystone_refuses_it(
    keystone: KeystoneServer, auth: KeystoneAuthenticator, recorded: Recorded
) -> None:
    assert auth.authenticate(keystone.user_token()) is not None
    service_token = auth._service_token
    assert service_token is not None
    keystone.revoke(service_token)
    identity = auth.authenticate(keystone.user_token())
    assert identity is not None and identity.project_id == keystone.ids["demo"]
    assert auth._service_token not in (None, service_token)
    # One GET refused with 401, a new service token, the same GET again.
    assert [m for m, _ in recorded.requests] == ["POST", "GET", "GET", "POST", "GET"]
    # Other threads that saw the old token refused take the new one: no second renewal.
    assert auth._get_service_token(refused=service_token) == auth._service_token
    assert recorded.count("POST") == 2


def test_the_service_token_is_renewed_shortly_before_it_expires(
    keystone: KeystoneServer, auth: KeystoneAuthenticator, recorded: Recorded, clock: Clock
) -> None:
    auth.authenticate(keystone.user_token())
    first = auth._service_token
    clock.offset += 3600 - 60  # Keystone's tokens last an hour here; renewed 30 s before the end
    auth.authenticate(keystone.user_token())
    assert recorded.count("POST") == 1
    clock.offset += 31
    auth.authenticate(keystone.user_token())
    assert recorded.count("POST") == 2 and auth._service_token != first


def test_refused_service_credentials_are_a_503_and_the_password_is_never_logged(
    keystone: KeystoneServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = KeystoneAuthenticator(service_settings(keystone, password="wrong-password-xyz"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.ServiceUnavailable):
        wrong.authenticate(keystone.user_token())
    assert "troveless" in caplog.text and "wrong-password-xyz" not in caplog.text
    assert "wrong-password-xyz" not in repr(wrong.settings)


def test_an_unscoped_token_is_refused_with_a_reason(keystone: KeystoneServer, auth: KeystoneAuthenticator) -> None:
    r = httpx.post(f"{keystone.auth_url}/auth/tokens", json={"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": "alice", "password": keystone.passwords["alice"], "domain": {"name": "Default"}}}}}})
    assert r.status_code == 201 and "project" not in r.json()["token"]
    with pytest.raises(errors.Unauthorized, match="not scoped to a project"):
        auth.authenticate(r.headers["X-Subject-Token"])


def test_the_cache_is_bounded(keystone: KeystoneServer, recorded: Recorded) -> None:
    small = KeystoneAuthenticator(service_settings(keystone), client=recorded.client, cache_size=2)
    tokens = [keystone.user_token() for _ in range(3)]
    for token in tokens:
        small.authenticate(token)
    assert len(small.cache) == 2
    small.authenticate(tokens[0])  # the least recently used went first
    assert recorded.count("GET") == 4


# ---- settings and the API -------------------------------------------------------------------


def test_settings_choose_the_authenticator(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("TROVELESS_AUTH", "TROVELESS_KEYSTONE_URL", "TROVELESS_KEYSTONE_USERNAME",
                 "TROVELESS_KEYSTONE_PASSWORD", "TROVELESS_KEYSTONE_CACHE_TTL", "TROVELESS_KEYSTONE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TROVELESS_DATA_DIR", str(tmp_path))
    assert Settings.from_env().auth == "tokenfile" and Settings.from_env().keystone is None
    monkeypatch.setenv("TROVELESS_AUTH", "keystone")
    with pytest.raises(ValueError, match="TROVELESS_KEYSTONE_URL, TROVELESS_KEYSTONE_USERNAME, TROVELESS_KEYSTONE_PASSWORD"):
        Settings.from_env()
    monkeypatch.setenv("TROVELESS_KEYSTONE_URL", "http://127.0.0.1:1/v3")
    monkeypatch.setenv("TROVELESS_KEYSTONE_USERNAME", "troveless")
    monkeypatch.setenv("TROVELESS_KEYSTONE_PASSWORD", "s3cret-pw")
    settings = Settings.from_env()
    assert settings.keystone is not None and settings.keystone.project == "service"
    assert settings.keystone.user_domain == settings.keystone.project_domain == "Default"
    assert settings.keystone.cache_ttl_s == 60 and "s3cret-pw" not in repr(settings)
    reset_runtime()
    try:
        authenticator = runtime().authenticator
        assert isinstance(authenticator, KeystoneAuthenticator)
        assert authenticator.base_url == "http://127.0.0.1:1"
        monkeypatch.setenv("TROVELESS_AUTH", "tokenfile")
        reset_runtime()
        assert isinstance(runtime().authenticator, TokenFile)
        monkeypatch.setenv("TROVELESS_AUTH", "ldap")
        with pytest.raises(ValueError, match="TROVELESS_AUTH"):
            Settings.from_env()
    finally:
        reset_runtime()


@pytest.fixture(scope="module")
def gateway() -> Client:
    spec = load_spec()
    return Client(Gateway(spec, build_apps(spec)))


@pytest.fixture
def keystone_api(keystone: KeystoneServer, monkeypatch: pytest.MonkeyPatch, tmp_path):  # type: ignore[no-untyped-def]
    """The runtime configured for Keystone auth on a fresh SQLite database."""
    url = f"sqlite:///{tmp_path / 'troveless.db'}"
    migrate.upgrade(url)
    monkeypatch.setenv("TROVELESS_DATABASE_URL", url)
    monkeypatch.delenv("TROVELESS_BROKER_URL", raising=False)
    monkeypatch.delenv("K_SINK", raising=False)
    for name, value in keystone.service_env().items():
        monkeypatch.setenv(name, value)
    reset_runtime()
    yield monkeypatch
    reset_runtime()


def test_the_api_answers_401_403_and_200_with_keystone_tokens(keystone: KeystoneServer, gateway: Client,
                                                              keystone_api) -> None:  # type: ignore[no-untyped-def]
    token = keystone.user_token()
    demo, other = keystone.ids["demo"], keystone.ids["other"]
    r = gateway.get(f"/v1.0/{demo}/flavors", headers={"X-Auth-Token": token})
    assert r.status_code == 200, r.get_data(as_text=True)
    r = gateway.get(f"/v1.0/{other}/instances", headers={"X-Auth-Token": token})
    assert r.status_code == 403 and r.get_json()["forbidden"]["code"] == 403
    r = gateway.get(f"/v1.0/{demo}/instances", headers={"X-Auth-Token": "nonsense"})
    assert r.status_code == 401 and r.get_json()["unauthorized"]["code"] == 401


def test_an_unreachable_keystone_is_a_503_fault(keystone: KeystoneServer, gateway: Client,
                                                keystone_api) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    keystone_api.setenv("TROVELESS_KEYSTONE_URL", f"http://127.0.0.1:{dead}/v3")
    reset_runtime()
    r = gateway.get(f"/v1.0/{keystone.ids['demo']}/instances", headers={"X-Auth-Token": keystone.user_token()})
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.get_json() == {"serviceUnavailable": {
        "code": 503, "message": "The identity service is unavailable; try again later."}}
