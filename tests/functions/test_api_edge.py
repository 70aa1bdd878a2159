"""The HTTP edge every API function shares: Trove's version documents, fault envelope,
status codes, token auth and tenant isolation."""

from __future__ import annotations

from pathlib import Path

import pytest
from functions_framework import create_app

from functions.core.auth import TokenFile
from functions.runtime import reset_runtime
from infra.local.functions_host import Gateway, build_apps
from infra.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
PROBES = REPO / "tests" / "fixtures" / "api" / "probe_api.py"


@pytest.fixture
def tokens(tmp_path, monkeypatch, database_url):  # type: ignore[no-untyped-def]
    token_file = tmp_path / "tokens.json"
    store = TokenFile(token_file)
    monkeypatch.setenv("TROVELESS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("TROVELESS_DATABASE_URL", database_url)
    reset_runtime()
    yield {"p1": store.issue("p1", "u1", ("member",)), "p2": store.issue("p2", "u2", ("member",))}
    reset_runtime()


@pytest.fixture(scope="module")
def gateway():  # type: ignore[no-untyped-def]
    from werkzeug.test import Client

    spec = load_spec()
    return Client(Gateway(spec, build_apps(spec)))


def test_versions_documents_match_trove(gateway) -> None:  # type: ignore[no-untyped-def]
    expected_version = {
        "id": "v1.0",
        "status": "CURRENT",
        "updated": "2012-08-01T00:00:00Z",
        "links": [{"rel": "self", "href": "http://localhost/v1.0/"}],
    }
    r = gateway.get("/")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.get_json() == {"versions": [expected_version]}
    for path in ("/v1.0", "/v1.0/"):
        r = gateway.get(path)
        assert r.status_code == 200 and r.get_json() == {"version": expected_version}


def test_unknown_route_and_method_get_trove_faults(gateway) -> None:  # type: ignore[no-untyped-def]
    r = gateway.get("/v1.0/p1/nothing-here")
    assert r.status_code == 404
    assert r.get_json() == {"itemNotFound": {"code": 404, "message": "The resource could not be found: /v1.0/p1/nothing-here"}}
    r = gateway.delete("/")
    assert r.status_code == 405 and r.get_json()["badMethod"]["code"] == 405 and r.headers["Allow"] == "GET"


def test_token_auth_and_tenant_isolation(gateway, tokens) -> None:  # type: ignore[no-untyped-def]
    r = gateway.get("/v1.0/p1/flavors")
    assert r.status_code == 401 and r.get_json()["unauthorized"]["code"] == 401
    r = gateway.get("/v1.0/p1/flavors", headers={"X-Auth-Token": "not-a-token"})
    assert r.status_code == 401 and r.get_json() == {"unauthorized": {"code": 401, "message": "The token is not valid."}}
    r = gateway.get("/v1.0/p1/flavors", headers={"X-Auth-Token": tokens["p2"]})
    assert r.status_code == 403
    assert r.get_json() == {"forbidden": {"code": 403, "message": "User with tenant id p2 cannot access this resource."}}
    r = gateway.get("/v1.0/p1/flavors", headers={"X-Auth-Token": tokens["p1"]})
    assert r.status_code == 200 and r.get_json() == {"flavors": []}
    r = gateway.get("/v1.0/p1/flavors/42", headers={"X-Auth-Token": tokens["p1"]})
    assert r.status_code == 404
    assert r.get_json() == {"itemNotFound": {"code": 404, "message": "Resource Flavor 42 could not be found."}}


@pytest.fixture
def probes(tokens):  # type: ignore[no-untyped-def]
    create = create_app("create_probe", str(PROBES)).test_client()
    crash = create_app("crash_probe", str(PROBES)).test_client()
    return create, crash, {"X-Auth-Token": tokens["p1"]}


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "The request body is empty; a JSON object is required."),
        (b"{not json", "Malformed request body: Expecting property name enclosed in double quotes"),
        (b"[1, 2]", "Malformed request body: a JSON object is required."),
        (b"{}", "Malformed request body: missing 'probe' object."),
        (b'{"probe": 3}', "Malformed request body: missing 'probe' object."),
    ],
)
def test_bad_bodies_are_400_badrequest(probes, body, message) -> None:  # type: ignore[no-untyped-def]
    create, _, auth = probes
    r = create.post("/v1.0/p1/probes", data=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400
    fault = r.get_json()["badRequest"]
    assert fault["code"] == 400 and fault["message"].startswith(message)


def test_good_body_and_wrong_path_on_a_single_function(probes) -> None:  # type: ignore[no-untyped-def]
    create, _, auth = probes
    r = create.post("/v1.0/p1/probes", json={"probe": {"a": 1}}, headers=auth)
    assert r.status_code == 200 and r.get_json() == {"probe": {"a": 1}, "project": "p1"}
    r = create.get("/v1.0/p1/probes", headers=auth)
    assert r.status_code == 405 and "badMethod" in r.get_json()
    r = create.post("/elsewhere", json={}, headers=auth)
    assert r.status_code == 404 and "itemNotFound" in r.get_json()


def test_unexpected_error_is_an_instance_fault_without_internals(probes) -> None:  # type: ignore[no-untyped-def]
    _, crash, auth = probes
    r = crash.get("/v1.0/p1/probes/crash", headers=auth)
    assert r.status_code == 500
    message = r.get_json()["instanceFault"]["message"]
    assert message.startswith("Internal Server Error. Please keep this ID to help us figure out what went wrong: (")
    assert "internal detail" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
