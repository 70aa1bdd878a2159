"""Around every API function: a request id, request metrics, and the id in the answer.

Trove (oslo.middleware's RequestId) answers every request with `X-Openstack-Request-Id:
req-<uuid>`; so do we, honouring a caller's own id when it sends a sane one, and every log
line written while handling the request carries it (functions/core/logs.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import flask

from functions.core import context, metrics

HttpFunction = Callable[[flask.Request], flask.Response]


def observed(function: HttpFunction, route: str) -> HttpFunction:
    """`function` (the API function serving the path template `route`) with a request id
    and metrics (by route template, never by raw path: ids would explode the label set)."""

    @functools.wraps(function)
    def wrapper(request: flask.Request) -> flask.Response:
        ctx = context.RequestContext(
            request_id=context.request_id_from(request.headers.get(context.REQUEST_ID_HEADER)),
            method=request.method,
            route=route,
            client_ip=request.remote_addr,
            server_ip=request.host,
        )
        started = time.perf_counter()
        status = 500
        with context.request_scope(ctx):
            try:
                response = function(request)
                status = response.status_code
            finally:
                metrics.observe_request(request.method, route, status, time.perf_counter() - started)
        response.headers[context.REQUEST_ID_HEADER] = ctx.request_id
        return response

    return wrapper
