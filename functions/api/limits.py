"""GET /v1.0/{project_id}/limits."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import limits, rate_limits
from functions.runtime import runtime


@functions_framework.http
@api("GET", "/v1.0/{project_id}/limits")
def list_limits(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        absolute = limits.absolute(s, req.project_id)
    # Rate limits count the caller's project (an administrator's own, in any project's URL).
    caller = req.identity.project_id if req.identity else req.project_id
    return 200, limits.view(absolute, rate_limits.view(caller))
