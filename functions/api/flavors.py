"""GET /v1.0/{project_id}/flavors[/{flavor_id}]."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import flavors
from functions.runtime import runtime


@functions_framework.http
@api("GET", "/v1.0/{project_id}/flavors")
def list_flavors(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        rows = flavors.list_flavors(session)
        return 200, {"flavors": [flavors.view(f, req.host_url, req.project_id) for f in rows]}


@functions_framework.http
@api("GET", "/v1.0/{project_id}/flavors/{flavor_id}")
def show_flavor(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        flavor = flavors.get_flavor(session, req.params["flavor_id"])
        return 200, {"flavor": flavors.view(flavor, req.host_url, req.project_id)}
