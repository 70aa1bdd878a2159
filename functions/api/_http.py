"""The HTTP edge of every API function: route match, auth, JSON in and out, Trove's faults.

Each API verb is its own function (one Knative Service each in production). The local
gateway forwards the original path, as an HTTPRoute does, so every function matches its
own path template here and reads its parameters from it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask
from pydantic import BaseModel

from functions.api._observe import observed
from functions.core import context, errors, policy
from functions.core.auth import Identity

log = logging.getLogger("troveless.api")

# Trove's fault names (trove/common/wsgi.py Fault), by status code.
FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflict",
    413: "overLimit",
    415: "badMediaType",
    422: "unprocessableEntity",
    500: "instanceFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}

# Looked up along the exception's MRO, so a subclass maps like its parent.
ERROR_STATUS: dict[type[errors.DomainError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.Conflict: 409,
    errors.OverLimit: 413,
    errors.UnprocessableEntity: 422,
    errors.NotImplementedFeature: 501,
    errors.ServiceUnavailable: 503,
}

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def status_for(error: errors.DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def fault_body(status: int, message: str) -> dict[str, Any]:
    return {FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


def json_response(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> flask.Response:
    payload = "" if body is None else json.dumps(body, default=_json_default)
    response = flask.Response(payload, status=status, headers=dict(headers or {}))
    if body is not None:
        response.headers["Content-Type"] = "application/json"
    return response


def fault_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    return json_response(status, fault_body(status, message), headers)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return trove_time(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def trove_time(value: dt.datetime) -> str:
    """Trove's datetime format: no microseconds, no timezone suffix."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.replace(microsecond=0).isoformat()


def compile_path(template: str) -> re.Pattern[str]:
    """`/v1.0/{project_id}/flavors/{id}` -> a regex; a trailing slash is optional, as in Trove."""
    pattern = ""
    pos = 0
    for match in _PARAM.finditer(template):
        pattern += re.escape(template[pos : match.start()]) + f"(?P<{match.group(1)}>[^/\x00-\x1f\x7f]+)"
        pos = match.end()
    pattern += re.escape(template[pos:].rstrip("/"))
    return re.compile(f"^{pattern}/?$")


@dataclass
class ApiRequest:
    """What a handler needs from the HTTP request, already authenticated and parsed."""

    method: str
    params: dict[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    raw_body: bytes
    url: str
    host_url: str
    identity: Identity | None = None
    model: tuple[str, type[BaseModel]] | None = None
    _body: Any = field(default=None, repr=False)

    @property
    def project_id(self) -> str:
        return self.params["project_id"]

    def json(self) -> Any:
        """The JSON body; a missing or malformed body is a 400, never a 500."""
        if self._body is None:
            if not self.raw_body.strip():
                raise errors.BadRequest("The request body is empty; a JSON object is required.")
            try:
                self._body = json.loads(self.raw_body)
            except ValueError as exc:
                raise errors.BadRequest(f"Malformed request body: {exc}") from exc
        return self._body

    def body(self) -> Any:
        """The body validated against the route's declared `(root, Model)` (400 naming each
        problem), as the OpenAPI document describes it."""
        from functions.core.schemas import parse

        if self.model is None:
            raise TypeError("this route declares no request body model")
        root, model = self.model
        return parse(model, self.json(), root)

    def json_object(self, root: str | None = None) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise errors.BadRequest("Malformed request body: a JSON object is required.")
        if root is None:
            return body
        value = body.get(root)
        if not isinstance(value, dict):
            raise errors.BadRequest(f"Malformed request body: missing '{root}' object.")
        return value


Handler = Callable[[ApiRequest], Any]


def api(method: str, path: str, *, auth: bool | None = None,
        body: tuple[str, type[BaseModel]] | None = None) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    """Wrap a handler as an HTTP function serving `method path` (see serverless.yaml).

    Who may call it is the policy table's rule for the handler's name (functions/core/
    policy.py); `auth=False` only restates a PUBLIC rule. `body=(root, Model)`: the request
    body is `{root: Model}`, validated by `req.body()`, and the same model describes it in
    the OpenAPI document (infra/openapi.py). The handler returns `(status, body)` or
    `(status, body, headers)` or a flask.Response.
    """
    route = compile_path(path)

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        operation = handler.__name__
        public = policy.rule_for(operation) == policy.Rule.PUBLIC
        if auth is False and not public:
            raise ValueError(f"{operation} is declared without auth but its policy rule is not public")
        @functools.wraps(handler)
        def function(request: flask.Request) -> flask.Response:
            try:
                match = route.match(request.path)
                if match is None:
                    raise errors.NotFound(f"The resource could not be found: {request.path}")
                if request.method != method:
                    raise errors.MethodNotAllowed(f"The method {request.method} is not allowed here.")
                api_request = ApiRequest(
                    method=request.method,
                    params=match.groupdict(),
                    query=request.args,
                    headers=request.headers,
                    raw_body=request.get_data(),
                    url=request.url,
                    host_url=request.host_url.rstrip("/"),
                    model=body,
                )
                if not public:
                    api_request.identity = _authenticate(request)
                    _rate_limit(api_request.identity, request)
                    policy.enforce(operation, api_request.identity, api_request.params.get("project_id"))
                return _to_response(handler(api_request))
            except errors.DomainError as exc:
                headers = {}
                if isinstance(exc, errors.OverLimit) and exc.retry_after_s is not None:
                    headers["Retry-After"] = str(exc.retry_after_s)
                return fault_response(status_for(exc), exc.message, headers)
            except Exception:
                error_id = str(uuid.uuid4())
                log.exception("unhandled error %s in %s %s", error_id, request.method, request.path)
                return fault_response(
                    500,
                    "Internal Server Error. Please keep this ID to help us figure out what went "
                    f"wrong: ({error_id}).",
                )

        function.route = (method, path)  # type: ignore[attr-defined]
        function.request_body = body  # type: ignore[attr-defined]
        function.public = public  # type: ignore[attr-defined]
        return observed(function, path)  # request id, metrics (functions/api/_observe.py)

    return decorate


def _rate_limit(identity: Identity, request: flask.Request) -> None:
    """Count the request against the caller's project (functions/core/rate_limits.py: one
    short transaction in the shared database; 413 with Retry-After when used up)."""
    from functions.core import rate_limits

    rate_limits.hit(identity.project_id, request.method, request.path)


def _authenticate(request: flask.Request) -> Identity:
    from functions.runtime import runtime

    token = request.headers.get("X-Auth-Token")
    if not token:
        raise errors.Unauthorized("Authentication required: send a token in X-Auth-Token.")
    identity = runtime().authenticator.authenticate(token)
    if identity is None:
        raise errors.Unauthorized("The token is not valid.")
    context.set_identity(identity.project_id, identity.user_id)
    return identity


def _to_response(result: Any) -> flask.Response:
    if isinstance(result, flask.Response):
        return result
    if isinstance(result, tuple):
        return json_response(*result)
    raise TypeError(f"handler returned {type(result).__name__}; expected (status, body)")
