"""The CloudEvent edge of step, conductor and schedule functions (Knative data-plane codes).

These are HTTP-signature functions because a `@cloud_event` function cannot reply: they
parse the CloudEvent themselves and answer 200 + the reply event, or 202 with no body.
A permanent problem (not a CloudEvent, unknown type, bad data, bad signature) is a 400,
which Knative does not retry: the event goes to the dead-letter sink. Anything else is a
500 and is retried with backoff.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import flask

from events import registry
from events.base import Event
from events.envelope import Message, decode_http, encode_binary
from events.errors import PermanentEventError
from functions.core import context, metrics
from functions.runtime import Work, unit_of_work

log = logging.getLogger("troveless.events")

EventHandler = Callable[[Work, Message, Event], "Message | None"]


def handle(
    request: flask.Request, handler: EventHandler, *, parse: bool = True, transactional: bool = True
) -> flask.Response:
    """Decode, apply in one unit of work, answer with the reply (200) or none (202).

    `transactional=False` is for handlers that manage their own short transactions (the
    outbox relay must not hold a write transaction while it talks to the broker)."""
    if request.method != "POST":
        return flask.Response("CloudEvents are POSTed\n", status=405, headers={"Allow": "POST"})
    function = function_name(request)
    try:
        message = decode_http(request.headers, request.get_data())
    except PermanentEventError as exc:
        log.warning("refused event: %s", exc)
        metrics.EVENTS.labels("invalid", "rejected").inc()
        return flask.Response(f"{exc}\n", status=400, mimetype="text/plain")
    # Every log line below names the CloudEvent; its latency and outcome are counted.
    with context.event_scope(context.EventContext(message.id, message.type, message.source, function)), \
            metrics.observe_event(function, _type_label(message.type)) as outcome:
        try:
            event = registry.parse(message) if parse else None
            if transactional:
                with unit_of_work() as work:
                    reply = handler(work, message, event)  # type: ignore[arg-type]
            else:
                reply = handler(None, message, event)  # type: ignore[arg-type]
        except PermanentEventError as exc:
            outcome[0] = "rejected"
            log.warning("event %s (%s) refused: %s", message.id, message.type, exc)
            return flask.Response(f"{exc}\n", status=400, mimetype="text/plain")
        except Exception:
            outcome[0] = "failed"
            log.exception("event %s (%s) failed; the broker will retry it", message.id, message.type)
            return flask.Response("transient failure, retry\n", status=500, mimetype="text/plain")
    if reply is None:
        return flask.Response(status=202)
    headers, body = encode_binary(reply)
    return flask.Response(body, status=200, headers=headers)


def _type_label(event_type: str) -> str:
    """The event type as a metric label: an unknown type (anyone can POST one) is "unknown",
    so the label set stays bounded."""
    try:
        registry.model_for(event_type)
    except PermanentEventError:
        return "unknown"
    return event_type


def function_name(request: flask.Request) -> str:
    """The function handling this request: its mount point on the local function host, else
    the Knative Service (K_SERVICE) or the functions-framework target."""
    return (request.script_root or "").strip("/") or os.environ.get("K_SERVICE") or os.environ.get(
        "FUNCTION_TARGET", "unknown"
    )


def run_step(request: flask.Request, workflow, step: str) -> flask.Response:  # type: ignore[no-untyped-def]
    """Body of every step function: run `step` of `workflow` for the received event."""
    from events.workflow import StepRequested
    from functions.core import workflow as runner

    def apply(work: Work, message: Message, event: Event) -> Message | None:
        if not isinstance(event, StepRequested) or event.step != step:
            raise PermanentEventError(f"{message.type} is not an event for step {step!r}")
        return runner.execute(work.session, workflow, message, event)

    return handle(request, apply)
