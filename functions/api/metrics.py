"""GET /metrics: Prometheus text exposition of the control plane (no authentication).

What is exported is described in functions/core/metrics.py. Locally `troveless up` runs
every function in one process, so this answers for all of them. On Knative each Service is
a process of its own and exposes its own instruments; Prometheus scrapes every one and sums
them, while the shared-database gauges (workflow runs, dead letters, instance figures) come
from this function.
"""

from __future__ import annotations

import flask
import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import metrics as exported


@functions_framework.http
@api("GET", "/metrics", auth=False)
def metrics(req: ApiRequest):  # type: ignore[no-untyped-def]
    from functions.runtime import runtime

    body = exported.exposition(runtime().sessions)
    return flask.Response(body, status=200, headers={"Content-Type": exported.CONTENT_TYPE})
