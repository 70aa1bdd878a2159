"""Fixtures shared by the API tests: the real gateway over every http function of
serverless.yaml, and an authenticated client for two projects on a fresh shared database."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from functions.core import catalog
from functions.core.auth import TokenFile
from functions.runtime import reset_runtime, runtime
from infra.local.functions_host import Gateway, build_apps
from infra.spec import load_spec
from tests.functions.test_instances_api import INSTALLED


@pytest.fixture(scope="module")
def gateway() -> Client:
    spec = load_spec()
    return Client(Gateway(spec, build_apps(spec)))


@pytest.fixture
def api(gateway, tmp_path, monkeypatch, database_url):  # type: ignore[no-untyped-def]
    token_file = tmp_path / "tokens.json"
    store = TokenFile(token_file)
    monkeypatch.setenv("TROVELESS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("TROVELESS_DATABASE_URL", database_url)
    monkeypatch.delenv("TROVELESS_BROKER_URL", raising=False)
    monkeypatch.delenv("K_SINK", raising=False)
    reset_runtime()
    with runtime().transaction() as s:
        catalog.seed(s, INSTALLED)
    tokens = {"p1": store.issue("p1", "u1", ("member",)), "p2": store.issue("p2", "u2", ("member",)),
              "admin": store.issue("p1", "ops", ("admin", "member"))}

    class Api:
        def __call__(self, method: str, path: str, project: str = "p1", token: str | None = None, **kw):  # type: ignore[no-untyped-def]
            headers = {"X-Auth-Token": tokens[token or project], **kw.pop("headers", {})}
            return gateway.open(f"/v1.0/{project}{path}", method=method, headers=headers, **kw)

    yield Api()
    reset_runtime()


