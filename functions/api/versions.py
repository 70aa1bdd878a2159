"""GET / and GET /v1.0/: the version documents (no authentication, as Trove)."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import versions


@functions_framework.http
@api("GET", "/", auth=False)
def versions_index(req: ApiRequest):  # type: ignore[no-untyped-def]
    return 200, versions.index(req.host_url)


@functions_framework.http
@api("GET", "/v1.0/", auth=False)
def versions_show(req: ApiRequest):  # type: ignore[no-untyped-def]
    return 200, versions.show(req.host_url)
