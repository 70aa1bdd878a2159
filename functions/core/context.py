"""What the current API request or CloudEvent is, for log records, metrics and notifications.

Set by the HTTP edge (functions/api/_http.py) and the CloudEvent edge (functions/eventfn.py)
in contextvars, so any code below them (and every log record it writes) can tell which
request or event it works for without passing it down. Each request runs in its own thread
or task: contextvars keep them apart.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

REQUEST_ID_HEADER = "X-Openstack-Request-Id"
# An incoming id is honoured when it looks like one (oslo's `req-<uuid>`, or any short token
# of safe characters): it ends up in log lines and response headers, so nothing else.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def request_id_from(incoming: str | None) -> str:
    """The caller's X-Openstack-Request-Id when it is a safe token, else a fresh `req-<uuid>`."""
    value = (incoming or "").strip()
    return value if _SAFE_ID.match(value) else new_request_id()


@dataclass
class RequestContext:
    request_id: str
    method: str = ""
    route: str = ""
    client_ip: str | None = None
    # Trove's `server_ip` is the Host the request was sent to.
    server_ip: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None

    def traits(self) -> dict[str, Any]:
        """What a workflow started by this request remembers of it (for notifications)."""
        return {
            "request_id": self.request_id,
            "client_ip": self.client_ip,
            "server_ip": self.server_ip,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
        }


@dataclass(frozen=True)
class EventContext:
    event_id: str
    event_type: str
    source: str
    function: str = ""


_request: ContextVar[RequestContext | None] = ContextVar("troveless_request", default=None)
_event: ContextVar[EventContext | None] = ContextVar("troveless_event", default=None)


def current_request() -> RequestContext | None:
    return _request.get()


def current_event() -> EventContext | None:
    return _event.get()


@contextmanager
def request_scope(ctx: RequestContext) -> Iterator[RequestContext]:
    token = _request.set(ctx)
    try:
        yield ctx
    finally:
        _request.reset(token)


@contextmanager
def event_scope(ctx: EventContext) -> Iterator[EventContext]:
    token = _event.set(ctx)
    try:
        yield ctx
    finally:
        _event.reset(token)


def set_identity(project_id: str | None, user_id: str | None) -> None:
    """The authenticated caller, once the edge knows it."""
    ctx = _request.get()
    if ctx is not None:
        ctx.tenant_id = project_id
        ctx.user_id = user_id
