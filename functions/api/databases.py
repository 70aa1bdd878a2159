"""/v1.0/{project_id}/instances/{instance_id}/databases: one function per verb."""

from __future__ import annotations

import functions_framework

from functions.api import _guest
from functions.api._http import ApiRequest, api
from functions.core import accounts
from functions.core.errors import NotImplementedFeature
from functions.runtime import runtime

BASE = "/v1.0/{project_id}/instances/{instance_id}/databases"


@functions_framework.http
@api("GET", BASE)
def list_databases(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    items, marker = accounts.list_databases(runtime().guest, t, req.query.get("limit"), req.query.get("marker"))
    return _guest.paged(req, "databases", items, marker)


@functions_framework.http
@api("POST", BASE)
def create_databases(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.create_databases(runtime().guest, t, accounts.parse_databases(t.kind, req.json()))
    return 202, None


@functions_framework.http
@api("GET", BASE + "/{database}")
def show_database(req: ApiRequest):  # type: ignore[no-untyped-def]
    raise NotImplementedFeature("Showing a single database is not supported (as in Trove): list them instead.")


@functions_framework.http
@api("DELETE", BASE + "/{database}")
def delete_database(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.delete_database(runtime().guest, t, req.params["database"])
    return 202, None
