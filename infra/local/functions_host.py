"""Serves every function of serverless.yaml in one process, each built by functions-framework's
`create_app` exactly as a Knative Service would build it.

- `FunctionHost` answers `/<function name>/...`: what the broker and scheduler call.
- `Gateway` routes each API path and method (the http triggers) to its function, forwarding
  the original path untouched, as a Gateway API HTTPRoute does in production.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from functions_framework import create_app

from infra.spec import Spec

log = logging.getLogger("troveless.gateway")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def build_apps(spec: Spec) -> dict[str, WSGIApp]:
    apps: dict[str, WSGIApp] = {}
    for name, fn in spec.functions.items():
        apps[name] = create_app(fn.target, str(spec.source_path(name)), fn.signature)
    return apps


def _json_reply(start_response: Callable[..., Any], status: int, body: dict[str, Any], extra=()) -> list[bytes]:  # type: ignore[no-untyped-def]
    payload = json.dumps(body).encode()
    reason = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra],
    )
    return [payload]


class FunctionHost:
    def __init__(self, apps: dict[str, WSGIApp]) -> None:
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        name, _, rest = path.lstrip("/").partition("/")
        app = self.apps.get(name)
        if app is None:
            return _json_reply(start_response, 404, {"error": f"no function {name!r}"})
        environ = dict(environ)
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + name
        environ["PATH_INFO"] = "/" + rest
        return app(environ, start_response)


# A path parameter: one segment, without control characters (a function's own router would
# not take them and would answer with an HTML page instead of a Trove fault).
SEGMENT = r"[^/\x00-\x1f\x7f]+"


def _compile(template: str) -> re.Pattern[str]:
    pattern, pos = "", 0
    for match in _PARAM.finditer(template):
        pattern += re.escape(template[pos : match.start()]) + SEGMENT
        pos = match.end()
    return re.compile("^" + pattern + re.escape(template[pos:].rstrip("/")) + "/?$")


class Gateway:
    """The public API endpoint: method + path -> function, Trove faults for everything else."""

    def __init__(self, spec: Spec, apps: dict[str, WSGIApp]) -> None:
        self.routes: list[tuple[str, re.Pattern[str], WSGIApp]] = []
        for name, fn in spec.functions.items():
            if fn.trigger.http:
                self.routes.append((fn.trigger.http.method, _compile(fn.trigger.http.path), apps[name]))
            elif fn.trigger.webhook:
                self.routes.append(("POST", _compile(fn.trigger.webhook.path), apps[name]))
        # A literal segment beats a parameter: GET /instances/detail is not /instances/{id}.
        self.routes.sort(key=lambda route: route[1].pattern.count(SEGMENT))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from functions.api._http import fault_body

        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        status_seen: list[str] = []
        request_ids: list[str] = []

        def recording_start(status: str, headers: list[tuple[str, str]], exc_info=None):  # type: ignore[no-untyped-def]
            status_seen.append(status)
            request_ids.extend(v for k, v in headers if k.lower() == "x-openstack-request-id")
            return start_response(status, headers, exc_info)

        try:
            allowed = [m for m, rx, _ in self.routes if rx.match(path)]
            target = next((app for m, rx, app in self.routes if m == method and rx.match(path)), None)
            if target is not None:
                return target(environ, recording_start)
            if allowed:
                return _json_reply(
                    recording_start,
                    405,
                    fault_body(405, f"The method {method} is not allowed for {path}."),
                    [("Allow", ", ".join(sorted(set(allowed))))],
                )
            return _json_reply(recording_start, 404, fault_body(404, f"The resource could not be found: {path}"))
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            from functions.core import context

            # The access line carries the function's request id, as the function's own lines do.
            with context.request_scope(context.RequestContext(request_id=request_ids[0])) if request_ids \
                    else contextlib.nullcontext():
                log.info("%s %s -> %s (%.1f ms)", method, path, (status_seen or ["?"])[0].split()[0], elapsed_ms)
