"""/v1.0/{project_id}/instances/{instance_id}/root and the mgmt root history."""

from __future__ import annotations

import functions_framework

from functions.api import _guest
from functions.api._http import ApiRequest, api, json_response
from functions.core import accounts, instances
from functions.core.errors import Forbidden
from functions.runtime import runtime

BASE = "/v1.0/{project_id}/instances/{instance_id}/root"


@functions_framework.http
@api("GET", BASE)
def show_root(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        instances.get_row(s, req.project_id, req.params["instance_id"], with_fault=False)
        return 200, {"rootEnabled": accounts.root_enabled(s, req.params["instance_id"])}


@functions_framework.http
@api("POST", BASE)
def enable_root(req: ApiRequest):  # type: ignore[no-untyped-def]
    password = accounts.root_password(_guest.optional_body(req))
    t = _guest.target(req)
    name = accounts.enable_root(runtime().guest, t, password)
    with runtime().transaction() as s:
        accounts.record_root_enabled(s, t.instance_id, req.identity.user_id if req.identity else "unknown")
    return 200, {"user": {"name": name, "password": password}}


@functions_framework.http
@api("DELETE", BASE)
def disable_root(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        instances.get_row(s, req.project_id, req.params["instance_id"], with_fault=False)
        accounts.require_root_history(s, req.params["instance_id"])
    t = _guest.target(req)
    accounts.disable_root(runtime().guest, t)
    with runtime().transaction() as s:
        accounts.record_root_disabled(s, t.instance_id)
    return json_response(204)


@functions_framework.http
@api("GET", "/v1.0/{project_id}/mgmt/instances/{instance_id}/root")
def show_root_history(req: ApiRequest):  # type: ignore[no-untyped-def]
    if not (req.identity and req.identity.is_admin):
        raise Forbidden("Admin role required.")
    with runtime().transaction() as s:
        instances.get_any(s, req.params["instance_id"])
        return 200, accounts.root_history(s, req.params["instance_id"])
