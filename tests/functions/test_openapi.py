"""The OpenAPI document: generated from serverless.yaml and the request models, served at
/openapi.json with a browsable /docs page, and held to by the API under property-based
fuzzing (schemathesis: >= 2,000 requests, no server error, no response the document does not
allow)."""

from __future__ import annotations

import json
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from infra import openapi
from infra.spec import load_spec



def no_server_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    """schemathesis' not_a_server_error, except the two 5xx Trove answers on purpose and the
    document lists: 501 notImplemented (a feature Troveless does not offer, e.g. replicas)
    and 503 serviceUnavailable (a dependency is down). A 500 or any other 5xx fails."""
    if response.status_code >= 500 and response.status_code not in (501, 503):
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


CHECKS = [no_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
MIN_REQUESTS = 2000


def test_the_committed_document_is_current() -> None:
    committed = openapi.OUTPUT.read_text(encoding="utf-8")
    assert committed == openapi.render(openapi.build()), "run `troveless openapi` and commit functions/api/openapi.json"


def test_every_http_function_is_an_operation() -> None:
    doc = openapi.build()
    operations = {op["operationId"]: (method.upper(), path)
                  for path, methods in doc["paths"].items() for method, op in methods.items()}
    spec = load_spec()
    expected = {name: (fn.trigger.http.method, fn.trigger.http.path) for name, fn in spec.functions.items() if fn.trigger.http}
    assert operations == expected
    create = doc["paths"]["/v1.0/{project_id}/instances"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["properties"]["instance"] == {
        "$ref": "#/components/schemas/InstanceCreate"}
    assert "flavorRef" in doc["components"]["schemas"]["InstanceCreate"]["properties"]
    assert doc["paths"]["/"]["get"]["security"] == []


def test_served_document_and_docs_page(api, gateway) -> None:  # type: ignore[no-untyped-def]
    r = gateway.get("/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.get_json() == json.loads(openapi.OUTPUT.read_text())
    page = gateway.get("/docs")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.get_data(as_text=True)
    assert "/v1.0/{project_id}/instances" in text and "InstanceCreate" in text and "<script" not in text


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_fuzzing_finds_no_server_error_and_no_undocumented_response(api, gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from functions.core.auth import TokenFile
    from functions.runtime import reset_runtime, runtime

    # Thousands of requests a minute from one project: rate limits would turn most into 413s.
    for verb in ("GET", "POST", "PUT", "DELETE", "MGMT_POST"):
        monkeypatch.setenv(f"TROVELESS_HTTP_{verb}_RATE", "-1")
    reset_runtime()

    # An administrator of p1 reaches every route, mgmt included; requests stay in p1.
    token = TokenFile(runtime().settings.token_file).issue("p1", "fuzzer", ("admin", "member"))
    schema = schemathesis.openapi.from_wsgi("/openapi.json", gateway.application)
    operations = [result.ok() for result in schema.get_all_operations()]
    sent: dict[str, int] = {}
    per_mode = MIN_REQUESTS // len(operations) // 2 + 4

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(max_examples=per_mode, deadline=None, derandomize=True, database=None,
                                 phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                if "project_id" in (case.path_parameters or {}):
                    case.path_parameters["project_id"] = "p1"
                response = case.call(headers={"X-Auth-Token": token})
                sent[case.operation.label] = sent.get(case.operation.label, 0) + 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid (an operation without parameters or body).
                assert mode == GenerationMode.NEGATIVE, operation.label
    total = sum(sent.values())
    print(f"schemathesis: {total} requests over {len(sent)} operations")
    assert total >= MIN_REQUESTS, sent
    assert len(sent) == len(operations)
