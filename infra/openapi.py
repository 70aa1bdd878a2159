"""The OpenAPI 3.1 document of the Troveless API, generated from what serves it.

Operations come from serverless.yaml (every HTTP function, its method and path); request
bodies from the pydantic models the handlers validate with (`@api(..., body=(root, Model))`,
so the document and the validation cannot drift apart); who may call what from the policy
table. Faults are Trove's envelope: one key naming the fault, with `code` and `message`.

Success bodies are described as what they are at the top level (a JSON object, or nothing
for a 202) and not field by field: Trove's views are documented in its API reference and
the clients parse them loosely. Routes whose handler reads the body itself (accounts,
actions) accept any JSON object here and check it in code; they answer 400 like the rest.

`troveless openapi` writes `functions/api/openapi.json`, which the `openapi_document`
function serves (a test keeps the committed file equal to a fresh generation).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from functions.api._http import FAULT_NAMES
from functions.core import policy
from infra.spec import Spec, load_spec

OUTPUT = Path(__file__).resolve().parents[1] / "functions" / "api" / "openapi.json"
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

FAULT = {
    "type": "object",
    "description": "Trove's fault envelope: exactly one key, the fault's name.",
    "minProperties": 1,
    "maxProperties": 1,
    "propertyNames": {"enum": sorted(set(FAULT_NAMES.values()))},
    "additionalProperties": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
    },
}


def _handler(spec: Spec, name: str) -> Any:
    source = spec.functions[name].source.removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(source), spec.functions[name].target)


def _fault_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Fault"}}}}


def build(spec: Spec | None = None) -> dict[str, Any]:
    spec = spec or load_spec()
    handlers = {name: _handler(spec, name) for name, fn in spec.functions.items() if fn.trigger.http}
    models: dict[str, type[BaseModel]] = {}
    for fn in handlers.values():
        if fn.request_body is not None:
            models[fn.request_body[1].__name__] = fn.request_body[1]
    _, defs = models_json_schema([(m, "validation") for m in models.values()],
                                 ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = {"Fault": FAULT, **defs.get("$defs", {})}

    paths: dict[str, dict[str, Any]] = {}
    for name, fn in sorted(handlers.items(), key=lambda item: (item[1].route[1], item[1].route[0])):
        method, path = fn.route
        operation: dict[str, Any] = {
            "operationId": name,
            "summary": (fn.__doc__ or name.replace("_", " ")).strip().splitlines()[0],
            "tags": [_tag(path)],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                for p in _PARAM.findall(path)
            ],
            "responses": {
                "2XX": {"description": "Success: a JSON object as Trove's view, or no body (202)."},
                "4XX": _fault_response("Trove's fault: badRequest, unauthorized, forbidden, itemNotFound, "
                                       "badMethod, conflict, overLimit, unprocessableEntity."),
                "501": _fault_response("notImplemented: a feature Troveless does not offer."),
                "503": _fault_response("serviceUnavailable: a dependency did not answer."),
            },
        }
        rule = policy.rule_for(name)
        operation["x-policy"] = rule.value
        if rule == policy.Rule.PUBLIC:
            operation["security"] = []
        if method in ("POST", "PUT", "PATCH"):
            if fn.request_body is not None:
                root, model = fn.request_body
                body_schema = {"type": "object", "required": [root],
                               "properties": {root: {"$ref": f"#/components/schemas/{model.__name__}"}}}
                required = True
            else:
                body_schema = {"type": "object"}
                required = method != "POST" or not name.endswith("_root")
            operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": body_schema}}}
        paths.setdefault(path, {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Troveless",
            "version": "1.0",
            "description": "OpenStack Trove's Database API v1.0 (python-troveclient works unchanged), with "
                           "Troveless' additions: backup schedules, the mgmt catalog. Generated by infra/openapi.py.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}},
        },
        "security": [{"token": []}],
    }


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{") and p != "v1.0"]
    if not parts:
        return "versions"
    if parts[0] == "mgmt":
        return "mgmt"
    return parts[0]


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def write(path: Path = OUTPUT) -> Path:
    path.write_text(render(build()), encoding="utf-8")
    return path
