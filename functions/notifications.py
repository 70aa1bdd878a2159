"""The notification consumer and the periodic `exists` audit.

A Knative Trigger filters on one exact `type`, so the consumer is one function per
notification type (all the same code): each records what it receives once (inbox), as a
JSON log line, a counter, and a row an administrator can list. A billing system subscribes
its own Trigger to the same types; see events/notifications.py for the payloads.
"""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import notifications


def _record(work, message, event):  # type: ignore[no-untyped-def]
    notifications.record(work.session, message, event)


@functions_framework.http
def record_instance_create(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_instance_delete(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_instance_modify_flavor(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_instance_modify_volume(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_instance_exists(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_backup_create_end(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def record_backup_delete_end(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _record)


@functions_framework.http
def emit_exists_notifications(request):  # type: ignore[no-untyped-def]
    """trove.instance.exists for every live instance; the PingSource's data says the audit
    period (`audit_period_s`, Trove's exists_notification_interval: 3600 s)."""

    def apply(work, _message, tick):  # type: ignore[no-untyped-def]
        from functions.core.models.base import utcnow

        period = float((tick.model_dump() if tick is not None else {}).get("audit_period_s")
                       or notifications.DEFAULT_AUDIT_PERIOD_S)
        work.emit(notifications.exists_all(work.session, utcnow(), period))

    return eventfn.handle(request, apply)
