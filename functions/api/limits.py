"""GET /v1.0/{project_id}/limits."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import limits
from functions.runtime import runtime


@functions_framework.http
@api("GET", "/v1.0/{project_id}/limits")
def list_limits(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        return 200, limits.view(limits.absolute(s, req.project_id))
